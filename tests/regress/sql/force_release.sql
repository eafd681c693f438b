-- lease_force_release: an administrator ends a live lease whatever its holder; the revoked
-- token fails every later check, renew and release. Not executable by PUBLIC.
SET ROLE lease_alice;
SELECT lease_acquire('force:1', 'alice', '1 hour') AS token \gset
SELECT * FROM attempt('SELECT lease_force_release(''force:1'')');
RESET ROLE;
SELECT lease_force_release('force:1') AS revoked, lease_force_release('force:1') AS again,
       lease_force_release('force:free') AS free;
SET ROLE lease_alice;
SELECT lease_check('force:1', :token) AS check_after, lease_renew('force:1', :token) AS renew_after,
       lease_release('force:1', :token) AS release_after;
RESET ROLE;
-- an expired lease is already free: nothing to revoke
SELECT lease_acquire('force:2', 'h', '1 ms') IS NOT NULL AS short;
SELECT pg_sleep(0.01);
SELECT lease_force_release('force:2') AS revoked_expired;
SELECT * FROM attempt('SELECT lease_force_release(NULL)');
-- a role granted EXECUTE may revoke
GRANT EXECUTE ON FUNCTION lease_force_release(text) TO lease_bob;
SELECT lease_acquire('force:3', 'h', '1 hour') IS NOT NULL AS held;
SET ROLE lease_bob;
SELECT lease_force_release('force:3') AS bob_revokes;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION lease_force_release(text) FROM lease_bob;
SELECT lease_sweep() >= 0 AS swept;
