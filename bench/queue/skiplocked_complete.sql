-- SKIP LOCKED queue, completion of job :i of the batch: fenced by the claim (this worker,
-- not expired), which it clears in the same update.
WITH done AS (
    UPDATE queue_jobs
    SET state = 'done', completions = completions + 1, completed_by = :client_id, completed_at = clock_timestamp(),
        locked_by = NULL, locked_until = NULL
    WHERE id = (:ids::bigint[])[:i::int] AND locked_by = :client_id AND locked_until > clock_timestamp()
    RETURNING id
)
SELECT count(*) AS ok FROM done \gset
