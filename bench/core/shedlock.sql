-- One cycle with ShedLock's schema and statements (its PostgreSQL provider with the database's
-- clock): an upsert that takes the row only once its lock_until has passed, then an update that
-- ends the lock by setting lock_until to now. No token, no events, no waiting.
\set r random(1, 100000)
WITH taken AS (
    INSERT INTO shedlock AS s (name, lock_until, locked_at, locked_by)
    VALUES ('bench:' || :r, clock_timestamp() + interval '30 s', clock_timestamp(), 'client-' || :client_id)
    ON CONFLICT (name) DO UPDATE
        SET lock_until = excluded.lock_until, locked_at = excluded.locked_at, locked_by = excluded.locked_by
        WHERE s.lock_until <= clock_timestamp()
    RETURNING 1
)
SELECT count(*) AS taken FROM taken \gset
\if :taken > 0
UPDATE shedlock SET lock_until = clock_timestamp()
WHERE name = 'bench:' || :r AND locked_by = 'client-' || :client_id;
\endif
