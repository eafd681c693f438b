-- Remove a job you hold (a poison job, a cancelled one), with its lease. A DELETE states no
-- token, so jobs_fence lets it through only because lease_assert proved, earlier in the same
-- transaction, that this token holds 'job:<id>' (SQLSTATE 55000 otherwise, nothing removed).
--   psql -v id=7 -v token=1017 -f discard.sql
BEGIN;
SELECT lease_assert('job:' || :id, :token);
DELETE FROM jobs WHERE id = :id;
SELECT lease_release('job:' || :id, :token) AS released;
COMMIT;
