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
-- ShedLock's PostgreSQL schema, as its users create it: the name is the key, rows stay forever,
-- the expiry is not indexed, so a cycle is two updates in place (HOT).
DROP TABLE IF EXISTS shedlock;
CREATE TABLE shedlock (
    name       text PRIMARY KEY,
    lock_until timestamptz NOT NULL,
    locked_at  timestamptz NOT NULL,
    locked_by  text NOT NULL
);
-- Every name has its row from the start, as in a deployment that has run each job before.
INSERT INTO shedlock SELECT 'bench:' || i, '-infinity', '-infinity', 'none' FROM generate_series(1, 100000) AS i;
VACUUM ANALYZE shedlock;
-- The same with the expiry indexed (bench/core/cost.sh only): what updating kept rows in place
-- would cost a table whose expiries must be found.
DROP TABLE IF EXISTS shedlock_indexed;
CREATE TABLE shedlock_indexed (LIKE shedlock INCLUDING ALL);
CREATE INDEX ON shedlock_indexed (lock_until);
INSERT INTO shedlock_indexed SELECT * FROM shedlock;
VACUUM ANALYZE shedlock_indexed;
