-- Before a run of ShedLock's statements on the table :"table" (psql variable): a checkpoint (no
-- run pays for one that an earlier run made due), then every page of the table written once, so
-- that its first updates in the run do not each pay for a full-page image that, at a checkpoint
-- every few minutes, a deployment pays once per page and interval; the VACUUM leaves every page
-- with room for its updates in place. Other variants' runs start with the checkpoint alone.
CHECKPOINT;
UPDATE :"table" SET locked_at = locked_at;
VACUUM :"table";
