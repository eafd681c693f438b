-- Lease queue, claim: up to :batch jobs from the oldest :candidates ready jobs that nobody
-- holds (reading lease.leases needs SELECT on it), offered to lease_acquire_any in random order
-- so that workers claiming at the same moment rarely want the same job (it skips those another
-- claimer is taking). Expired leases count as free: a crashed worker's jobs come back by themselves.
SELECT coalesce(array_agg(substr(a.resource, 5)::bigint), '{}') AS ids,
       coalesce(array_agg(a.token), '{}') AS tokens,
       count(*) AS n
FROM lease_acquire_any(
    ARRAY(SELECT 'job:' || c.id
          FROM (SELECT j.id FROM queue_jobs AS j
                WHERE j.state = 'ready'
                  AND NOT EXISTS (SELECT FROM lease.leases AS l
                                  WHERE l.resource = 'job:' || j.id AND l.expires_at > clock_timestamp())
                ORDER BY j.id
                LIMIT :candidates) AS c
          ORDER BY random()),
    'worker-' || :client_id, :ttl::interval, :batch) AS a \gset
