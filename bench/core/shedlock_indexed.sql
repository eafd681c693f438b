-- ShedLock's cycle on its schema with the expiry indexed (bench/core/setup.sql's
-- shedlock_indexed), as an expiry worker would need to find what expired: the same statements,
-- but each update changes an indexed column, so none is in place (HOT). Used by
-- bench/core/cost.sh only, to show what keeping rows and updating them would cost a lease table
-- that must find expiries.
\set r random(1, 100000)
WITH taken AS (
    INSERT INTO shedlock_indexed AS s (name, lock_until, locked_at, locked_by)
    VALUES ('bench:' || :r, clock_timestamp() + interval '30 s', clock_timestamp(), 'client-' || :client_id)
    ON CONFLICT (name) DO UPDATE
        SET lock_until = excluded.lock_until, locked_at = excluded.locked_at, locked_by = excluded.locked_by
        WHERE s.lock_until <= clock_timestamp()
    RETURNING 1
)
SELECT count(*) AS taken FROM taken \gset
\if :taken > 0
UPDATE shedlock_indexed SET lock_until = clock_timestamp()
WHERE name = 'bench:' || :r AND locked_by = 'client-' || :client_id;
\endif
