-- lease_acquire_any: up to max_count of the listed resources that are free or expired, in the
-- order given, each with its token; held ones are skipped, the caller's own are returned again.
SELECT lease_acquire('any:2', 'other', '1 hour') AS other_token \gset
SELECT resource, token > :other_token AS newer_token
FROM lease_acquire_any(ARRAY['any:1', 'any:2', 'any:1', 'any:3', 'any:4'], 'claimer', '1 hour', 2);
-- the same holder asking again gets its own leases back with the same tokens, then new ones
SELECT token AS token_1 FROM lease_info('any:1') \gset
SELECT resource, token = :token_1 AS same_token
FROM lease_acquire_any(ARRAY['any:1', 'any:2', 'any:3', 'any:4'], 'claimer', '2 hours', 3);
SELECT resource, holder, expires_at - renewed_at AS ttl FROM lease.leases
WHERE resource LIKE 'any:%' ORDER BY resource;
-- another role with the same holder name is another holder: nothing for it here
SET ROLE lease_alice;
SELECT count(*) AS alice_gets FROM lease_acquire_any(ARRAY['any:1', 'any:3', 'any:4'], 'claimer');
RESET ROLE;
-- max_count defaults to 1; NULL ttl means lease.default_ttl
SELECT resource FROM lease_acquire_any(ARRAY['any:5', 'any:6'], 'claimer');
SELECT resource, expires_at - renewed_at AS ttl FROM lease_info('any:5')
UNION ALL SELECT resource, expires_at - renewed_at FROM lease_info('any:6');
-- an empty array, or only held resources: no rows
SELECT count(*) AS empty FROM lease_acquire_any('{}', 'claimer');
SELECT count(*) AS all_held FROM lease_acquire_any(ARRAY['any:1', 'any:2'], 'newcomer', NULL, 10);
-- an expired lease is taken over with a larger token
SELECT lease_acquire('any:7', 'old', '1 millisecond') AS short_token \gset
SELECT pg_sleep(0.01);
SELECT resource, token > :short_token AS larger FROM lease_acquire_any(ARRAY['any:7'], 'newcomer');
SELECT lease_check('any:7', :short_token) AS old_token_passes;
-- session-bound claims record the caller's session
SELECT resource FROM lease_acquire_any(ARRAY['any:8'], 'claimer', '1 hour', 1, session_bound => true);
SELECT session_pid = pg_backend_pid() AS my_session FROM lease_info('any:8');
-- a rolled-back claim leaves no trace
BEGIN;
SELECT count(*) AS claimed FROM lease_acquire_any(ARRAY['any:9', 'any:10'], 'claimer', '1 hour', 5);
ROLLBACK;
SELECT count(*) AS after_rollback FROM lease.leases WHERE resource IN ('any:9', 'any:10');
-- snapshot_consistent takes only resources without a lease row: not the caller's own lease
-- (returned above without it), not an expired lease (left for the sweep)
SELECT count(*) AS own_again FROM lease_acquire_any(ARRAY['any:8'], 'claimer', '1 hour', 1, snapshot_consistent => true);
SELECT lease_acquire('any:11', 'old', '1 millisecond') AS short_token \gset
SELECT pg_sleep(0.01);
SELECT count(*) AS expired_taken FROM lease_acquire_any(ARRAY['any:11'], 'newcomer', '1 hour', 1, snapshot_consistent => true);
SELECT lease_sweep() >= 1 AS swept;
SELECT resource FROM lease_acquire_any(ARRAY['any:11', 'any:12'], 'newcomer', '1 hour', 5, snapshot_consistent => true);
-- a lease released by a statement that committed before the claim's is in its snapshot: free
SELECT lease_release('any:12', token) AS released FROM lease_info('any:12');
SELECT resource FROM lease_acquire_any(ARRAY['any:12'], 'claimer', '1 hour', 1, snapshot_consistent => true);
-- ... as are changes this transaction made itself
BEGIN;
SELECT lease_release('any:12', token) AS released FROM lease_info('any:12');
SELECT resource FROM lease_acquire_any(ARRAY['any:12'], 'other', '1 hour', 1, snapshot_consistent => true);
COMMIT;
-- bad input: a specific SQLSTATE, and nothing changed (not even a token number)
SELECT lease_acquire('any:probe', 'h') AS probe_before \gset
SELECT lease_release('any:probe', :probe_before);
SELECT count(*) AS rows_before FROM lease.leases \gset
SELECT call, r.sqlstate, r.message
FROM (VALUES
    ($$SELECT count(*) FROM lease_acquire_any(NULL, 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20', NULL], 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20', ' '], 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20', repeat('x', 513)], 'h')$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20'], NULL)$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20'], '')$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20'], 'h', '0 s')$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20'], 'h', '2 days')$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20'], 'h', '1 min', 0)$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['any:20'], 'h', '1 min', -3)$$),
    ($$SELECT count(*) FROM lease_acquire_any(array_append(array_fill('any:ok'::text, ARRAY[9999]), NULL), 'h')$$)
) AS calls(call), attempt(call) AS r;
SELECT count(*) = :rows_before AS rows_unchanged FROM lease.leases;
SELECT token = :probe_before + 1 AS no_token_used FROM lease_acquire_any(ARRAY['any:probe'], 'h');
-- 10,000 candidates, all duplicates of one: taken once
SELECT count(*) AS taken FROM lease_acquire_any(array_fill('any:many'::text, ARRAY[10000]), 'h', '1 min', 5);
DELETE FROM lease.leases WHERE resource LIKE 'any:%';
