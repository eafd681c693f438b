-- lease_acquire_all: every listed resource, each with its own token, or none of them.
SELECT resource, token IS NOT NULL AS has_token
FROM lease_acquire_all(ARRAY['all:b', 'all:a', 'all:b', 'all:c'], 'mover', '1 hour');
SELECT count(DISTINCT token) AS distinct_tokens FROM lease.leases WHERE resource LIKE 'all:%';
-- one held by another holder: nothing is granted, and nothing is left held or used up
SELECT lease_acquire('all:held', 'other', '1 hour') AS held_token \gset
SELECT count(*) AS granted FROM lease_acquire_all(ARRAY['all:d', 'all:held', 'all:e'], 'mover');
SELECT count(*) AS left_behind FROM lease.leases WHERE resource IN ('all:d', 'all:e');
SELECT lease_acquire('all:d', 'third') IS NOT NULL AS d_still_free;
SELECT lease_release('all:d', token) FROM lease_info('all:d');
-- the caller's own live leases are kept with their tokens and extended; new ones are granted
SELECT token AS token_a FROM lease_info('all:a') \gset
SELECT resource, token = :token_a AS same_token
FROM lease_acquire_all(ARRAY['all:a', 'all:f'], 'mover', '2 hours');
SELECT resource, expires_at - renewed_at AS ttl FROM lease.leases
WHERE resource IN ('all:a', 'all:f') ORDER BY resource;
-- ... but the whole claim fails if any part fails, and then the extension is undone too
SELECT expires_at AS a_expires FROM lease_info('all:a') \gset
SELECT count(*) AS granted FROM lease_acquire_all(ARRAY['all:a', 'all:held'], 'mover', '3 hours');
SELECT expires_at = :'a_expires' AS a_unchanged FROM lease_info('all:a');
-- another role with the same holder name is another holder
SET ROLE lease_alice;
SELECT count(*) AS alice_gets FROM lease_acquire_all(ARRAY['all:a'], 'mover');
RESET ROLE;
-- an expired lease is taken over, with a larger token
SELECT lease_acquire('all:g', 'old', '1 millisecond') AS short_token \gset
SELECT pg_sleep(0.01);
SELECT resource, token > :short_token AS larger FROM lease_acquire_all(ARRAY['all:g', 'all:h'], 'mover');
-- a rolled-back claim leaves no trace
BEGIN;
SELECT count(*) AS claimed FROM lease_acquire_all(ARRAY['all:i', 'all:j'], 'mover');
ROLLBACK;
SELECT count(*) AS after_rollback FROM lease.leases WHERE resource IN ('all:i', 'all:j');
-- a claim inside a savepoint that is rolled back: its leases go with it
BEGIN;
SAVEPOINT s;
SELECT count(*) AS claimed FROM lease_acquire_all(ARRAY['all:i', 'all:j'], 'mover');
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS in_savepoint FROM lease.leases WHERE resource IN ('all:i', 'all:j');
COMMIT;
-- session-bound, with data, and with a lifeline
SELECT resource FROM lease_acquire_all(ARRAY['all:k', 'all:l'], 'mover', '1 hour', session_bound => true,
                                       data => '{"transfer": 42}');
SELECT resource, session_pid = pg_backend_pid() AS my_session, data FROM lease.leases
WHERE resource IN ('all:k', 'all:l') ORDER BY resource;
SELECT lease_lifeline_open('movers', '1 hour') AS lifeline \gset
SELECT resource FROM lease_acquire_all(ARRAY['all:m', 'all:n'], 'mover', lifeline => :lifeline);
SELECT resource, lifeline = :lifeline AS attached FROM lease.leases
WHERE resource IN ('all:m', 'all:n') ORDER BY resource;
SELECT lease_lifeline_close(:lifeline) AS closed;
-- a waiting claim's attempts that extended the caller's own lease and were rolled back are not
-- counted as re-acquires
SELECT reacquired AS reacquired_before FROM lease.stats \gset
SELECT count(*) AS granted FROM lease_acquire_all(ARRAY['all:a', 'all:held'], 'mover', wait => '30 milliseconds');
SELECT reacquired - :reacquired_before AS reacquires_counted FROM lease.stats;
-- waiting: a claim that cannot be granted within its wait returns no rows
SELECT count(*) AS granted FROM lease_acquire_all(ARRAY['all:held', 'all:o'], 'mover', wait => '20 milliseconds');
SELECT count(*) AS left_behind FROM lease.leases WHERE resource = 'all:o';
-- bad input: a specific SQLSTATE, and nothing changed (not even a token number)
SELECT lease_acquire('all:probe', 'h') AS probe_before \gset
SELECT lease_release('all:probe', :probe_before);
SELECT count(*) AS rows_before FROM lease.leases \gset
SELECT call, r.sqlstate, r.message
FROM (VALUES
    ($$SELECT count(*) FROM lease_acquire_all(NULL, 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_all('{}', 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_all(ARRAY['all:20', NULL], 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_all(ARRAY['all:20', ' '], 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_all(ARRAY['all:20'], NULL)$$),
    ($$SELECT count(*) FROM lease_acquire_all(ARRAY['all:20'], 'h', '0 seconds')$$),
    ($$SELECT count(*) FROM lease_acquire_all(ARRAY['all:20'], 'h', wait => '-1 second')$$),
    ($$SELECT count(*) FROM lease_acquire_all(ARRAY['all:20'], 'h', '1 hour', lifeline => 1)$$),
    ($$SELECT count(*) FROM lease_acquire_all(ARRAY['all:20'], 'h', data => jsonb_build_object('k', repeat('x', 600)))$$),
    ($$SELECT count(*) FROM lease_acquire_all((SELECT array_agg('all:w' || g) FROM generate_series(1, 17) AS g), 'h', wait => '1 second')$$)
) AS c(call), LATERAL public.attempt(c.call) AS r;
SELECT count(*) = :rows_before AS nothing_written FROM lease.leases;
SELECT lease_acquire('all:probe', 'h') = :probe_before + 1 AS no_token_used;
-- sixteen distinct resources may wait (duplicates count once)
SELECT count(*) AS granted
FROM lease_acquire_all((SELECT array_agg('all:w' || (g % 16)) FROM generate_series(1, 40) AS g), 'h',
                       wait => '1 second');
DELETE FROM lease.leases WHERE resource LIKE 'all:%';
