-- lease_sweep() removes expired leases, earliest first, at most max_count at a time, and only
-- expired ones. (This database is not the expiry worker's, so nothing else sweeps here.)
SELECT count(lease_acquire('sweep:' || i, 'h', '1 ms')) AS short_leases FROM generate_series(1, 3) AS i;
SELECT lease_acquire('sweep:live', 'h', '1 hour') IS NOT NULL AS live_lease;
SELECT pg_sleep(0.01);
SELECT lease_sweep(2) AS first_batch;
SELECT lease_sweep() AS rest, lease_sweep() AS nothing_left;
SELECT resource FROM lease.leases WHERE resource LIKE 'sweep:%';
SELECT * FROM attempt('SELECT lease_sweep(0)');
-- ordinary roles may not sweep
SET ROLE lease_bob;
SELECT * FROM attempt('SELECT lease_sweep()');
RESET ROLE;
SELECT lease_release('sweep:live', token) FROM lease_info('sweep:live');
