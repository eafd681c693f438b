-- Shared leases and permits: several holders of one resource, each with its own token.
-- Shared: any number of shared holders, no exclusive one.
SELECT lease_acquire('rw:1', 'reader-1', '1 hour', mode => 'shared') AS r1 \gset
SELECT lease_acquire('rw:1', 'reader-2', '10 minutes', mode => 'shared') AS r2 \gset
SELECT :r2 > :r1 AS own_tokens;
SELECT lease_acquire('rw:1', 'writer', '1 hour') IS NULL AS writer_refused;
SELECT lease_acquire('rw:1', 'worker', capacity => 3) IS NULL AS permit_refused;
SELECT holder, mode, capacity, expires_at - renewed_at AS ttl FROM lease_info('rw:1') ORDER BY holder;
-- the same reader again: same token, its own expiry moved, the other's untouched
SELECT lease_acquire('rw:1', 'reader-2', '20 minutes', mode => 'shared') = :r2 AS same_token;
SELECT holder, expires_at - renewed_at AS ttl FROM lease.leases WHERE resource = 'rw:1' ORDER BY holder;
-- each has its own renew, release and fence
SELECT lease_renew('rw:1', :r1, '2 hours') AS renewed, lease_check('rw:1', :r2) AS fenced;
SELECT lease_release('rw:1', :r1) AS released, lease_release('rw:1', :r1) AS again;
SELECT lease_acquire('rw:1', 'writer', '1 hour') IS NULL AS still_refused;
SELECT lease_release('rw:1', :r2) AS released;
SELECT lease_acquire('rw:1', 'writer', '1 hour') AS w \gset
SELECT lease_acquire('rw:1', 'reader-1', mode => 'shared') IS NULL AS reader_refused;
SELECT holder, mode, capacity FROM lease_info('rw:1');
-- a writer's own exclusive lease does not turn into a shared one (nor the reverse)
SELECT lease_acquire('rw:1', 'writer', mode => 'shared') IS NULL AS no_downgrade;
SELECT lease_release('rw:1', :w);
-- an expired exclusive lease is taken over by readers; expired readers by a writer
SELECT lease_acquire('rw:2', 'writer', '1 millisecond') AS old_w \gset
SELECT pg_sleep(0.01);
SELECT lease_acquire('rw:2', 'reader', '1 millisecond', mode => 'shared') > :old_w AS reader_took_over;
SELECT pg_sleep(0.01);
SELECT lease_acquire('rw:2', 'writer', '1 hour') IS NOT NULL AS writer_took_over;
SELECT count(*) AS rows_left FROM lease.leases WHERE resource = 'rw:2';

-- Permits: a counting semaphore; the first permit request declares the capacity.
SELECT lease_acquire('sem:1', 'w1', '1 hour', capacity => 2) AS p1 \gset
SELECT lease_acquire('sem:1', 'w2', '1 hour', capacity => 2) AS p2 \gset
SELECT lease_acquire('sem:1', 'w3', '1 hour', capacity => 2) IS NULL AS third_refused;
-- the declared capacity governs: a call stating another is granted by it
SELECT lease_acquire('sem:1', 'w3', '1 hour', capacity => 5) IS NULL AS still_full;
SELECT lease_acquire('sem:1', 'w3', '1 hour', mode => 'permit') IS NULL AS still_full_without_capacity;
SELECT holder, mode, capacity FROM lease_info('sem:1') ORDER BY holder;
SELECT resource, holder, mode, capacity FROM lease.active WHERE resource = 'sem:1' ORDER BY holder;
SELECT lease_acquire('sem:1', 'reader', mode => 'shared') IS NULL AS shared_refused;
SELECT lease_acquire('sem:1', 'writer') IS NULL AS exclusive_refused;
-- raising the capacity lets one more in; lowering it revokes nobody
SELECT lease_set_capacity('sem:1', 3) AS previous;
SELECT lease_acquire('sem:1', 'w3', '1 hour', mode => 'permit') AS p3 \gset
SELECT lease_set_capacity('sem:1', 1) AS previous;
SELECT count(*) AS live_permits FROM lease_info('sem:1');
SELECT lease_release('sem:1', :p1) AS released;
SELECT lease_acquire('sem:1', 'w4', mode => 'permit') IS NULL AS over_lowered_capacity;
SELECT lease_release('sem:1', :p2), lease_release('sem:1', :p3);
SELECT lease_acquire('sem:1', 'w4', mode => 'permit') IS NOT NULL AS under_capacity_again;
SELECT lease_acquire('sem:1', 'w5', mode => 'permit') IS NULL AS one_at_a_time;
-- a permit is fenced like a lease, and each permit's fence is its own
SELECT token AS p4 FROM lease_info('sem:1') \gset
SELECT lease_check('sem:1', :p4) AS fenced, lease_check('sem:1', :p1) AS released_token_fails;
SELECT lease_set_capacity('sem:1', NULL) AS removed;
SELECT count(*) AS capacities FROM lease.capacities WHERE resource = 'sem:1';
-- a permit that is refused declares nothing
SELECT lease_acquire('sem:2', 'writer') AS sem2w \gset
BEGIN;
SELECT lease_acquire('sem:2', 'w1', capacity => 3) IS NULL AS refused;
SELECT count(*) AS declared FROM lease.capacities WHERE resource = 'sem:2';
COMMIT;
SELECT lease_release('sem:2', :sem2w);
-- a permit of a resource with no declared capacity and none stated
SELECT sqlstate, message FROM attempt($$SELECT lease_acquire('sem:none', 'w', mode => 'permit')$$);
-- ... which a claim skips
SELECT resource FROM lease_acquire_any(ARRAY['sem:none', 'sem:some'], 'w', mode => 'permit');
SELECT lease_set_capacity('sem:some', 2);
SELECT resource FROM lease_acquire_any(ARRAY['sem:none', 'sem:some'], 'w', mode => 'permit');

