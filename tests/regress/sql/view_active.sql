-- lease.active: every live lease, to members of its owner; everything to roles that may read
-- lease.leases (GRANT SELECT ON lease.leases TO your_monitoring_role) and to superusers.
CREATE ROLE lease_monitor;
SET ROLE lease_alice;
SELECT lease_acquire('active:alice', 'alice-worker', '1 hour') IS NOT NULL AS alice_holds;
SELECT lease_acquire('active:alice-session', 'alice-worker', '1 hour', NULL, true) IS NOT NULL AS alice_session;
RESET ROLE;
SELECT lease_acquire('active:admin', 'admin-job', '1 hour') IS NOT NULL AS admin_holds;
SELECT lease_acquire('active:gone', 'h', '1 ms') IS NOT NULL AS expiring;
SELECT pg_sleep(0.01);
SELECT resource, holder, owner, remaining > interval '59 min' AS about_an_hour, session_bound,
       session_pid = pg_backend_pid() AS my_session, waiters
FROM lease.active WHERE resource LIKE 'active:%' ORDER BY resource;
SET ROLE lease_alice;
SELECT resource, owner FROM lease.active WHERE resource LIKE 'active:%' ORDER BY resource;
SET ROLE lease_bob;
SELECT count(*) AS bob_sees FROM lease.active WHERE resource LIKE 'active:%';
RESET ROLE;
GRANT SELECT ON lease.leases TO lease_monitor;
SET ROLE lease_monitor;
SELECT resource FROM lease.active WHERE resource LIKE 'active:%' ORDER BY resource;
RESET ROLE;
REVOKE SELECT ON lease.leases FROM lease_monitor;
DROP ROLE lease_monitor;
SELECT count(lease_force_release(resource)) AS cleaned FROM lease.active WHERE resource LIKE 'active:%';
