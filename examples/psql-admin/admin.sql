-- Administering leases from psql: who holds what and for how long, who is waiting, the
-- counters, an operator role that may see every lease and force a release, and a forced release.
-- Run as a superuser, in the database where the extension lives:
--   psql -X -v resource=job:42 -v operator=lease_operator -f examples/psql-admin/admin.sql
-- resource: the lease to force-release (default job:42); operator: the role to create or update
-- (default lease_operator). Safe to run again.
\set ON_ERROR_STOP on
\set QUIET on
\if :{?resource}
\else
    \set resource job:42
\endif
\if :{?operator}
\else
    \set operator lease_operator
\endif

\echo '== 1. Who holds what, and for how long'
SELECT resource, holder, token, owner,
       date_trunc('second', clock_timestamp() - acquired_at) AS held_for,
       date_trunc('second', remaining) AS remaining,
       session_pid, application_name, waiters
FROM lease.active
ORDER BY resource;

\echo '== 2. Who is waiting: queued calls per lease, then the waiting sessions'
SELECT resource, holder AS held_by, waiters
FROM lease.active
WHERE waiters > 0
ORDER BY waiters DESC, resource;

SELECT pid, usename, application_name,
       date_trunc('second', clock_timestamp() - query_start) AS waiting_for,
       left(query, 60) AS query
FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Extension' AND query ILIKE '%lease_acquire%'
ORDER BY query_start;

\echo '== 3. One lease in detail'
\x on
SELECT * FROM lease_info(:'resource');
\x off

\echo '== 4. Counters since server start (cluster-wide; live_leases counts this database)'
SELECT acquired, reacquired, conflicts, renewed, released, expired_ttl, expired_session_end,
       revoked, waits, round(wait_seconds::numeric, 3) AS wait_seconds, handovers, live_leases
FROM lease.stats;

\echo '== 5. An operator role: see every lease, see waiting sessions, force releases'
SELECT format('CREATE ROLE %I NOLOGIN', :'operator')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'operator')
\gexec
SET ROLE :"operator";
SELECT count(*) AS leases_the_operator_sees FROM lease.active;
RESET ROLE;
GRANT SELECT ON lease.leases TO :"operator";                         -- every lease in lease.active
GRANT EXECUTE ON FUNCTION lease_force_release(text) TO :"operator";  -- force a release
GRANT EXECUTE ON FUNCTION lease_stats_reset() TO :"operator";        -- reset lease.stats
GRANT pg_read_all_stats TO :"operator";                              -- other sessions' queries
SET ROLE :"operator";
SELECT count(*) AS leases_the_operator_sees FROM lease.active;
RESET ROLE;

\echo '== 6. Forcing a release, as the operator'
SELECT token AS revoked_token, count(*) OVER () > 0 AS held FROM lease_info(:'resource') \gset
\if :{?held}
    SET ROLE :"operator";
    SELECT lease_force_release(:'resource') AS force_released;
    RESET ROLE;
    -- The revoked token fails every later check, renew and release; a queued waiter gets the lease.
    SELECT lease_check(:'resource', :revoked_token) AS revoked_token_still_valid;
\else
    \echo 'no live lease on' :'resource'
\endif
