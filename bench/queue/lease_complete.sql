-- Lease queue, completion of job :i of the batch: the update is fenced by the job's token,
-- and the lease is released in the same statement (so in the same transaction).
WITH done AS (
    UPDATE queue_jobs
    SET state = 'done', completions = completions + 1, completed_by = :client_id, completed_at = clock_timestamp()
    WHERE id = (:ids::bigint[])[:i::int] AND lease_check('job:' || id, (:tokens::bigint[])[:i::int])
    RETURNING id
)
SELECT count(lease_release('job:' || id, (:tokens::bigint[])[:i::int])) AS ok FROM done \gset
