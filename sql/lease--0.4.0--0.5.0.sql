-- lease 0.4.0 -> 0.5.0: lifelines (one expiry that many leases share), data on a lease, and
-- releases that keep the resource for a minimum hold. A fresh install of 0.5.0 runs this file
-- too (after the 0.4.0 step).
\echo Use "ALTER EXTENSION lease UPDATE TO '0.5.0'" to load this file. \quit

-- Lifelines. An id is a number of lease.token_seq, so it never equals a token (the session
-- lock of a session-bound lifeline and that of a session-bound lease never meet).
CREATE TABLE lease.lifelines (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    owner       regrole NOT NULL,
    ttl         interval NOT NULL,
    opened_at   timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    session_pid integer,
    application_name text
);
CREATE INDEX lifelines_expires_at_idx ON lease.lifelines (expires_at);
REVOKE ALL ON lease.lifelines FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lease.lifelines', '');
COMMENT ON TABLE lease.lifelines IS 'One row per lifeline. A lifeline is live while clock_timestamp() < expires_at (and, if session-bound, while its session lasts); every lease attached to it ends when it lapses.';
COMMENT ON COLUMN lease.lifelines.id IS 'The lifeline''s id, a number of lease.token_seq.';
COMMENT ON COLUMN lease.lifelines.name IS 'Name the holder gave the lifeline when it opened it.';
COMMENT ON COLUMN lease.lifelines.owner IS 'Role that opened the lifeline; only its members may renew, close or attach to it.';
COMMENT ON COLUMN lease.lifelines.ttl IS 'The ttl it was opened with: what a renewal without a ttl uses.';
COMMENT ON COLUMN lease.lifelines.opened_at IS 'Server time it was opened.';
COMMENT ON COLUMN lease.lifelines.renewed_at IS 'Server time of the last renewal (the opening time if never renewed).';
COMMENT ON COLUMN lease.lifelines.expires_at IS 'Server time at which it lapses unless renewed.';
COMMENT ON COLUMN lease.lifelines.session_pid IS 'For a session-bound lifeline: pid of the backend that opened it (NULL otherwise).';
COMMENT ON COLUMN lease.lifelines.application_name IS 'For a session-bound lifeline: application_name of the session that opened it.';

-- New columns come last: the library serves tables of both shapes, and reads and writes the
-- columns by position.
ALTER TABLE lease.leases
    ADD COLUMN lifeline bigint,
    ADD COLUMN data jsonb,
    ADD COLUMN released_at timestamptz;
CREATE INDEX leases_lifeline_idx ON lease.leases (lifeline) WHERE lifeline IS NOT NULL;
COMMENT ON COLUMN lease.leases.expires_at IS 'Server time at which the lease ends unless renewed; infinity for a lease attached to a lifeline, which ends when its lifeline lapses.';
COMMENT ON COLUMN lease.leases.lifeline IS 'The lifeline the lease is attached to (NULL if none): it ends with it.';
COMMENT ON COLUMN lease.leases.data IS 'Data the holder stored with the lease (at most 512 bytes of JSON).';
COMMENT ON COLUMN lease.leases.released_at IS 'For a lease released with keep_for: when it was released. Nobody holds it, and nobody may acquire it before expires_at.';

-- lease_acquire and lease_acquire_any gain lifeline and data. The new arguments come last
-- with defaults, so every existing call keeps its meaning; the functions are replaced (two
-- signatures that differ by defaulted arguments would make the old calls ambiguous), and point
-- at new C entry points (the old ones stay, for databases not updated yet). Privileges granted
-- on the old functions are not carried over.
DROP FUNCTION lease_acquire(text, text, interval, interval, boolean);
CREATE FUNCTION lease_acquire(resource text, holder text, ttl interval DEFAULT NULL, wait interval DEFAULT NULL,
                              session_bound boolean DEFAULT false, lifeline bigint DEFAULT NULL,
                              data jsonb DEFAULT NULL)
