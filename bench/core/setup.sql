-- Objects for the core benchmark. The hand-written baseline is what an application would
-- write without the extension: the same table shape (primary key on the resource, index on
-- the expiry), a token sequence, the server clock, one upsert to acquire, one update to release.
CREATE EXTENSION IF NOT EXISTS lease;
DROP TABLE IF EXISTS bench_leases;
DROP SEQUENCE IF EXISTS bench_tokens;
CREATE TABLE bench_leases (
    resource   text COLLATE "C" PRIMARY KEY,
    holder     text NOT NULL,
    token      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX ON bench_leases (expires_at);
CREATE SEQUENCE bench_tokens;
