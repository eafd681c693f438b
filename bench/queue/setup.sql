-- Objects for the queue benchmark (bench/queue/run.sh). Both queues use this one jobs table:
-- the lease queue leaves locked_by/locked_until empty (its claims live in lease.leases), the
-- SKIP LOCKED queue claims by writing them. A completion adds 1 to `completions` without
-- looking at `state`, so a job completed twice shows as completions = 2: the only thing that
-- stops a second completion is each queue's fence.
CREATE EXTENSION IF NOT EXISTS lease;
ALTER SYSTEM RESET lease.notify;   -- events on, the default
SELECT pg_reload_conf();
DROP TABLE IF EXISTS queue_jobs, queue_misses;
DROP FUNCTION IF EXISTS queue_claim;
CREATE TABLE queue_jobs (
    id           bigint PRIMARY KEY,
    payload      text NOT NULL,
    state        text NOT NULL DEFAULT 'ready',   -- 'ready' or 'done'
    locked_by    integer,                         -- SKIP LOCKED queue: the claiming worker
    locked_until timestamptz,                     -- SKIP LOCKED queue: end of the claim
    completed_by integer,
    completed_at timestamptz,
    completions  integer NOT NULL DEFAULT 0
);
CREATE INDEX queue_jobs_ready ON queue_jobs (id) WHERE state = 'ready';
-- Lease queue, claim: up to BATCH jobs from the oldest CANDIDATES ready jobs that nobody holds
-- (reading lease.leases needs SELECT on it), offered to lease_acquire_any in random order so
-- that workers claiming at the same moment rarely want the same job (it skips those another
-- claimer is taking). Expired leases count as free: a crashed worker's jobs come back by
-- themselves. The candidates are read before the grants, so a job another worker completed
-- (and released) in between can be granted again; the second statement has a newer snapshot
-- than every grant (READ COMMITTED), so it sees that completion. Such jobs are released and
-- dropped from the batch (counted in stale). BATCH and CANDIDATES are written into the function
-- by run.sh as constants, as an application would write them: a LIMIT given as a parameter
-- is planned anew on every call.
CREATE FUNCTION queue_claim(worker integer, ttl interval,
                            OUT ids bigint[], OUT tokens bigint[], OUT payloads text[], OUT n bigint, OUT stale bigint)
LANGUAGE plpgsql AS $claim$
DECLARE
    granted_ids bigint[];
    granted_tokens bigint[];
BEGIN
    SELECT coalesce(array_agg(substr(a.resource, 5)::bigint), '{}'), coalesce(array_agg(a.token), '{}')
    INTO granted_ids, granted_tokens
    FROM lease_acquire_any(
        ARRAY(SELECT 'job:' || c.id
              FROM (SELECT j.id FROM queue_jobs AS j
                    WHERE j.state = 'ready'
                      AND NOT EXISTS (SELECT FROM lease.leases AS l
                                      WHERE l.resource = 'job:' || j.id AND l.expires_at > clock_timestamp())
                    ORDER BY j.id
                    LIMIT CANDIDATES) AS c
              ORDER BY random()),
        'worker-' || worker, ttl, BATCH) AS a;
    WITH granted AS (
        SELECT g.id, g.token, j.state = 'ready' AS ready, j.payload
        FROM unnest(granted_ids, granted_tokens) AS g(id, token)
        JOIN queue_jobs AS j USING (id)
    )
    SELECT coalesce(array_agg(g.id) FILTER (WHERE g.ready), '{}'),
           coalesce(array_agg(g.token) FILTER (WHERE g.ready), '{}'),
           coalesce(array_agg(g.payload) FILTER (WHERE g.ready), '{}'),
           count(*) FILTER (WHERE g.ready),
           count(lease_release('job:' || g.id, g.token)) FILTER (WHERE NOT g.ready)
    INTO ids, tokens, payloads, n, stale
    FROM granted AS g;
END
$claim$;
-- Claimed jobs a worker could not complete, logged by the workers: 'refused' (the fence
-- refused the completion: the claim had ended) and 'stale' (granted, but already done).
CREATE TABLE queue_misses (
    kind   text NOT NULL,
    jobs   integer NOT NULL,
    worker integer NOT NULL
);
