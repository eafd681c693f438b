-- Lifelines: one expiry that many leases share. Tokens and ids come from one sequence, so they
-- are shown relative to the lifeline's id, and ids in messages as N.
CREATE FUNCTION pg_temp.wait_until_lapsed(lifeline bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WHILE clock_timestamp() <= (SELECT expires_at FROM lease.lifelines WHERE id = lifeline) LOOP
        PERFORM pg_sleep(0.001);
    END LOOP;
END $$;
CREATE FUNCTION pg_temp.attempt(statement text) RETURNS TABLE(sqlstate text, message text)
LANGUAGE sql AS $$ SELECT a.sqlstate, regexp_replace(a.message, '\d+', 'N', 'g') FROM public.attempt(statement) AS a $$;
SELECT lease_lifeline_open('worker-7', '1 minute') AS l \gset
SELECT name, owner, ttl, expires_at - opened_at AS lifetime, session_bound, leases
FROM lease.live_lifelines WHERE id = :l;
-- leases attached to it have no expiry of their own: they show the lifeline's
SELECT lease_acquire('lf:1', 'worker-7', lifeline => :l) - :l AS t1,
       lease_acquire('lf:2', 'worker-7', lifeline => :l, data => '{"job": 2}') - :l AS t2;
SELECT resource FROM lease_acquire_any(ARRAY['lf:2', 'lf:3', 'lf:4'], 'worker-7', max_count => 2, lifeline => :l);
SELECT l.resource, l.token - :l AS token, l.lifeline = :l AS attached, l.data,
       l.expires_at = f.expires_at AS lifeline_expiry
FROM lease.active AS l JOIN lease.lifelines AS f ON f.id = l.lifeline ORDER BY 1;
SELECT expires_at AS row_expiry FROM lease.leases WHERE resource = 'lf:1';
SELECT leases FROM lease.live_lifelines WHERE id = :l;
-- another holder is refused; the holder's re-acquire keeps the token
SELECT lease_acquire('lf:1', 'worker-8') AS refused,
       lease_acquire('lf:1', 'worker-7', lifeline => :l) - :l AS same_token;
-- renewing an attached lease changes nothing and says it holds
SELECT lease_renew('lf:1', :l + 1, '1 second') AS renewed;
SELECT expires_at AS row_expiry FROM lease.leases WHERE resource = 'lf:1';
-- one renewal moves every attached lease, and rewrites no lease row
SELECT xmin AS lease_xmin FROM lease.leases WHERE resource = 'lf:1' \gset
SELECT lease_lifeline_renew(:l, '2 minutes') - now() > '119 seconds' AS renewed_for_two_minutes;
SELECT count(*) FILTER (WHERE expires_at - now() > '119 seconds') AS moved FROM lease.active WHERE lifeline = :l;
SELECT xmin = :'lease_xmin' AS lease_row_untouched FROM lease.leases WHERE resource = 'lf:1';
-- a renewal without a ttl uses the lifeline's own
SELECT lease_lifeline_renew(:l) - now() BETWEEN '59 seconds' AND '61 seconds' AS own_ttl;
-- fences work as for any lease
SELECT lease_check('lf:1', :l + 1) AS holds, lease_check('lf:1', :l + 2) AS wrong_token;
-- a lease can leave the lifeline: re-acquired without one, it gets a ttl of its own
SELECT lease_acquire('lf:3', 'worker-7', '5 minutes') - :l AS own_ttl_token;
SELECT lifeline IS NULL AS detached, expires_at - now() > '4 minutes' AS own_expiry FROM lease_info('lf:3');
-- closing releases what is still attached, and ends the lifeline
SELECT lease_release('lf:2', :l + 2) AS released_one;
SELECT lease_lifeline_close(:l) AS released;
SELECT resource FROM lease.active WHERE resource LIKE 'lf:%' ORDER BY 1;
SELECT count(*) AS lifelines FROM lease.lifelines;
SELECT sqlstate, message FROM pg_temp.attempt(format('SELECT lease_lifeline_renew(%s)', :l));
SELECT sqlstate, message FROM pg_temp.attempt(format('SELECT lease_lifeline_close(%s)', :l));
SELECT sqlstate, message FROM pg_temp.attempt(format($$SELECT lease_acquire('lf:9', 'w', lifeline => %s)$$, :l));
-- a lapsed lifeline ends its leases at once: the token no longer holds, another holder takes over
SELECT lease_lifeline_open('short', '100 milliseconds') AS s \gset
SELECT lease_acquire('lf:5', 'worker-9', lifeline => :s) AS t5 \gset
SELECT pg_temp.wait_until_lapsed(:s);
SELECT lease_check('lf:5', :t5) AS still_holds;
SELECT count(*) AS info_rows FROM lease_info('lf:5');
SELECT lease_acquire('lf:5', 'worker-10', '1 minute') > :t5 AS taken_over;
SELECT lease_renew('lf:5', :t5) AS renew_old, lease_release('lf:5', :t5) AS release_old;
SELECT sqlstate, message FROM pg_temp.attempt(format('SELECT lease_lifeline_renew(%s)', :s));
-- the sweep removes a lapsed lifeline's other leases, then the lifeline
SELECT lease_lifeline_open('short', '100 milliseconds') AS s2 \gset
SELECT lease_acquire('lf:6', 'worker-9', lifeline => :s2) IS NOT NULL AS attached;
SELECT pg_temp.wait_until_lapsed(:s2);
SELECT lease_sweep() AS swept;
SELECT count(*) AS lifeline_rows FROM lease.lifelines WHERE id = :s2;
SELECT count(*) AS lease_rows FROM lease.leases WHERE resource = 'lf:6';
-- everything lifelines do is undone with the transaction or the savepoint that did it
BEGIN;
SELECT lease_lifeline_open('rolled-back') AS r \gset
SELECT lease_acquire('lf:7', 'w', lifeline => :r) IS NOT NULL AS attached;
ROLLBACK;
SELECT count(*) AS after_rollback FROM lease.lifelines WHERE id = :r;
SELECT lease_lifeline_open('kept', '1 minute') AS k \gset
SELECT lease_acquire('lf:8', 'w', lifeline => :k) IS NOT NULL AS attached;
BEGIN;
SAVEPOINT s;
SELECT lease_lifeline_close(:k) AS closed;
ROLLBACK TO SAVEPOINT s;
SELECT lease_lifeline_renew(:k) > now() AS renewed_after_rollback;
COMMIT;
SELECT resource, lifeline = :k AS attached FROM lease.active WHERE resource = 'lf:8';
SELECT lease_lifeline_close(:k) AS closed;
-- only members of the role that opened a lifeline may renew, close or attach to it
SET ROLE lease_alice;
SELECT lease_lifeline_open('alice') AS a \gset
SELECT lease_acquire('lf:alice', 'alice', lifeline => :a) IS NOT NULL AS attached;
SET ROLE lease_bob;
SELECT sqlstate, message FROM pg_temp.attempt(format('SELECT lease_lifeline_renew(%s)', :a));
SELECT sqlstate, message FROM pg_temp.attempt(format('SELECT lease_lifeline_close(%s)', :a));
SELECT sqlstate, message FROM pg_temp.attempt(format($$SELECT lease_acquire('lf:bob', 'bob', lifeline => %s)$$, :a));
SELECT count(*) AS bob_sees FROM lease.live_lifelines;
RESET ROLE;
SELECT name, owner, leases FROM lease.live_lifelines WHERE id = :a;
SELECT lease_lifeline_close(:a) AS closed;
-- bad input gets a specific SQLSTATE and changes nothing
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_open(NULL)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_open(' ')$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_open('x', '0 s')$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_open('x', '2 days')$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_renew(NULL)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_renew(0)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_renew(123456789, '-1 s')$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_close(-3)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_lifeline_close(123456789)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_acquire('lf:x', 'w', '1 minute', lifeline => 123456789)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_acquire('lf:x', 'w', session_bound => true, lifeline => 123456789)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_acquire('lf:x', 'w', lifeline => 123456789)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT lease_acquire('lf:x', 'w', lifeline => -1)$$);
SELECT sqlstate, message FROM pg_temp.attempt($$SELECT count(*) FROM lease_acquire_any(ARRAY['lf:x'], 'w', lifeline => 123456789)$$);
SELECT count(*) AS lifelines_left, (SELECT count(*) FROM lease.leases WHERE resource LIKE 'lf:x%') AS leases_left
FROM lease.lifelines;
-- leave the table as the next file expects it
DELETE FROM lease.leases WHERE resource LIKE 'lf:%';
