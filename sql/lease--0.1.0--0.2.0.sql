-- lease 0.1.0 -> 0.2.0: claiming many resources at once, and the fencing trigger.
-- A fresh install of 0.2.0 runs this file too (after api.sql), so the objects below are defined
-- only here.
\echo Use "ALTER EXTENSION lease UPDATE TO '0.2.0'" to load this file. \quit

CREATE FUNCTION lease_acquire_any(resources text[], holder text, ttl interval DEFAULT NULL,
                                  max_count integer DEFAULT 1, session_bound boolean DEFAULT false)
RETURNS TABLE(resource text, token bigint)
VOLATILE ROWS 10 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_any_wrapper';
COMMENT ON FUNCTION lease_acquire_any(text[], text, interval, integer, boolean) IS
'Takes up to max_count of the listed resources that are free or expired, in the order given, and returns each with its fencing token. Never waits: resources being changed by another transaction at that moment, held ones, and ones owed to queued waiters are skipped. Duplicates are taken once; an empty array returns no rows.';

CREATE FUNCTION lease_fence()
RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'lease_fence_wrapper';
COMMENT ON FUNCTION lease_fence() IS
'Trigger function: BEFORE INSERT OR UPDATE OR DELETE ... FOR EACH ROW EXECUTE FUNCTION lease_fence(resource_column, token_column [, prefix]) rejects (SQLSTATE 55000) any row change whose token column does not hold the lease on prefix || resource_column, with the barrier of lease_check.';
