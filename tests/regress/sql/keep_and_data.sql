-- A release that keeps the resource for a minimum hold (at most once per interval), and data
-- stored with a lease.
SELECT lease_acquire('cron:daily', 'node-a', '1 minute') AS k \gset
SELECT lease_release('cron:daily', :k, keep_for => '1 hour') AS released;
-- the lease is kept: nobody holds it, and nobody, its holder included, may have it before
-- acquired_at + keep_for
SELECT holder, token = :k AS same_token, released_at IS NOT NULL AS released,
       expires_at = acquired_at + interval '1 hour' AS kept_until
FROM lease_info('cron:daily');
SELECT resource, released_at IS NOT NULL AS released FROM lease.active WHERE resource = 'cron:daily';
SELECT lease_acquire('cron:daily', 'node-a', '1 minute') AS holder_refused,
       lease_acquire('cron:daily', 'node-b', '1 minute') AS other_refused;
SELECT count(*) AS claimed FROM lease_acquire_any(ARRAY['cron:daily'], 'node-a');
SELECT lease_check('cron:daily', :k) AS check_fails, lease_renew('cron:daily', :k) AS renew_fails,
       lease_release('cron:daily', :k) AS release_fails, lease_set_data('cron:daily', :k, '{}') AS set_data_fails;
SELECT lease_release('cron:daily', :k, '2 hours') AS keep_again_fails;
-- an administrator can still end it
SELECT lease_force_release('cron:daily') AS revoked;
SELECT count(*) AS rows_after_revoke FROM lease.leases WHERE resource = 'cron:daily';
-- a minimum hold already served releases at once; NULL keep_for is a plain release
SELECT lease_acquire('cron:hourly', 'node-a', '1 minute') AS h \gset
SELECT lease_release('cron:hourly', :h, keep_for => '0 seconds') AS released;
SELECT count(*) AS rows_left FROM lease.leases WHERE resource = 'cron:hourly';
SELECT lease_acquire('cron:hourly', 'node-a', '1 minute') AS h2 \gset
SELECT lease_release('cron:hourly', :h2, NULL) AS released;
SELECT count(*) AS rows_left FROM lease.leases WHERE resource = 'cron:hourly';
-- a kept lease leaves its lifeline: closing the lifeline does not end it early
SELECT lease_lifeline_open('node-a') AS l \gset
SELECT lease_acquire('cron:weekly', 'node-a', lifeline => :l) AS w \gset
SELECT lease_release('cron:weekly', :w, '1 hour') AS released;
SELECT lifeline IS NULL AS detached, released_at IS NOT NULL AS released FROM lease_info('cron:weekly');
SELECT lease_lifeline_close(:l) AS released_by_close;
SELECT count(*) AS still_kept FROM lease_info('cron:weekly');
-- once the hold is over the resource is free (here the hold is 50 ms)
SELECT lease_acquire('cron:short', 'node-a', '1 minute') AS s \gset
SELECT lease_release('cron:short', :s, '50 milliseconds') AS released;
DO $$
BEGIN
    WHILE clock_timestamp() <= (SELECT expires_at FROM lease.leases WHERE resource = 'cron:short') LOOP
        PERFORM pg_sleep(0.001);
    END LOOP;
END $$;
SELECT lease_acquire('cron:short', 'node-a', '1 minute') > :s AS granted_again;
-- bad keep_for
SELECT lease_acquire('cron:bad', 'node-a', '1 minute') AS b \gset
SELECT sqlstate, message FROM attempt(format($$SELECT lease_release('cron:bad', %s, '-1 second')$$, :b));
SELECT sqlstate, message FROM attempt(format($$SELECT lease_release('cron:bad', %s, '2 days')$$, :b));
SELECT lease_check('cron:bad', :b) AS still_held;

-- Data: stored at acquire, shown to whoever may see the lease, replaced by the holder with its
-- token (fenced as a renewal), kept by a re-acquire that gives none.
SELECT lease_acquire('data:1', 'worker-1', '1 minute', data => '{"host": "a", "attempt": 1}') AS d \gset
SELECT data FROM lease_info('data:1');
SELECT lease_set_data('data:1', :d, '{"host": "a", "progress": 0.5}') AS replaced;
SELECT data FROM lease.active WHERE resource = 'data:1';
SELECT lease_acquire('data:1', 'worker-1', '1 minute') = :d AS reacquired;
SELECT data ->> 'progress' AS kept_by_reacquire FROM lease_info('data:1');
SELECT lease_acquire('data:1', 'worker-1', '1 minute', data => '[1, 2]') = :d AS reacquired;
SELECT data AS replaced_by_reacquire FROM lease_info('data:1');
SELECT lease_set_data('data:1', :d, NULL) AS removed;
SELECT data IS NULL AS no_data FROM lease_info('data:1');
SELECT lease_set_data('data:1', :d + 1000, '{}') AS wrong_token, lease_set_data('data:free', 1, '{}') AS free;
-- numbers keep their digits (jsonb's own text is kept)
SELECT lease_set_data('data:1', :d, '{"big": 123456789012345678901234567890.50}') AS replaced;
SELECT data FROM lease_info('data:1');
-- at most 512 bytes of compact JSON
SELECT sqlstate, message FROM attempt(format($$SELECT lease_set_data('data:1', %s, '{"k": "%s"}')$$, :d, repeat('x', 505)));
SELECT lease_set_data('data:1', :d, format('{"k": "%s"}', repeat('x', 504))::jsonb) AS largest_fits;
SELECT sqlstate, message FROM attempt(format($$SELECT lease_acquire('data:2', 'w', data => '{"k": "%s"}')$$, repeat('x', 600)));
SELECT count(*) AS nothing_granted FROM lease.leases WHERE resource = 'data:2';
-- only members of the owner role see the data of a lease, as its token
SET ROLE lease_bob;
SELECT count(*) AS bob_sees FROM lease.active WHERE resource = 'data:1';
RESET ROLE;
-- leave the table as the next file expects it
DELETE FROM lease.leases WHERE resource LIKE 'cron:%' OR resource LIKE 'data:%';
