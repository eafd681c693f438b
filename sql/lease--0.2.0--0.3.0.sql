-- lease 0.2.0 -> 0.3.0: lease_acquire_any can take only resources whose leases have not changed
-- since the calling statement's snapshot, so that a claim can read its rows in the same
-- statement. A fresh install of 0.3.0 runs this file too (after the 0.2.0 step).
\echo Use "ALTER EXTENSION lease UPDATE TO '0.3.0'" to load this file. \quit

-- The new argument comes last with a default, so every existing call keeps its meaning. The
-- function is replaced, not overloaded: two signatures that differ by a defaulted argument
-- would make the old calls ambiguous. Privileges granted on the old function are not carried.
DROP FUNCTION lease_acquire_any(text[], text, interval, integer, boolean);
CREATE FUNCTION lease_acquire_any(resources text[], holder text, ttl interval DEFAULT NULL,
                                  max_count integer DEFAULT 1, session_bound boolean DEFAULT false,
                                  snapshot_consistent boolean DEFAULT false)
RETURNS TABLE(resource text, token bigint)
VOLATILE ROWS 10 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_any_wrapper';
COMMENT ON FUNCTION lease_acquire_any(text[], text, interval, integer, boolean, boolean) IS
'Takes up to max_count of the listed resources that are free or expired, in the order given, and returns each with its fencing token. Never waits: resources being changed by another transaction at that moment, held ones, and ones owed to queued waiters are skipped. Duplicates are taken once; an empty array returns no rows. With snapshot_consistent, only resources with no lease row whose lease has not changed since the calling statement''s snapshot are taken: rows the same statement read about them are current as far as lease-fenced writers go.';
