-- Keep a claimed job's lease alive; run every third of the ttl while working on it.
-- false: the lease is gone (expired, revoked, taken over): stop working on the job.
--   psql -v id=7 -v token=1017 -v ttl='30 s' -f heartbeat.sql
SELECT lease_renew('job:' || :id, :token, :'ttl') AS still_mine;
