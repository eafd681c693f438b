-- Lease queue, claim: up to BATCH jobs from the oldest CANDIDATES ready jobs, in random order
-- (so that workers claiming at the same moment rarely want the same job; lease_acquire_any
-- skips the ones another claimer is taking and the ones held). With snapshot_consistent it
-- takes only jobs whose leases have not changed since this statement's snapshot, so the
-- payloads and states read here are current: a job completed (and released) after the
-- candidates were read is skipped, never granted again. `stale` counts granted jobs that are
-- not ready, which that guarantee makes 0. Expired leases are left to the expiry worker, which
-- removes them on time: a crashed worker's jobs come back by themselves. BATCH and CANDIDATES
-- are written in by run.sh as constants, as an application would write them: a LIMIT given as
-- a parameter is planned anew on every call.
WITH granted AS (
    SELECT substr(a.resource, 5)::bigint AS id, a.token
    FROM lease_acquire_any(
        ARRAY(SELECT 'job:' || c.id
              FROM (SELECT j.id FROM queue_jobs AS j WHERE j.state = 'ready' ORDER BY j.id LIMIT CANDIDATES) AS c
              ORDER BY random()),
        'worker-' || :client_id, :ttl::interval, BATCH, snapshot_consistent => true) AS a
)
SELECT coalesce(array_agg(g.id), '{}') AS ids, coalesce(array_agg(g.token), '{}') AS tokens,
       coalesce(array_agg(j.payload), '{}') AS payloads, count(*) AS n,
       count(*) FILTER (WHERE j.state <> 'ready') AS stale
FROM granted AS g JOIN queue_jobs AS j USING (id) \gset
\if :stale > 0
INSERT INTO queue_misses (kind, jobs, worker) VALUES ('stale', :stale, :client_id);
\endif
