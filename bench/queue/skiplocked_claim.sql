-- SKIP LOCKED queue, claim: the oldest :batch ready jobs whose claim is free or has expired,
-- skipping rows other claimers have locked, marked with the worker and the claim's end; returns
-- their payloads.
WITH claimed AS (
    UPDATE queue_jobs
    SET locked_by = :client_id, locked_until = clock_timestamp() + :ttl::interval
    WHERE id = ANY (ARRAY(
        SELECT id FROM queue_jobs
        WHERE state = 'ready' AND (locked_until IS NULL OR locked_until <= clock_timestamp())
        ORDER BY id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED))
    RETURNING id, payload
)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(payload), '{}') AS payloads, count(*) AS n
FROM claimed \gset
