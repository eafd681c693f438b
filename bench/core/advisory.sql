-- One cycle with PostgreSQL's in-memory advisory locks: the ceiling, with no expiry, no
-- token and nothing that survives a crash.
\set r random(1, 100000)
SELECT pg_advisory_lock(:r);
SELECT pg_advisory_unlock(:r);
