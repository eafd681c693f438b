-- Lease queue, the completion of the whole batch in one statement: the claim's leases released
-- in one call, and exactly the jobs whose release succeeded updated, in the same transaction.
-- Each successful release is a fence as lease_release is (the token held the lease, and no one
-- else can be granted the job until this transaction ends).
WITH released AS (
    SELECT substr(r, 5)::bigint AS id
    FROM lease_release_each(ARRAY(SELECT 'job:' || i FROM unnest(:ids::bigint[]) AS i), :tokens::bigint[]) AS r
), done AS (
    UPDATE queue_jobs
    SET state = 'done', completions = completions + 1, completed_by = :client_id, completed_at = clock_timestamp()
    WHERE id IN (SELECT id FROM released)
    RETURNING id
)
SELECT count(*) AS ok FROM done \gset
