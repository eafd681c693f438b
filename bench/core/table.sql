-- One cycle with a hand-written lease table: upsert that takes over only expired rows, then
-- an update that ends the lease.
\set r random(1, 100000)
WITH granted AS (
    INSERT INTO bench_leases AS l (resource, holder, token, expires_at)
    VALUES ('bench:' || :r, 'client-' || :client_id, nextval('bench_tokens'), clock_timestamp() + interval '30 s')
    ON CONFLICT (resource) DO UPDATE
        SET holder = excluded.holder, token = excluded.token, expires_at = excluded.expires_at
        WHERE l.expires_at <= clock_timestamp()
    RETURNING token
)
SELECT coalesce((SELECT token FROM granted), 0) AS token \gset
\if :token > 0
UPDATE bench_leases SET expires_at = clock_timestamp()
WHERE resource = 'bench:' || :r AND token = :token AND expires_at > clock_timestamp();
\endif
