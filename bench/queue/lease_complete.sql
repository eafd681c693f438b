-- Lease queue, completion of job :i of the batch: the lease is released and the job updated in
-- one statement, so in one transaction, and the update happens only if the release succeeded.
-- A successful release is a fence as lease_check is: the token held the lease, and the
-- resource's lock keeps every other grant out until this transaction ends.
WITH released AS (
    SELECT lease_release('job:' || (:ids::bigint[])[:i::int], (:tokens::bigint[])[:i::int]) AS ok
), done AS (
    UPDATE queue_jobs
    SET state = 'done', completions = completions + 1, completed_by = :client_id, completed_at = clock_timestamp()
    FROM released
    WHERE released.ok AND id = (:ids::bigint[])[:i::int]
    RETURNING id
)
SELECT count(*) AS ok FROM done \gset
