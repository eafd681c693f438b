-- A fresh queue of :jobs ready jobs, and no leases (psql variable jobs).
TRUNCATE queue_jobs, queue_misses, lease.leases;
INSERT INTO queue_jobs (id, payload) SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, :jobs) AS i;
VACUUM ANALYZE queue_jobs;
CHECKPOINT;
