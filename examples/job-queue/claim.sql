-- Claim up to :batch jobs for :'worker', each under its own lease 'job:<id>' of :'ttl'
-- (session-bound if :session_bound), and mark them running. Returns id, payload, token.
--   psql -v worker=w1 -v ttl='30 s' -v batch=5 -v window=100 -v session_bound=false -f claim.sql
WITH claimed AS (
    -- 1. Take the leases of up to :batch candidates: the first :window unfinished jobs not run
    --    by this worker, queued ones first, then running ones oldest first (their worker may be
    --    dead). lease_acquire_any takes a lease only if it is free or expired, and skips the
    --    ones other workers are claiming at this very moment: it never waits.
    SELECT substr(resource, 5)::bigint AS id, token
    FROM lease_acquire_any(
        ARRAY(SELECT 'job:' || id FROM jobs
              WHERE state = 'queued' OR (state = 'running' AND worker <> :'worker')
              ORDER BY state = 'running', started_at, id
              LIMIT :window),
        :'worker', :'ttl', :batch, :session_bound)
), started AS (
    -- 2. Mark them running under the new tokens (jobs_fence checks each). The UPDATE re-reads
    --    each row, so a job finished after the candidates were read is not started again.
    UPDATE jobs
    SET state = 'running', worker = :'worker', lease_token = claimed.token,
        attempts = attempts + 1, started_at = clock_timestamp()
    FROM claimed
    WHERE jobs.id = claimed.id AND jobs.state <> 'done'
    RETURNING jobs.id, jobs.payload, claimed.token
)
-- 3. Return the started jobs, and give back at once the leases taken on finished ones.
SELECT claimed.id, started.payload, claimed.token
FROM claimed LEFT JOIN started ON started.id = claimed.id
WHERE CASE WHEN started.id IS NOT NULL THEN true
           ELSE NOT lease_release('job:' || claimed.id, claimed.token) END;
