-- lease 0.5.0 -> 0.6.0: shared leases, counting semaphores (permits) and lease_acquire_all. A
-- fresh install of 0.6.0 runs this file too (after the 0.5.0 step).
\echo Use "ALTER EXTENSION lease UPDATE TO '0.6.0'" to load this file. \quit

-- A resource can have several rows: its exclusive lease at slot 0, or its shared leases or
-- permits at slots 1 and up. Existing leases are exclusive (slot 0). New columns come last: the
-- library serves tables of every shape, and reads and writes the columns by position. No CHECK
-- constraint on mode: the functions write it (a CHECK would make them take the slower path).
ALTER TABLE lease.leases
    ADD COLUMN slot integer NOT NULL DEFAULT 0,
    ADD COLUMN mode text NOT NULL DEFAULT 'exclusive';
ALTER TABLE lease.leases DROP CONSTRAINT leases_pkey, ADD CONSTRAINT leases_pkey PRIMARY KEY (resource, slot);
COMMENT ON TABLE lease.leases IS 'One row per lease: a resource''s exclusive lease (slot 0), or each of its shared leases or permits (slots 1 and up). A lease is held while clock_timestamp() < expires_at; expired rows are free and are replaced by the next acquire.';
COMMENT ON COLUMN lease.leases.slot IS 'Where the lease sits on its resource: 0 for the exclusive lease, 1 and up for shared leases and permits (a permit''s slot is at most the capacity it was granted under).';
COMMENT ON COLUMN lease.leases.mode IS 'exclusive, shared (any number of shared holders, no exclusive one) or permit (at most the resource''s capacity of holders).';

-- Capacities of counting semaphores: declared by the first permit request of a resource (its
-- capacity argument) or by lease_set_capacity, and kept until lease_set_capacity removes them.
CREATE TABLE lease.capacities (
    resource text COLLATE "C" PRIMARY KEY,
    capacity integer NOT NULL
);
REVOKE ALL ON lease.capacities FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lease.capacities', '');
COMMENT ON TABLE lease.capacities IS 'The capacity of each resource used as a counting semaphore: at most this many permits hold it at once.';

-- lease_acquire and lease_acquire_any gain mode and capacity (new arguments last, with
-- defaults, so every existing call keeps its meaning; new C entry points, the old ones stay for
-- databases not updated yet). Privileges granted on the old functions are not carried over.
DROP FUNCTION lease_acquire(text, text, interval, interval, boolean, bigint, jsonb);
CREATE FUNCTION lease_acquire(resource text, holder text, ttl interval DEFAULT NULL, wait interval DEFAULT NULL,
                              session_bound boolean DEFAULT false, lifeline bigint DEFAULT NULL,
                              data jsonb DEFAULT NULL, mode text DEFAULT 'exclusive',
                              capacity integer DEFAULT NULL)
RETURNS bigint VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_in_mode_wrapper';
COMMENT ON FUNCTION lease_acquire(text, text, interval, interval, boolean, bigint, jsonb, text, integer) IS
'Grants resource to holder for ttl (NULL: lease.default_ttl) and returns a fencing token, or NULL when it cannot be had. Re-acquiring by the same holder and role returns the same token and extends the lease. mode ''exclusive'' (the default): one holder; ''shared'': any number of shared holders and no exclusive one; capacity => N: a permit of a counting semaphore, at most the resource''s capacity (declared by its first permit request, changed by lease_set_capacity) of holders. Each shared lease and permit has its own token, expiry, renewal, release and fence. wait > 0 queues first come, first served until granted or the wait runs out; session_bound also ends the lease when the calling session ends; lifeline attaches the lease to that lifeline (ttl must then be NULL). data (at most 512 bytes of JSON) is stored with the lease.';

DROP FUNCTION lease_acquire_any(text[], text, interval, integer, boolean, boolean, bigint, jsonb);
CREATE FUNCTION lease_acquire_any(resources text[], holder text, ttl interval DEFAULT NULL,
                                  max_count integer DEFAULT 1, session_bound boolean DEFAULT false,
                                  snapshot_consistent boolean DEFAULT false, lifeline bigint DEFAULT NULL,
                                  data jsonb DEFAULT NULL, mode text DEFAULT 'exclusive',
                                  capacity integer DEFAULT NULL)
RETURNS TABLE(resource text, token bigint)
VOLATILE ROWS 10 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_any_in_mode_wrapper';
COMMENT ON FUNCTION lease_acquire_any(text[], text, interval, integer, boolean, boolean, bigint, jsonb, text, integer) IS
'Takes up to max_count of the listed resources that can be had now, in the order given, and returns each with its fencing token. Never waits: resources being changed by another transaction at that moment, held ones, and ones owed to queued waiters are skipped. Duplicates are taken once; an empty array returns no rows. With snapshot_consistent, only resources with no lease row whose lease has not changed since the calling statement''s snapshot are taken. lifeline, data, mode and capacity are as for lease_acquire.';

