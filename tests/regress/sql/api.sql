-- The contract of each function, with exact results. Tokens are printed: the extension was
-- just created, so the sequence starts at 1. A refused acquire uses up no token number (but a
-- rolled-back grant does: tokens increase, they are not always consecutive).
SELECT lease_acquire('job:1', 'worker-a', '1 minute') AS token;
-- a second holder is refused
SELECT lease_acquire('job:1', 'worker-b', '1 minute') AS refused;
-- the same holder retrying gets the same token back, and a later expiry
SELECT expires_at AS first_expiry FROM lease.leases WHERE resource = 'job:1' \gset
SELECT lease_acquire('job:1', 'worker-a', '2 minutes') AS same_token;
SELECT expires_at > :'first_expiry' AS extended FROM lease.leases WHERE resource = 'job:1';
-- inspection
SELECT resource, holder, token, owner, acquired_at <= renewed_at AS ordered,
       expires_at - renewed_at AS ttl
FROM lease_info('job:1');
SELECT count(*) AS rows_for_free_resource FROM lease_info('job:free');
-- fences
SELECT lease_check('job:1', 1) AS holder_passes, lease_check('job:1', 2) AS other_token_fails,
       lease_check('job:free', 1) AS free_resource_fails;
SELECT lease_assert('job:1', 1);
SELECT lease_assert('job:1', 2);
-- renew: true while held with the right token; sets expires_at = now + ttl
SELECT lease_renew('job:1', 1, '10 minutes') AS renewed, lease_renew('job:1', 2) AS wrong_token;
SELECT expires_at - renewed_at AS ttl FROM lease.leases WHERE resource = 'job:1';
-- release: true once, then false; the resource is free again
SELECT lease_release('job:1', 2) AS wrong_token, lease_release('job:1', 1) AS released,
       lease_release('job:1', 1) AS again;
SELECT count(*) AS rows_after_release FROM lease.leases WHERE resource = 'job:1';
SELECT lease_acquire('job:1', 'worker-b') AS next_token;
SELECT holder, token, expires_at - acquired_at AS default_ttl FROM lease_info('job:1');
-- expiry needs no worker: an expired lease is free, and the old token is dead for good
SELECT lease_acquire('job:2', 'worker-a', '1 millisecond') AS short_token \gset
SELECT :short_token AS short_token;
SELECT pg_sleep(0.01);
SELECT count(*) AS info_rows_after_expiry FROM lease_info('job:2');
SELECT lease_renew('job:2', :short_token) AS renew_expired,
       lease_release('job:2', :short_token) AS release_expired,
       lease_check('job:2', :short_token) AS check_expired;
SELECT lease_acquire('job:2', 'worker-b', '1 minute') AS takeover_token;
SELECT holder, token FROM lease_info('job:2');
-- tokens are never reused, whatever the resource
SELECT lease_acquire('job:3', 'worker-c') > max(token) AS larger_than_all_before FROM lease.leases;
-- ttl counts a day as 24 hours and a month as 30 days; the limit is lease.max_ttl
SELECT lease_acquire('job:4', 'w', '1 day') IS NOT NULL AS one_day_is_allowed;
SELECT lease_release('job:4', token) FROM lease_info('job:4');
SELECT lease_acquire('job:4', 'w', '23 hours 60 minutes') IS NOT NULL AS same_length_allowed;
-- the table keeps one row per lease, and nothing else
SELECT resource, holder FROM lease.leases ORDER BY resource;
SELECT lease_release(resource, token) FROM lease.leases ORDER BY resource;
