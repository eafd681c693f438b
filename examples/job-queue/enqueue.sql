-- Enqueue a job (no lease needed). psql -v payload='resize image 7' -f enqueue.sql
INSERT INTO jobs (payload) VALUES (:'payload') RETURNING id;
