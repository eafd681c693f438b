-- One cycle with a plain lease (its own ttl): acquire a random resource, release it. The same
-- cycle as bench/core/lease.sql.
\set r random(1, 100000)
SELECT coalesce(lease_acquire('bench:' || :r, 'client-' || :client_id, '30 s'), 0) AS token \gset
\if :token > 0
SELECT lease_release('bench:' || :r, :token);
\endif
