-- Everything is transactional: a rolled-back acquire, renew or release leaves no trace in
-- the lease table. (A token number used by a rolled-back acquire is not handed out again.)
BEGIN;
SELECT lease_acquire('tx:1', 'h', '1 hour') AS rolled_back_token \gset
SELECT count(*) AS visible_inside FROM lease_info('tx:1');
ROLLBACK;
SELECT count(*) AS after_rollback FROM lease_info('tx:1');
SELECT lease_acquire('tx:1', 'h', '1 hour') > :rolled_back_token AS later_token_larger;
SELECT token AS token FROM lease_info('tx:1') \gset
BEGIN;
SELECT lease_release('tx:1', :token) AS released_inside;
ROLLBACK;
SELECT holder FROM lease_info('tx:1');
BEGIN;
SELECT lease_renew('tx:1', :token, '1 second') AS renewed_inside;
ROLLBACK;
SELECT expires_at - renewed_at AS ttl_after_rollback FROM lease_info('tx:1');
-- a failed statement after an acquire aborts it too
BEGIN;
SELECT lease_acquire('tx:2', 'h') IS NOT NULL AS acquired;
SELECT 1 / 0;
COMMIT;
SELECT count(*) AS after_error FROM lease_info('tx:2');
-- a passed fence holds the resource's lock (share mode, lock space 19525) until the
-- transaction ends; rolling back to a savepoint taken before the check drops the lock
-- together with the writes it protected (the blocking itself is in the client tests)
BEGIN;
SAVEPOINT s;
SELECT lease_check('tx:1', :token) AS fence_in_savepoint;
SELECT mode, granted FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 19525 AND pid = pg_backend_pid();
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS locks_after_rollback_to_savepoint FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 19525 AND pid = pg_backend_pid();
SELECT lease_check('tx:1', :token) AS fence;
COMMIT;
SELECT count(*) AS locks_after_commit FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 19525 AND pid = pg_backend_pid();
SELECT lease_release('tx:1', :token) AS released;
