-- SKIP LOCKED queue, the completion of the whole batch in one update, fenced by the claim (this
-- worker, not expired), which it clears.
WITH done AS (
    UPDATE queue_jobs
    SET state = 'done', completions = completions + 1, completed_by = :client_id, completed_at = clock_timestamp(),
        locked_by = NULL, locked_until = NULL
    WHERE id = ANY (:ids::bigint[]) AND locked_by = :client_id AND locked_until > clock_timestamp()
    RETURNING id
)
SELECT count(*) AS ok FROM done \gset