CREATE FUNCTION lease_acquire_all(resources text[], holder text, ttl interval DEFAULT NULL,
                                  wait interval DEFAULT NULL, session_bound boolean DEFAULT false,
                                  lifeline bigint DEFAULT NULL, data jsonb DEFAULT NULL)
RETURNS TABLE(resource text, token bigint)
VOLATILE ROWS 4 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_acquire_all_wrapper';
COMMENT ON FUNCTION lease_acquire_all(text[], text, interval, interval, boolean, bigint, jsonb) IS
'Grants every listed resource to holder (an exclusive lease each, with its own fencing token), or none: returns each resource with its token in the order given (duplicates taken once), or no rows when some are held by others or owed to queued waiters. wait > 0 queues once, first come first served in the queue of every listed resource (at most 16), until all are granted together or the wait runs out; it never holds some while waiting for the rest, so callers cannot deadlock however they order their lists. ttl, session_bound, lifeline and data are as for lease_acquire.';

CREATE FUNCTION lease_set_capacity(resource text, capacity integer)
RETURNS integer VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', 'lease_set_capacity_wrapper';
REVOKE ALL ON FUNCTION lease_set_capacity(text, integer) FROM PUBLIC;
COMMENT ON FUNCTION lease_set_capacity(text, integer) IS
'Sets the capacity of the counting semaphore resource (NULL removes it; the next permit request declares it again) and returns the previous one. Raising it lets waiters in at once; lowering it never revokes live permits: no new permit is granted until fewer than the new capacity hold. Waits for permit grants in progress. Superusers and roles granted EXECUTE only.';

-- lease_info and lease.active show each holder with its mode, and a permit's capacity.
DROP FUNCTION lease_info(text);
DROP FUNCTION lease._lease_row(text);
CREATE FUNCTION lease._lease_rows(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner text,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text, lifeline bigint, data jsonb,
              released_at timestamptz, mode text, capacity integer)
VOLATILE STRICT ROWS 1 LANGUAGE c AS 'MODULE_PATHNAME', 'lease_rows_wrapper';
COMMENT ON FUNCTION lease._lease_rows(text) IS
'Internal: the live leases on resource as lease_info shows them, each token only to roles with the privileges of its owner role or SELECT on lease.leases.';

CREATE FUNCTION lease_info(resource text)
RETURNS TABLE(resource text, holder text, token bigint, owner name,
              acquired_at timestamptz, renewed_at timestamptz, expires_at timestamptz,
              session_pid integer, application_name text, lifeline bigint, data jsonb,
              released_at timestamptz, mode text, capacity integer)
VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp LANGUAGE sql
AS $$
    SELECT r.resource, r.holder, r.token, r.owner::name, r.acquired_at, r.renewed_at, r.expires_at,
           r.session_pid, r.application_name, r.lifeline, r.data, r.released_at, r.mode, r.capacity
    FROM lease._lease_rows(lease._valid_resource($1)) AS r
$$;
COMMENT ON FUNCTION lease_info(text) IS
'The live leases on resource: one row per holder (its exclusive lease, or each of its shared leases or permits) while held (or kept after a release with keep_for), no row when it is free or expired. token is NULL unless the caller has the privileges of the lease''s owner role or may read lease.leases. session_pid and application_name identify the holder''s session of a session-bound lease; lifeline is the lifeline it is attached to (expires_at is then the lifeline''s); released_at is set while it is kept after a release; mode is exclusive, shared or permit, and capacity the resource''s capacity for a permit.';

CREATE OR REPLACE VIEW lease.active WITH (security_barrier) AS
SELECT l.resource, l.holder, l.token, l.owner::text::name AS owner,
       l.acquired_at, l.renewed_at, e.expires_at,
       e.expires_at - clock_timestamp() AS remaining,
       l.session_pid IS NOT NULL AS session_bound, l.session_pid, l.application_name,
       coalesce(w.waiters, 0) AS waiters,
       l.lifeline, l.data, l.released_at,
       l.mode, CASE WHEN l.mode = 'permit' THEN c.capacity END AS capacity
FROM lease.leases AS l
LEFT JOIN lease.lifelines AS f ON f.id = l.lifeline
LEFT JOIN lease.capacities AS c ON c.resource = l.resource
CROSS JOIN LATERAL (SELECT CASE WHEN l.lifeline IS NULL THEN l.expires_at ELSE f.expires_at END) AS e(expires_at)
LEFT JOIN lease._waiter_counts() AS w ON w.resource_key = lease._resource_key(l.resource)
WHERE e.expires_at > clock_timestamp() AND lease._token_visible(l.owner);
COMMENT ON VIEW lease.active IS
'Every live lease, one row per holder: holder, token, owner, times, time remaining, session binding, waiters, lifeline, data, released_at for a lease kept after a release, mode (exclusive, shared or permit) and a permit''s capacity. An attached lease''s expiry is its lifeline''s. Ordinary roles see the leases of roles whose privileges they have; roles with SELECT on lease.leases (and superusers) see all.';
