-- Who may do what. Leases belong to the role that acquired them (current_user).
SET ROLE lease_alice;
SELECT lease_acquire('shared:1', 'alice', '1 hour') AS alice_token \gset
-- ordinary roles cannot touch the state directly
SELECT call, r.sqlstate
FROM (VALUES
    ($$SELECT count(*) FROM lease.leases$$),
    ($$INSERT INTO lease.leases VALUES ('x', 'h', 1, 'lease_alice', now(), now(), now())$$),
    ($$UPDATE lease.leases SET expires_at = 'infinity'$$),
    ($$DELETE FROM lease.leases$$),
    ($$SELECT nextval('lease.token_seq')$$),
    ($$SELECT setval('lease.token_seq', 1)$$),
    ($$SET lease.max_ttl = '1 year'$$)
) AS calls(call), LATERAL attempt(call) AS r;
-- another role cannot renew or release alice's lease (42501), even with the right token
SET ROLE lease_bob;
SELECT * FROM attempt(format('SELECT lease_renew(%L, %s)', 'shared:1', :alice_token));
SELECT * FROM attempt(format('SELECT lease_release(%L, %s)', 'shared:1', :alice_token));
-- anyone may see who holds it, but not its token; a non-member cannot fence with it either
-- (lease_check is false, lease_assert says why), and a wrong token is simply false
SELECT holder, owner, token IS NULL AS token_hidden FROM lease_info('shared:1');
SELECT lease_check('shared:1', :alice_token) AS bob_checks, lease_release('shared:1', 424242) AS wrong_token;
SELECT * FROM attempt(format('SELECT lease_assert(%L, %s)', 'shared:1', :alice_token));
SELECT count(*) AS bob_barrier_locks FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 19525
  AND pid = pg_backend_pid();
-- the same holder name under another role is a different holder: refused
SELECT lease_acquire('shared:1', 'alice', '1 hour') AS same_name_other_role;
-- members of the owning role may renew and release: acquire as the group role
RESET ROLE;
SET ROLE lease_team;
SELECT lease_acquire('shared:2', 'team-job', '1 hour') AS team_token \gset
SET ROLE lease_bob;
SELECT lease_renew('shared:2', :team_token) AS member_renews;
SELECT lease_release('shared:2', :team_token) AS member_releases;
-- a superuser may release anyone's lease
RESET ROLE;
SELECT lease_release('shared:1', :alice_token) AS superuser_releases;
-- any user may change lease.default_ttl; only superusers lease.max_ttl
SET ROLE lease_bob;
SET lease.default_ttl = '5s';
SHOW lease.default_ttl;
RESET lease.default_ttl;
RESET ROLE;
SHOW lease.max_ttl;
-- a caller's search_path cannot change what the functions do: shadow the table, the
-- sequence, clock_timestamp() and text equality, then use the API
CREATE SCHEMA shadow;
CREATE TABLE shadow.leases (LIKE lease.leases);
CREATE SEQUENCE shadow.token_seq START 1000000;
CREATE FUNCTION shadow.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE FUNCTION shadow.texteq_always(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR shadow.= (LEFTARG = text, RIGHTARG = text, FUNCTION = shadow.texteq_always);
CREATE TEMP TABLE leases (LIKE lease.leases);
SET search_path = shadow, pg_temp, public, pg_catalog;
SELECT lease_acquire('shadowed', 'h', '1 hour') AS token \gset
SELECT :token < 1000000 AS token_from_real_sequence;
SELECT lease_acquire('shadowed-other', 'h', '1 hour') IS NOT NULL AS equality_not_shadowed;
SELECT holder, token = :token AS same_token FROM lease_info('shadowed');
SELECT count(*) AS shadow_rows FROM shadow.leases;
SELECT count(*) AS temp_rows FROM pg_temp.leases;
SELECT lease_release('shadowed', :token) AS released;
RESET search_path;
SELECT lease_release('shadowed-other', token) FROM lease_info('shadowed-other');
DROP SCHEMA shadow CASCADE;
