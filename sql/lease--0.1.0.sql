-- lease 0.1.0, as released: the install script of that version, kept for upgrade tests and
-- for installations that create the old version. Never edit it; add a new version step instead.
\echo Use "CREATE EXTENSION lease" to load this file. \quit

-- The lease store: one row per lease, and the sequence its fencing tokens come from.
-- Only the extension's functions write here; ordinary roles have no rights on these objects.

CREATE SCHEMA lease;
COMMENT ON SCHEMA lease IS 'State of the lease extension: the lease table and the token sequence.';
REVOKE ALL ON SCHEMA lease FROM PUBLIC;
GRANT USAGE ON SCHEMA lease TO PUBLIC;

CREATE TABLE lease.leases (
    resource    text COLLATE "C" PRIMARY KEY,
    holder      text NOT NULL,
    token       bigint NOT NULL,
    owner       regrole NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    session_pid integer,
    application_name text
);
CREATE INDEX leases_expires_at_idx ON lease.leases (expires_at);
CREATE INDEX leases_session_bound_idx ON lease.leases (token) WHERE session_pid IS NOT NULL;
REVOKE ALL ON lease.leases FROM PUBLIC;
COMMENT ON TABLE lease.leases IS 'One row per lease. A lease is held while clock_timestamp() < expires_at; expired rows are free and are replaced by the next acquire.';
COMMENT ON COLUMN lease.leases.resource IS 'Name of the leased resource.';
COMMENT ON COLUMN lease.leases.holder IS 'Name the holder gave itself when it acquired the lease.';
COMMENT ON COLUMN lease.leases.token IS 'Fencing token of this grant: larger than every token granted before it.';
COMMENT ON COLUMN lease.leases.owner IS 'Role that acquired the lease; only its members may renew or release it.';
COMMENT ON COLUMN lease.leases.acquired_at IS 'Server time of the grant.';
COMMENT ON COLUMN lease.leases.renewed_at IS 'Server time of the last renewal (the grant time if never renewed).';
COMMENT ON COLUMN lease.leases.expires_at IS 'Server time at which the lease ends unless renewed.';
COMMENT ON COLUMN lease.leases.session_pid IS 'For a session-bound lease: pid of the holder''s backend (NULL otherwise). The lease also ends when that session ends.';
COMMENT ON COLUMN lease.leases.application_name IS 'For a session-bound lease: application_name of the holder''s session.';

-- Tokens are (timeline - 1) << 48 | nextval: the sequence stays below 2^48.
CREATE SEQUENCE lease.token_seq AS bigint MINVALUE 1 MAXVALUE 281474976710655 NO CYCLE;
REVOKE ALL ON SEQUENCE lease.token_seq FROM PUBLIC;
COMMENT ON SEQUENCE lease.token_seq IS 'Source of fencing tokens. Never reset it: tokens must keep increasing.';

-- The public API. The functions are created in the extension's schema (public unless
-- CREATE EXTENSION ... SCHEMA says otherwise) so that applications call them unqualified.
-- They are C functions that run their table work as the owner of lease.leases, with every
-- name schema-qualified, so the caller's search_path cannot change what they do.

CREATE FUNCTION lease_acquire(resource text, holder text, ttl interval DEFAULT NULL, wait interval DEFAULT NULL,
                              session_bound boolean DEFAULT false)
RETURNS bigint VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_wrapper';
COMMENT ON FUNCTION lease_acquire(text, text, interval, interval, boolean) IS
'Grants resource to holder for ttl (NULL: lease.default_ttl) and returns a fencing token, or NULL when another holder has it. Re-acquiring by the same holder and role returns the same token and extends the lease. wait > 0 queues first come, first served until granted or the wait runs out; session_bound also ends the lease when the calling session ends.';

CREATE FUNCTION lease_renew(resource text, token bigint, ttl interval DEFAULT NULL)
RETURNS boolean VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_renew_wrapper';
COMMENT ON FUNCTION lease_renew(text, bigint, interval) IS
'Sets the expiry of the lease that token holds to now + ttl; false if token no longer holds resource.';

CREATE FUNCTION lease_release(resource text, token bigint)
RETURNS boolean VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_release_wrapper';
COMMENT ON FUNCTION lease_release(text, bigint) IS
'Ends the lease that token holds: true once, false afterwards or when the lease has expired.';

CREATE FUNCTION lease_check(resource text, token bigint)
RETURNS boolean VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_check_wrapper';
COMMENT ON FUNCTION lease_check(text, bigint) IS
'Fence: true if token holds resource now; then no other holder can be granted resource until this transaction ends.';

CREATE FUNCTION lease_assert(resource text, token bigint)
RETURNS void VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_assert_wrapper';
COMMENT ON FUNCTION lease_assert(text, bigint) IS
'Fence: raises SQLSTATE 55000 unless token holds resource; otherwise as lease_check.';