RETURNS bigint VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_with_wrapper';
COMMENT ON FUNCTION lease_acquire(text, text, interval, interval, boolean, bigint, jsonb) IS
'Grants resource to holder for ttl (NULL: lease.default_ttl) and returns a fencing token, or NULL when another holder has it. Re-acquiring by the same holder and role returns the same token and extends the lease. wait > 0 queues first come, first served until granted or the wait runs out; session_bound also ends the lease when the calling session ends; lifeline attaches the lease to that lifeline (ttl must then be NULL): it ends when the lifeline lapses or is closed. data (at most 512 bytes of JSON) is stored with the lease.';

DROP FUNCTION lease_acquire_any(text[], text, interval, integer, boolean, boolean);
CREATE FUNCTION lease_acquire_any(resources text[], holder text, ttl interval DEFAULT NULL,
                                  max_count integer DEFAULT 1, session_bound boolean DEFAULT false,
                                  snapshot_consistent boolean DEFAULT false, lifeline bigint DEFAULT NULL,
                                  data jsonb DEFAULT NULL)
RETURNS TABLE(resource text, token bigint)
VOLATILE ROWS 10 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_any_with_wrapper';
COMMENT ON FUNCTION lease_acquire_any(text[], text, interval, integer, boolean, boolean, bigint, jsonb) IS
'Takes up to max_count of the listed resources that are free or expired, in the order given, and returns each with its fencing token. Never waits: resources being changed by another transaction at that moment, held ones, and ones owed to queued waiters are skipped. Duplicates are taken once; an empty array returns no rows. With snapshot_consistent, only resources with no lease row whose lease has not changed since the calling statement''s snapshot are taken. lifeline and data are as for lease_acquire.';

-- A release with a minimum hold: a new signature, so the two-argument release keeps its
-- entry point.
CREATE FUNCTION lease_release(resource text, token bigint, keep_for interval)
RETURNS boolean VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_release_keeping_wrapper';
COMMENT ON FUNCTION lease_release(text, bigint, interval) IS
'Ends the lease that token holds, but keeps the resource from everyone (its holder included) until acquired_at + keep_for, if that is later than now: "at most once per interval". true once, false afterwards or when the lease has expired. NULL keep_for releases at once.';

CREATE FUNCTION lease_set_data(resource text, token bigint, data jsonb)
RETURNS boolean VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_set_data_wrapper';
COMMENT ON FUNCTION lease_set_data(text, bigint, jsonb) IS
'Replaces the data stored with the lease that token holds (NULL removes it; at most 512 bytes of JSON); false if token no longer holds resource. Fenced as lease_renew is.';

CREATE FUNCTION lease_lifeline_open(name text, ttl interval DEFAULT NULL, session_bound boolean DEFAULT false)
RETURNS bigint VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_lifeline_open_wrapper';
COMMENT ON FUNCTION lease_lifeline_open(text, interval, boolean) IS
'Opens a lifeline that lapses ttl (NULL: lease.default_ttl) from now unless renewed, and returns its id. Leases acquired with lifeline => id end together when it lapses or is closed; session_bound also lapses it when the calling session ends.';

CREATE FUNCTION lease_lifeline_renew(lifeline bigint, ttl interval DEFAULT NULL)
RETURNS timestamptz VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_lifeline_renew_wrapper';
COMMENT ON FUNCTION lease_lifeline_renew(bigint, interval) IS
'Moves the lifeline''s expiry to now + ttl (NULL: the ttl it was opened with), and with it the end of every lease attached to it, in one row write; returns the new expiry. SQLSTATE 55000 if it lapsed, was closed or never existed; 42501 for a role that is not a member of the one that opened it.';

CREATE FUNCTION lease_lifeline_close(lifeline bigint)
RETURNS bigint VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_lifeline_close_wrapper';
COMMENT ON FUNCTION lease_lifeline_close(bigint) IS
'Releases every lease attached to the lifeline (each announced as released) and ends it; returns how many leases it released. SQLSTATE 55000 if it lapsed, was closed or never existed.';

