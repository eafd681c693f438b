-- After each completion (both queues): a claimed job whose completion the fence refused is logged.
\if :ok = 0 and :i <= :n
INSERT INTO queue_misses (kind, jobs, worker) VALUES ('refused', 1, :client_id);
\endif
