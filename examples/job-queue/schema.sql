-- A job queue on one table: a job is claimed by taking the lease 'job:<id>', and every change
-- of a claimed job must state the token of that lease (the jobs_fence trigger).
-- Run once: psql -f examples/job-queue/schema.sql
CREATE TABLE IF NOT EXISTS jobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload     text NOT NULL,
    state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done')),
    worker      text,            -- who runs (or ran) it
    lease_token bigint,          -- the token of the lease its last change was made under
    attempts    integer NOT NULL DEFAULT 0,
    result      text,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at  timestamptz,
    done_at     timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (id) WHERE state <> 'done';

-- Every UPDATE of a job that sets lease_token passes only while that token holds the lease
-- 'job:' || id. A DELETE (or an UPDATE that does not set lease_token) states no token: it passes
-- only if the same transaction proved first that it holds the lease (lease_assert, see
-- discard.sql). INSERT is not fenced: anyone may enqueue.
CREATE OR REPLACE TRIGGER jobs_fence BEFORE UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'lease_token', 'job:');
