-- Every rejected input: its SQLSTATE and message, and proof that nothing changed (not even a
-- token number: tokens are not transactional, so the next grant gets the very next number).
SELECT lease_acquire('held', 'owner', '1 hour') AS token \gset
SELECT count(*) AS rows_before FROM lease.leases \gset
SELECT call, r.sqlstate, r.message
FROM (VALUES
    ($$SELECT lease_acquire(NULL, 'h')$$),
    ($$SELECT lease_acquire('r', NULL)$$),
    ($$SELECT lease_acquire('', 'h')$$),
    ($$SELECT lease_acquire(E' \t\n', 'h')$$),
    ($$SELECT lease_acquire('r', '')$$),
    ($$SELECT lease_acquire('r', '   ')$$),
    ($$SELECT lease_acquire(repeat('x', 513), 'h')$$),
    ($$SELECT lease_acquire(repeat('é', 257), 'h')$$),
    ($$SELECT lease_acquire('r', repeat('x', 257))$$),
    ($$SELECT lease_acquire('r', 'h', '0 seconds')$$),
    ($$SELECT lease_acquire('r', 'h', '-1 second')$$),
    ($$SELECT lease_acquire('r', 'h', '1 day -25 hours')$$),
    ($$SELECT lease_acquire('r', 'h', '1 day 1 microsecond')$$),
    ($$SELECT lease_acquire('r', 'h', '1 month')$$),
    ($$SELECT lease_acquire('r', 'h', '178000000 years')$$),
    ($$SELECT lease_acquire('r', 'h', 'infinity')$$),
    ($$SELECT lease_acquire('r', 'h', '1 minute', '-1 second')$$),
    ($$SELECT lease_renew(NULL, 1)$$),
    ($$SELECT lease_renew('held', NULL)$$),
    ($$SELECT lease_renew('held', 0)$$),
    ($$SELECT lease_renew('held', -5)$$),
    ($$SELECT lease_renew('', 1)$$),
    ($$SELECT lease_renew('held', 1, '0 s')$$),
    ($$SELECT lease_renew('held', 1, '2 days')$$),
    ($$SELECT lease_release(NULL, 1)$$),
    ($$SELECT lease_release('held', NULL)$$),
    ($$SELECT lease_release(' ', 1)$$),
    ($$SELECT lease_release('held', -1)$$),
    ($$SELECT lease_check(NULL, 1)$$),
    ($$SELECT lease_check('held', NULL)$$),
    ($$SELECT lease_check(repeat('x', 600), 1)$$),
    ($$SELECT lease_assert(NULL, 1)$$),
    ($$SELECT lease_assert('held', 0)$$),
    ($$SELECT lease_info(NULL)$$),
    ($$SELECT lease_info('')$$),
    ($$SELECT lease_info(repeat('x', 513))$$)
) AS calls(call), LATERAL attempt(call) AS r;
SELECT lease_acquire('probe', 'h', '1 hour') AS probe_token \gset
SELECT :probe_token = :token + 1 AS no_token_used, lease_release('probe', :probe_token) AS released;
-- the largest valid names are accepted
SELECT lease_acquire(repeat('r', 512), repeat('h', 256), '1 second') IS NOT NULL AS largest_names_ok;
SELECT lease_release(repeat('r', 512), token) FROM lease_info(repeat('r', 512));
-- the rejected calls above changed nothing
SELECT lease_acquire('held', 'owner', '1 hour') = :token AS held_lease_intact;
SELECT count(*) = :rows_before AS same_rows FROM lease.leases;
-- an unknown lease.* setting is an error, not a silent placeholder
SET lease.defualt_ttl = '5s';
-- the default ttl must be within the maximum
SET lease.default_ttl = '2d';
SELECT lease_acquire('r', 'h');
RESET lease.default_ttl;
SELECT lease_release('held', :token);
