-- One cycle with the extension: acquire a random resource, release it.
\set r random(1, 100000)
SELECT coalesce(lease_acquire('bench:' || :r, 'client-' || :client_id, '30 s'), 0) AS token \gset
\if :token > 0
SELECT lease_release('bench:' || :r, :token);
\endif
