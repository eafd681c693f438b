-- A short tour of the API; safe to run again.
\echo 'worker-a takes job:42 for 30 seconds and gets a fencing token:'
SELECT lease_acquire('job:42', 'worker-a', '30 seconds') AS token \gset
SELECT :token AS token;
\echo 'worker-b is refused while worker-a holds it (NULL):'
SELECT lease_acquire('job:42', 'worker-b', '30 seconds') AS refused;
\echo 'who holds it:'
SELECT holder, token, owner, expires_at - clock_timestamp() < interval '30 seconds' AS expiring FROM lease_info('job:42');
\echo 'a fenced write: the check and the write commit together, or not at all:'
SELECT lease_check('job:42', :token) AS fence_passes;
\echo 'a table fenced by the lease_fence trigger: a DELETE (it states no token) passes only in a transaction that proved the lease:'
CREATE TEMP TABLE demo_jobs (id int PRIMARY KEY, lease_token bigint);
CREATE TRIGGER fence BEFORE UPDATE OR DELETE ON demo_jobs FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'lease_token', 'job:');
INSERT INTO demo_jobs VALUES (42, :token);
BEGIN;
SELECT lease_assert('job:42', :token);
DELETE FROM demo_jobs WHERE id = 42;
COMMIT;
\echo 'renew, then release (true once, false afterwards):'
SELECT lease_renew('job:42', :token, '1 minute') AS renewed;
SELECT lease_release('job:42', :token) AS released, lease_release('job:42', :token) AS released_again;
\echo 'the old token no longer passes the fence:'
SELECT lease_check('job:42', :token) AS fence_passes;
\echo 'a queue worker claims up to 2 of 4 jobs at once; another worker gets the rest:'
SELECT resource FROM lease_acquire_any(ARRAY['job:1', 'job:2', 'job:3', 'job:4'], 'worker-a', '30 seconds', 2);
SELECT resource FROM lease_acquire_any(ARRAY['job:1', 'job:2', 'job:3', 'job:4'], 'worker-b', '30 seconds', 4);
\echo 'one heartbeat for many leases: two leases attached to a lifeline, one renewal keeps both alive:'
SELECT lease_lifeline_open('worker-c', '30 seconds') AS lifeline \gset
SELECT resource FROM lease_acquire_any(ARRAY['job:5', 'job:6'], 'worker-c', max_count => 2, lifeline => :lifeline,
                                       data => '{"host": "demo"}');
SELECT lease_lifeline_renew(:lifeline) > clock_timestamp() AS renewed;
SELECT resource, holder, data FROM lease.active WHERE lifeline = :lifeline ORDER BY resource;
SELECT lease_lifeline_close(:lifeline) AS released;
\echo 'a minimum hold: released after a short run, the hourly report cannot run again within the hour:'
SELECT lease_acquire('cron:hourly-report', 'node-a', '10 minutes') AS report \gset
SELECT lease_release('cron:hourly-report', :report, keep_for => '1 hour') AS released;
SELECT lease_acquire('cron:hourly-report', 'node-b', '10 minutes') AS refused;
\echo 'two readers share a report while the writer is refused; a counting semaphore lets 2 of 3 in:'
SELECT lease_acquire('report:sales', 'reader-1', '30 seconds', mode => 'shared') IS NOT NULL AS reader_1,
       lease_acquire('report:sales', 'reader-2', '30 seconds', mode => 'shared') IS NOT NULL AS reader_2,
       lease_acquire('report:sales', 'writer', '30 seconds') IS NULL AS writer_refused;
SELECT n AS worker, lease_acquire('limit:email', 'worker-' || n, '30 seconds', capacity => 2) IS NOT NULL AS permitted
FROM generate_series(1, 3) AS n;
\echo 'a transfer takes both accounts or neither:'
SELECT resource, token IS NOT NULL AS granted
FROM lease_acquire_all(ARRAY['account:17', 'account:4'], 'transfer-1', '30 seconds');
\echo 'every live lease, as an administrator sees it:'
SELECT resource, holder, token, mode, capacity, session_bound, waiters, released_at IS NOT NULL AS kept
FROM lease.active ORDER BY resource, holder;
SELECT count(lease_force_release(resource)) AS revoked FROM lease.active;
