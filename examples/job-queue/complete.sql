-- Finish a job and release its lease, in one statement. The UPDATE states the token, so
-- jobs_fence rejects it (SQLSTATE 55000, nothing written) unless that token still holds
-- 'job:<id>': a worker that lost its lease cannot overwrite its successor's work.
--   psql -v id=7 -v token=1017 -v result='ok' -f complete.sql
WITH finished AS (
    UPDATE jobs
    SET state = 'done', result = :'result', lease_token = :token, done_at = clock_timestamp()
    WHERE id = :id
    RETURNING id
)
SELECT lease_release('job:' || id, :token) AS released FROM finished;
