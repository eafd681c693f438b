-- lease 0.5.0 -> 0.6.0: lease_acquire_all, all or nothing. A fresh install of 0.6.0 runs this
-- file too (after the 0.5.0 step).
\echo Use "ALTER EXTENSION lease UPDATE TO '0.6.0'" to load this file. \quit

CREATE FUNCTION lease_acquire_all(resources text[], holder text, ttl interval DEFAULT NULL,
                                  wait interval DEFAULT NULL, session_bound boolean DEFAULT false,
                                  lifeline bigint DEFAULT NULL, data jsonb DEFAULT NULL)
RETURNS TABLE(resource text, token bigint)
VOLATILE ROWS 4 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_all_wrapper';
COMMENT ON FUNCTION lease_acquire_all(text[], text, interval, interval, boolean, bigint, jsonb) IS
'Grants every listed resource to holder, each with its own fencing token, or none: returns each resource with its token in the order given (duplicates taken once), or no rows when some are held by others or owed to queued waiters. wait > 0 queues once, first come first served in the queue of every listed resource (at most 16), until all are granted together or the wait runs out; it never holds some while waiting for the rest, so callers cannot deadlock however they order their lists. ttl, session_bound, lifeline and data are as for lease_acquire.';
