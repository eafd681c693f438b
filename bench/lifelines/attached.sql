-- One cycle with a lease attached to the client's lifeline (no ttl of its own): acquire a random
-- resource, release it. Client N uses the lifeline lifeline_base + N (attached.sh opens one per
-- client, with consecutive ids, and passes lifeline_base with -D).
\set r random(1, 100000)
\set lifeline :lifeline_base + :client_id
SELECT coalesce(lease_acquire('bench:' || :r, 'client-' || :client_id, lifeline => :lifeline), 0) AS token \gset
\if :token > 0
SELECT lease_release('bench:' || :r, :token);
\endif
