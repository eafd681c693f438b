-- lease 0.3.0 -> 0.4.0: the guarantees at the edges. Leases and the token sequence are part of
-- a dump; lease_info shows tokens only to those who may use them; lease.stats counts events
-- dropped because the NOTIFY queue was too full. A fresh install of 0.4.0 runs this file too
-- (after the 0.3.0 step).
\echo Use "ALTER EXTENSION lease UPDATE TO '0.4.0'" to load this file. \quit

-- pg_dump leaves an extension's tables and sequences out unless they are marked: without this
-- a restored database started its tokens again at 1, below tokens already handed out, and lost
-- every live lease. The sequence's dumped value is past every token granted (numbers are
-- reserved in durable blocks), so a restored database continues above them.
SELECT pg_catalog.pg_extension_config_dump('lease.leases', '');
SELECT pg_catalog.pg_extension_config_dump('lease.token_seq', '');

-- lease_info: anyone may see who holds what, but a token only by members of the lease's owner
-- role (the only ones who can use it) and by roles that may read lease.leases. The function
-- now runs as its caller, so that membership is the caller's; it reads through a view that
-- the extension owns (and that hides no rows, so the planner still uses the primary key).
CREATE VIEW lease._info AS
SELECT l.resource, l.holder,
       CASE WHEN pg_catalog.pg_has_role(l.owner, 'MEMBER')
                 OR pg_catalog.has_table_privilege('lease.leases', 'SELECT')
            THEN l.token END AS token,
       l.owner::text::name AS owner, l.acquired_at, l.renewed_at, l.expires_at,
       l.session_pid, l.application_name
FROM lease.leases AS l
WHERE l.expires_at > pg_catalog.clock_timestamp();
GRANT SELECT ON lease._info TO PUBLIC;
COMMENT ON VIEW lease._info IS
'Internal: the live leases as lease_info shows them, tokens only to members of the owner role and to roles that may read lease.leases.';
GRANT EXECUTE ON FUNCTION lease._valid_resource(text) TO PUBLIC;

CREATE OR REPLACE FUNCTION lease_info(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner name,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text)
VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp LANGUAGE sql
AS $$
    SELECT i.resource, i.holder, i.token, i.owner, i.acquired_at, i.renewed_at, i.expires_at,
           i.session_pid, i.application_name
    FROM lease._info AS i
    WHERE i.resource = lease._valid_resource($1)
$$;
COMMENT ON FUNCTION lease_info(text) IS
'The live lease on resource: one row while it is held, no row when it is free or expired. token is NULL unless the caller is a member of the lease''s owner role or may read lease.leases. session_pid and application_name identify the holder''s session of a session-bound lease.';

-- lease.stats gains events_dropped.
DROP VIEW lease.stats;
DROP FUNCTION lease._stats();
CREATE FUNCTION lease._stats()
RETURNS TABLE(acquired bigint, reacquired bigint, conflicts bigint, renewed bigint, released bigint,
              expired_ttl bigint, expired_session_end bigint, revoked bigint, waits bigint,
              wait_seconds double precision, handovers bigint, events_dropped bigint)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'stats_counters_wrapper';
COMMENT ON FUNCTION lease._stats() IS 'Internal: the counters behind lease.stats.';

CREATE VIEW lease.stats AS
SELECT s.*, (SELECT count(*) FROM lease.leases AS l WHERE l.expires_at > clock_timestamp()) AS live_leases
FROM lease._stats() AS s;
GRANT SELECT ON lease.stats TO PUBLIC;
COMMENT ON VIEW lease.stats IS
'Counters since server start or lease_stats_reset(): changes counted at commit (acquired, renewed, released, expired_ttl, expired_session_end, revoked), call outcomes counted when the call returns (reacquired, conflicts, waits, wait_seconds, handovers), events dropped because the NOTIFY queue was too full (events_dropped); and the live lease count. Zero without shared_preload_libraries.';

-- The fence and its barrier: lease_check now passes only for members of the lease's owner role.
COMMENT ON FUNCTION lease_check(text, bigint) IS
'Fence: true if token holds resource now and the caller is a member of the lease''s owner role; then no other holder can be granted resource until this transaction ends.';
COMMENT ON FUNCTION lease_assert(text, bigint) IS
'Fence: raises SQLSTATE 55000 unless token holds resource (42501 if it does but the caller is not a member of the lease''s owner role); otherwise as lease_check.';
COMMENT ON FUNCTION lease_fence() IS
'Trigger function: BEFORE INSERT OR UPDATE OR DELETE ... FOR EACH ROW EXECUTE FUNCTION lease_fence(resource_column, token_column [, prefix]). INSERT, and UPDATE that sets the token column, pass only while that token holds the lease on prefix || resource_column for the writer; DELETE, and UPDATE that does not set the token column, pass only if the writing transaction proved earlier that it holds that lease (lease_check, lease_assert, a grant, a renewal, a release). Otherwise SQLSTATE 55000.';