-- lease_fence needs the exclusive lease: a shared token does not pass it
CREATE TABLE protected_rw (resource text, token bigint);
CREATE TRIGGER fence BEFORE INSERT OR UPDATE OR DELETE ON protected_rw
    FOR EACH ROW EXECUTE FUNCTION lease_fence('resource', 'token');
SELECT lease_acquire('rw:3', 'reader', mode => 'shared') AS rs \gset
SELECT sqlstate, message = format('row change on table "protected_rw" rejected: lease on resource "rw:3" is not held with token %s', :rs) AS rejected
FROM attempt(format($$INSERT INTO protected_rw VALUES ('rw:3', %s) RETURNING 'x'$$, :rs));
SELECT lease_release('rw:3', :rs);
SELECT lease_acquire('rw:3', 'writer') AS ws \gset
INSERT INTO protected_rw VALUES ('rw:3', :ws);
DROP TABLE protected_rw;

-- lease_force_release ends every holder
SELECT lease_acquire('rw:4', 'a', mode => 'shared') IS NOT NULL AS a, lease_acquire('rw:4', 'b', mode => 'shared') IS NOT NULL AS b;
SELECT lease_force_release('rw:4') AS revoked;
SELECT count(*) AS left FROM lease_info('rw:4');

-- lease_acquire_any takes shared leases and permits too
SELECT lease_acquire('any:rw', 'writer') IS NOT NULL AS writer;
SELECT resource FROM lease_acquire_any(ARRAY['any:rw', 'any:r1', 'any:r2'], 'reader', max_count => 2, mode => 'shared');
SELECT resource FROM lease_acquire_any(ARRAY['any:s1', 'any:s2'], 'worker', max_count => 2, capacity => 1);
SELECT count(*) AS more FROM lease_acquire_any(ARRAY['any:s1', 'any:s2'], 'other', max_count => 2, capacity => 1);

-- bad input: a specific SQLSTATE, and nothing changed (not even a token number)
SELECT lease_acquire('modes:probe', 'h') AS probe_before \gset
SELECT lease_release('modes:probe', :probe_before);
SELECT count(*) AS rows_before FROM lease.leases \gset
SELECT call, r.sqlstate, r.message
FROM (VALUES
    ($$SELECT lease_acquire('m:1', 'h', mode => NULL)$$),
    ($$SELECT lease_acquire('m:1', 'h', mode => 'read')$$),
    ($$SELECT lease_acquire('m:1', 'h', mode => 'shared', capacity => 2)$$),
    ($$SELECT lease_acquire('m:1', 'h', capacity => 0)$$),
    ($$SELECT lease_acquire('m:1', 'h', mode => 'permit', capacity => -1)$$),
    ($$SELECT count(*) FROM lease_acquire_any(ARRAY['m:1'], 'h', mode => 'exclusive ')$$),
    ($$SELECT lease_set_capacity('m:1', 0)$$),
    ($$SELECT lease_set_capacity(NULL, 2)$$)
) AS c(call), LATERAL public.attempt(c.call) AS r;
SELECT count(*) = :rows_before AS nothing_written FROM lease.leases;
SELECT lease_acquire('modes:probe', 'h') = :probe_before + 1 AS no_token_used;
-- lease_set_capacity is not for everyone
SET ROLE lease_alice;
SELECT sqlstate FROM attempt($$SELECT lease_set_capacity('m:1', 2)$$);
RESET ROLE;
DELETE FROM lease.leases WHERE resource LIKE ANY (ARRAY['rw:%', 'sem:%', 'any:%', 'modes:%']);
DELETE FROM lease.capacities;
