-- Lease queue, fetch: the payloads of the granted jobs that are still ready. The candidates
-- were read before the grants, so a job another worker completed (and released) in between
-- can be granted again; this statement's snapshot is newer than every grant, so it sees that
-- completion. Such jobs are released and dropped from the batch (counted in :stale).
WITH granted AS (
    SELECT g.id, g.token, j.state = 'ready' AS ready, j.payload
    FROM unnest(:ids::bigint[], :tokens::bigint[]) AS g(id, token)
    JOIN queue_jobs AS j USING (id)
)
SELECT coalesce(array_agg(id) FILTER (WHERE ready), '{}') AS ids,
       coalesce(array_agg(token) FILTER (WHERE ready), '{}') AS tokens,
       coalesce(array_agg(payload) FILTER (WHERE ready), '{}') AS payloads,
       count(*) FILTER (WHERE ready) AS n,
       count(lease_release('job:' || id, token)) FILTER (WHERE NOT ready) AS stale
FROM granted \gset
\if :stale > 0
INSERT INTO queue_misses (kind, jobs, worker) VALUES ('stale', :stale, :client_id);
\endif