CREATE FUNCTION lease_force_release(resource text)
RETURNS boolean VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_force_release_wrapper';
REVOKE ALL ON FUNCTION lease_force_release(text) FROM PUBLIC;
COMMENT ON FUNCTION lease_force_release(text) IS
'Administrator''s release: ends the live lease on resource whatever its holder and announces revoked; true if there was one. Superusers and roles granted EXECUTE only.';

CREATE FUNCTION lease_sweep(max_count integer DEFAULT NULL)
RETURNS integer VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_sweep_wrapper';
REVOKE ALL ON FUNCTION lease_sweep(integer) FROM PUBLIC;
COMMENT ON FUNCTION lease_sweep(integer) IS
'Removes up to max_count (NULL: lease.expire_batch) expired leases, announcing each as expired; returns how many. The expiry worker runs the same sweep.';

CREATE FUNCTION lease_event_stats()
RETURNS TABLE(last_seq bigint, pending bigint, published bigint, dropped bigint)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_event_stats_wrapper';
COMMENT ON FUNCTION lease_event_stats() IS
'Event stream counters since server start: last sequence number, events waiting for the worker, events published, events dropped because the ring was full.';

CREATE FUNCTION lease._valid_resource(resource text)
RETURNS text IMMUTABLE LANGUAGE c AS 'MODULE_PATHNAME', 'valid_resource_wrapper';
REVOKE ALL ON FUNCTION lease._valid_resource(text) FROM PUBLIC;
COMMENT ON FUNCTION lease._valid_resource(text) IS
'Internal: returns resource if it is a valid resource name, raises 22004 or 22023 otherwise.';

CREATE FUNCTION lease._waiter_counts() RETURNS TABLE(resource_key bigint, waiters integer)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'waiter_counts_wrapper';
COMMENT ON FUNCTION lease._waiter_counts() IS 'Internal: number of waiting acquires per resource lock key.';

CREATE FUNCTION lease._resource_key(resource text) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'resource_key_wrapper';
COMMENT ON FUNCTION lease._resource_key(text) IS 'Internal: the 64-bit advisory lock key of a resource name.';

CREATE FUNCTION lease_info(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner name,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text)
VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp LANGUAGE sql
AS $$
    SELECT l.resource, l.holder, l.token, l.owner::text::name, l.acquired_at, l.renewed_at, l.expires_at,
           l.session_pid, l.application_name
    FROM lease.leases AS l
    WHERE l.resource = lease._valid_resource($1) AND l.expires_at > clock_timestamp()
$$;
COMMENT ON FUNCTION lease_info(text) IS
'The live lease on resource: one row while it is held, no row when it is free or expired. session_pid and application_name identify the holder''s session of a session-bound lease.';

CREATE VIEW lease.active WITH (security_barrier) AS
SELECT l.resource, l.holder, l.token, l.owner::text::name AS owner,
       l.acquired_at, l.renewed_at, l.expires_at,
       l.expires_at - clock_timestamp() AS remaining,
       l.session_pid IS NOT NULL AS session_bound, l.session_pid, l.application_name,
       coalesce(w.waiters, 0) AS waiters
FROM lease.leases AS l
LEFT JOIN lease._waiter_counts() AS w ON w.resource_key = lease._resource_key(l.resource)
WHERE l.expires_at > clock_timestamp()
  AND (pg_catalog.pg_has_role(l.owner, 'MEMBER')
       OR pg_catalog.has_table_privilege('lease.leases', 'SELECT'));
GRANT SELECT ON lease.active TO PUBLIC;
COMMENT ON VIEW lease.active IS
'Every live lease: holder, token, owner, times, time remaining, session binding and waiters. Ordinary roles see the leases of roles they are members of; roles with SELECT on lease.leases (and superusers) see all.';

CREATE FUNCTION lease._stats()
RETURNS TABLE(acquired bigint, reacquired bigint, conflicts bigint, renewed bigint, released bigint,
              expired_ttl bigint, expired_session_end bigint, revoked bigint, waits bigint,
              wait_seconds double precision, handovers bigint)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'stats_counters_wrapper';
COMMENT ON FUNCTION lease._stats() IS 'Internal: the counters behind lease.stats.';

CREATE VIEW lease.stats AS
SELECT s.*, (SELECT count(*) FROM lease.leases AS l WHERE l.expires_at > clock_timestamp()) AS live_leases
FROM lease._stats() AS s;
GRANT SELECT ON lease.stats TO PUBLIC;
COMMENT ON VIEW lease.stats IS
'Counters since server start or lease_stats_reset(): changes counted at commit (acquired, renewed, released, expired_ttl, expired_session_end, revoked), call outcomes counted when the call returns (reacquired, conflicts, waits, wait_seconds, handovers); and the live lease count. Zero without shared_preload_libraries.';

CREATE FUNCTION lease_stats_reset() RETURNS void
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_stats_reset_wrapper';
REVOKE ALL ON FUNCTION lease_stats_reset() FROM PUBLIC;
COMMENT ON FUNCTION lease_stats_reset() IS 'Sets the counters of lease.stats back to zero. Superusers and roles granted EXECUTE only.';
