-- lease_release_each: many releases in one call, each as lease_release would do it.
SELECT lease_acquire('each:a', 'worker', '1 hour') AS token_a \gset
SELECT lease_acquire('each:b', 'worker', '1 hour') AS token_b \gset
SELECT lease_acquire('each:c', 'other', '1 hour') AS token_c \gset
-- returns the resources it released, in the order given; a token that does not hold is left out
SELECT * FROM lease_release_each(ARRAY['each:b', 'each:c', 'each:a'], ARRAY[:token_b, :token_a, :token_a]);
SELECT resource, holder FROM lease.leases WHERE resource LIKE 'each:%' ORDER BY resource;
-- released once: a second call releases nothing; a name listed twice is released once
SELECT count(*) AS released_again FROM lease_release_each(ARRAY['each:a', 'each:b'], ARRAY[:token_a, :token_b]);
SELECT lease_acquire('each:d', 'worker', '1 hour') AS token_d \gset
SELECT * FROM lease_release_each(ARRAY['each:d', 'each:d'], ARRAY[:token_d, :token_d]);
-- a fence: what it returned stays with this transaction; rolled back, the leases are held again
BEGIN;
SELECT lease_acquire('each:g', 'worker', '1 hour') AS token_g \gset
COMMIT;
BEGIN;
SELECT * FROM lease_release_each(ARRAY['each:g'], ARRAY[:token_g]);
ROLLBACK;
SELECT holder, token = :token_g AS same_token FROM lease_info('each:g');
-- a shared lease and a permit are released by their own tokens too
SELECT lease_acquire('each:shared', 'reader', '1 hour', mode => 'shared') AS token_s \gset
SELECT lease_acquire('each:permits', 'user', '1 hour', capacity => 2) AS token_p \gset
SELECT * FROM lease_release_each(ARRAY['each:shared', 'each:permits', 'each:g'], ARRAY[:token_s, :token_p, :token_g]);
SELECT count(*) AS left_held FROM lease.leases WHERE resource LIKE 'each:%';
-- bad input: a clear error, and nothing released
SELECT lease_acquire('each:h', 'worker', '1 hour') AS token_h \gset
SELECT * FROM attempt($$SELECT count(*) FROM lease_release_each(ARRAY['each:h'], ARRAY[1, 2])$$);
SELECT * FROM attempt($$SELECT count(*) FROM lease_release_each(ARRAY['each:h', NULL], ARRAY[$$ || :token_h || $$, 1])$$);
SELECT * FROM attempt($$SELECT count(*) FROM lease_release_each(ARRAY['each:h', 'each:x'], ARRAY[$$ || :token_h || $$, NULL])$$);
SELECT * FROM attempt($$SELECT count(*) FROM lease_release_each(ARRAY['each:h', 'each:x'], ARRAY[$$ || :token_h || $$, 0])$$);
SELECT * FROM attempt($$SELECT count(*) FROM lease_release_each(NULL, ARRAY[1])$$);
SELECT * FROM attempt($$SELECT count(*) FROM lease_release_each(ARRAY['each:h'], NULL)$$);
SELECT * FROM attempt($$SELECT count(*) FROM lease_release_each(ARRAY['each:h', ' '], ARRAY[$$ || :token_h || $$, 1])$$);
SELECT holder FROM lease_info('each:h');
-- empty arrays release nothing
SELECT count(*) AS released FROM lease_release_each('{}', '{}');
SELECT lease_release('each:h', :token_h);
SELECT lease_release('each:c', :token_c) AS c_released;
SELECT count(*) AS left_behind FROM lease.leases WHERE resource LIKE 'each:%';
