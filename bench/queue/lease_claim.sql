-- Lease queue, claim: one call of queue_claim (setup.sql), which takes the leases and returns
-- the granted jobs that are still ready.
SELECT ids, tokens, payloads, n, stale FROM queue_claim(:client_id, :ttl::interval) \gset
\if :stale > 0
INSERT INTO queue_misses (kind, jobs, worker) VALUES ('stale', :stale, :client_id);
\endif
