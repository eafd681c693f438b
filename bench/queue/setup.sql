-- Objects for the queue benchmark (bench/queue/run.sh). Both queues use this one jobs table:
-- the lease queue leaves locked_by/locked_until empty (its claims live in lease.leases), the
-- SKIP LOCKED queue claims by writing them. A completion adds 1 to `completions` without
-- looking at `state`, so a job completed twice shows as completions = 2: the only thing that
-- stops a second completion is each queue's fence.
CREATE EXTENSION IF NOT EXISTS lease;
ALTER SYSTEM RESET lease.notify;   -- events on, the default
SELECT pg_reload_conf();
DROP TABLE IF EXISTS queue_jobs, queue_misses;
CREATE TABLE queue_jobs (
    id           bigint PRIMARY KEY,
    payload      text NOT NULL,
    state        text NOT NULL DEFAULT 'ready',   -- 'ready' or 'done'
    locked_by    integer,                         -- SKIP LOCKED queue: the claiming worker
    locked_until timestamptz,                     -- SKIP LOCKED queue: end of the claim
    completed_by integer,
    completed_at timestamptz,
    completions  integer NOT NULL DEFAULT 0
);
CREATE INDEX queue_jobs_ready ON queue_jobs (id) WHERE state = 'ready';
-- Claimed jobs a worker could not complete, logged by the workers: 'refused' (the fence
-- refused the completion: the claim had ended) and 'stale' (granted, but already done: never,
-- since the lease queue claims with snapshot_consistent).
CREATE TABLE queue_misses (
    kind   text NOT NULL,
    jobs   integer NOT NULL,
    worker integer NOT NULL
);
