-- After a batch's completion (both queues): the claimed jobs whose completion the fence refused.
\if :ok < :n
\set missed :n - :ok
INSERT INTO queue_misses (kind, jobs, worker) VALUES ('refused', :missed, :client_id);
\endif
