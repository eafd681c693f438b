-- The table the worker writes its progress to, one row per resource, every write fenced by
-- the lease's token. Run once: psql -f examples/rust-worker/schema.sql
CREATE TABLE IF NOT EXISTS rust_worker_progress (
    resource   text PRIMARY KEY,
    token      bigint NOT NULL,
    step       integer NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
