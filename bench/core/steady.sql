-- Before each run: a checkpoint (no run pays for one that an earlier run made due), then every
-- page of ShedLock's table written once, so that its first updates in the run do not each pay
-- for a full-page image that, at a checkpoint every few minutes, a deployment pays once per
-- page and interval; the VACUUM leaves every page with room for its updates in place.
CHECKPOINT;
UPDATE shedlock SET locked_at = locked_at;
VACUUM shedlock;
UPDATE shedlock_indexed SET locked_at = locked_at;
VACUUM shedlock_indexed;