-- lease_info and lease.active show the lifeline, the data and a minimum hold, and the expiry
-- of an attached lease is its lifeline's.
DROP FUNCTION lease_info(text);
DROP FUNCTION lease._lease_row(text);
CREATE FUNCTION lease._lease_row(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner text,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text, lifeline bigint, data jsonb,
              released_at timestamptz)
VOLATILE STRICT ROWS 1 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_row_full_wrapper';
COMMENT ON FUNCTION lease._lease_row(text) IS
'Internal: the live lease on resource as lease_info shows it, the token only to roles with the privileges of its owner role or SELECT on lease.leases.';

CREATE FUNCTION lease_info(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner name,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text, lifeline bigint, data jsonb,
              released_at timestamptz)
VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp LANGUAGE sql
AS $$
    SELECT r.resource, r.holder, r.token, r.owner::name, r.acquired_at, r.renewed_at, r.expires_at,
           r.session_pid, r.application_name, r.lifeline, r.data, r.released_at
    FROM lease._lease_row(lease._valid_resource($1)) AS r
$$;
COMMENT ON FUNCTION lease_info(text) IS
'The live lease on resource: one row while it is held (or kept after a release with keep_for), no row when it is free or expired. token is NULL unless the caller has the privileges of the lease''s owner role or may read lease.leases. session_pid and application_name identify the holder''s session of a session-bound lease; lifeline is the lifeline it is attached to (expires_at is then the lifeline''s); released_at is set while it is kept after a release.';

CREATE OR REPLACE VIEW lease.active WITH (security_barrier) AS
SELECT l.resource, l.holder, l.token, l.owner::text::name AS owner,
       l.acquired_at, l.renewed_at, e.expires_at,
       e.expires_at - clock_timestamp() AS remaining,
       l.session_pid IS NOT NULL AS session_bound, l.session_pid, l.application_name,
       coalesce(w.waiters, 0) AS waiters,
       l.lifeline, l.data, l.released_at
FROM lease.leases AS l
LEFT JOIN lease.lifelines AS f ON f.id = l.lifeline
CROSS JOIN LATERAL (SELECT CASE WHEN l.lifeline IS NULL THEN l.expires_at ELSE f.expires_at END) AS e(expires_at)
LEFT JOIN lease._waiter_counts() AS w ON w.resource_key = lease._resource_key(l.resource)
WHERE e.expires_at > clock_timestamp() AND lease._token_visible(l.owner);
COMMENT ON VIEW lease.active IS
'Every live lease: holder, token, owner, times, time remaining, session binding, waiters, lifeline, data, and released_at for a lease kept after a release. An attached lease''s expiry is its lifeline''s. Ordinary roles see the leases of roles whose privileges they have; roles with SELECT on lease.leases (and superusers) see all.';

CREATE OR REPLACE VIEW lease.stats AS
SELECT s.*,
       (SELECT count(*) FROM lease.leases AS l WHERE l.expires_at > clock_timestamp() AND l.lifeline IS NULL)
       + (SELECT count(*) FROM lease.leases AS l JOIN lease.lifelines AS f ON f.id = l.lifeline
           WHERE f.expires_at > clock_timestamp()) AS live_leases
FROM lease._stats() AS s;

CREATE VIEW lease.live_lifelines WITH (security_barrier) AS
SELECT f.id, f.name, f.owner::text::name AS owner, f.ttl, f.opened_at, f.renewed_at, f.expires_at,
       f.expires_at - clock_timestamp() AS remaining,
       f.session_pid IS NOT NULL AS session_bound, f.session_pid, f.application_name,
       (SELECT count(*) FROM lease.leases AS l WHERE l.lifeline = f.id) AS leases
FROM lease.lifelines AS f
WHERE f.expires_at > clock_timestamp() AND lease._token_visible(f.owner);
GRANT SELECT ON lease.live_lifelines TO PUBLIC;
COMMENT ON VIEW lease.live_lifelines IS
'Every live lifeline: name, owner, ttl, times, time remaining, session binding and the number of leases attached. Ordinary roles see the lifelines of roles whose privileges they have; roles with SELECT on lease.leases (and superusers) see all.';
