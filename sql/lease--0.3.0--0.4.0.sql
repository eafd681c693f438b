-- lease 0.3.0 -> 0.4.0: the guarantees at the edges. Leases and the token sequence are part of
-- a dump; lease_info shows tokens only to those who may use them, and lease.active applies the
-- same rule; lease.stats counts events
-- dropped because the NOTIFY queue was too full. A fresh install of 0.4.0 runs this file too
-- (after the 0.3.0 step).
\echo Use "ALTER EXTENSION lease UPDATE TO '0.4.0'" to load this file. \quit

-- pg_dump leaves an extension's tables and sequences out unless they are marked: without this
-- a restored database started its tokens again at 1, below tokens already handed out, and lost
-- every live lease. The sequence's dumped value is past every token granted (numbers are
-- reserved in durable blocks), so a restored database continues above them.
SELECT pg_catalog.pg_extension_config_dump('lease.leases', '');
SELECT pg_catalog.pg_extension_config_dump('lease.token_seq', '');

-- lease_info: anyone may see who holds what, but a token only the roles that may use it: those
-- with the privileges of the lease's owner role (the rule lease_check, lease_renew and
-- lease_release apply), and roles that may read lease.leases. lease_info now runs as its caller
-- and reads through lease._lease_row, which reads the table as its owner and decides on the
-- caller (a SECURITY DEFINER function would only know its own owner). lease.active applies the
-- same rule to its rows, through lease._token_visible.
CREATE FUNCTION lease._token_visible(owner regrole) RETURNS boolean
STABLE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'token_visible_wrapper';
COMMENT ON FUNCTION lease._token_visible(regrole) IS
'Internal: whether the current role has the privileges of owner, or may read lease.leases.';

CREATE FUNCTION lease._lease_row(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner text,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text)
VOLATILE STRICT ROWS 1 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_row_wrapper';
COMMENT ON FUNCTION lease._lease_row(text) IS
'Internal: the live lease on resource as lease_info shows it, the token only to roles with the privileges of its owner role or SELECT on lease.leases.';
GRANT EXECUTE ON FUNCTION lease._valid_resource(text) TO PUBLIC;

CREATE OR REPLACE FUNCTION lease_info(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner name,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text)
VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp LANGUAGE sql
AS $$
    SELECT r.resource, r.holder, r.token, r.owner::name, r.acquired_at, r.renewed_at, r.expires_at,
           r.session_pid, r.application_name
    FROM lease._lease_row(lease._valid_resource($1)) AS r
$$;
COMMENT ON FUNCTION lease_info(text) IS
'The live lease on resource: one row while it is held, no row when it is free or expired. token is NULL unless the caller has the privileges of the lease''s owner role or may read lease.leases. session_pid and application_name identify the holder''s session of a session-bound lease.';

CREATE OR REPLACE VIEW lease.active WITH (security_barrier) AS
SELECT l.resource, l.holder, l.token, l.owner::text::name AS owner,
       l.acquired_at, l.renewed_at, l.expires_at,
       l.expires_at - clock_timestamp() AS remaining,
       l.session_pid IS NOT NULL AS session_bound, l.session_pid, l.application_name,
       coalesce(w.waiters, 0) AS waiters
FROM lease.leases AS l
LEFT JOIN lease._waiter_counts() AS w ON w.resource_key = lease._resource_key(l.resource)
WHERE l.expires_at > clock_timestamp() AND lease._token_visible(l.owner);
COMMENT ON VIEW lease.active IS
'Every live lease: holder, token, owner, times, time remaining, session binding and waiters. Ordinary roles see the leases of roles whose privileges they have; roles with SELECT on lease.leases (and superusers) see all.';

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
