-- lease_fence: a BEFORE ROW trigger that lets a row change through only while the row's token
-- holds the lease named by prefix || resource column. Token numbers in messages are masked.
CREATE FUNCTION fence_attempt(statement text) RETURNS TABLE(sqlstate text, message text)
LANGUAGE sql AS $$ SELECT sqlstate, regexp_replace(message, 'token \d+', 'token N') FROM attempt(statement) $$;
GRANT EXECUTE ON FUNCTION fence_attempt(text) TO PUBLIC;
CREATE TABLE fenced_jobs (id bigint PRIMARY KEY, state text NOT NULL, lease_token bigint);
INSERT INTO fenced_jobs VALUES (1, 'queued', NULL), (2, 'queued', NULL);
CREATE TRIGGER fenced_jobs_fence BEFORE UPDATE OR DELETE ON fenced_jobs
FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'lease_token', 'job:');
GRANT SELECT, INSERT, UPDATE, DELETE ON fenced_jobs TO lease_alice;
SET ROLE lease_alice;
SELECT lease_acquire('job:1', 'worker-a', '1 hour') AS token_1 \gset
-- the holder's write, stating its token, passes
UPDATE fenced_jobs SET state = 'running', lease_token = :token_1 WHERE id = 1;
-- a write without a token, or with a token that holds nothing, is rejected
SELECT * FROM fence_attempt($$UPDATE fenced_jobs SET state = 'stolen' WHERE id = 2$$);
SELECT * FROM fence_attempt($$UPDATE fenced_jobs SET state = 'stolen', lease_token = 999999 WHERE id = 2$$);
-- a row may not move from one lease to another
SELECT * FROM fence_attempt($$UPDATE fenced_jobs SET id = 3 WHERE id = 1$$);
-- after the lease expires and another worker takes it over, the stale worker's write is rejected
SELECT lease_release('job:1', :token_1) AS released;
SELECT lease_acquire('job:1', 'worker-b', '1 hour') AS token_b \gset
SELECT * FROM fence_attempt($$UPDATE fenced_jobs SET state = 'done', lease_token = $$ || :token_1 || $$ WHERE id = 1$$);
-- the new holder's write passes, and a DELETE is checked against the old row
UPDATE fenced_jobs SET state = 'done', lease_token = :token_b WHERE id = 1;
SELECT lease_release('job:1', :token_b) AS released;
SELECT * FROM fence_attempt($$DELETE FROM fenced_jobs WHERE id = 1$$);
RESET ROLE;
SELECT id, state, lease_token = :token_b AS written_by_b FROM fenced_jobs ORDER BY id;
-- a passed row change is a fence: the takeover of the expired lease waits for this transaction
-- (shown in the isolation specs); here, a failed one leaves no lock behind
SELECT count(*) AS barrier_locks FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 19525
  AND pid = pg_backend_pid();
-- DELETE, and UPDATE that leaves the token column out of its SET list, carry no token of the
-- writer's: the token stored in the row only says that someone holds the lease. They pass only
-- when the same transaction proved earlier that it holds the row's lease.
SET ROLE lease_alice;
SELECT lease_acquire('job:2', 'worker-a', '1 hour') AS token_2 \gset
UPDATE fenced_jobs SET state = 'running', lease_token = :token_2 WHERE id = 2;
SELECT * FROM fence_attempt($$UPDATE fenced_jobs SET state = 'paused' WHERE id = 2$$);
SELECT * FROM fence_attempt($$DELETE FROM fenced_jobs WHERE id = 2$$);
BEGIN;
SELECT lease_assert('job:2', :token_2);
UPDATE fenced_jobs SET state = 'paused' WHERE id = 2;
SAVEPOINT before_check;
SELECT lease_check('job:2', :token_2) AS checked_again;
ROLLBACK TO SAVEPOINT before_check;
-- the proof made before the savepoint stands
UPDATE fenced_jobs SET state = 'running' WHERE id = 2;
COMMIT;
-- a proof rolled back with its savepoint is gone
BEGIN;
SAVEPOINT s;
SELECT lease_check('job:2', :token_2) AS checked;
ROLLBACK TO SAVEPOINT s;
SELECT * FROM fence_attempt($$DELETE FROM fenced_jobs WHERE id = 2$$);
COMMIT;
-- a stale holder cannot delete the new holder's job: its token no longer proves anything, and
-- the new holder's token in the row is not its own
SELECT lease_release('job:2', :token_2) AS released;
SELECT lease_acquire('job:2', 'worker-b', '1 hour') AS token_2b \gset
UPDATE fenced_jobs SET state = 'running', lease_token = :token_2b WHERE id = 2;
BEGIN;
SELECT lease_check('job:2', :token_2) AS stale_check;
SELECT * FROM fence_attempt($$DELETE FROM fenced_jobs WHERE id = 2$$);
COMMIT;
-- the holder deletes after fencing in the same transaction; a release is a proof too
BEGIN;
SELECT lease_release('job:2', :token_2b) AS released;
DELETE FROM fenced_jobs WHERE id = 2;
COMMIT;
RESET ROLE;
SELECT id, state FROM fenced_jobs ORDER BY id;
-- INSERT is fenced when the trigger covers it
CREATE TRIGGER fenced_jobs_fence_insert BEFORE INSERT ON fenced_jobs
FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'lease_token', 'job:');
SELECT lease_acquire('job:5', 'worker-a', '1 hour') AS token_5 \gset
INSERT INTO fenced_jobs VALUES (5, 'new', :token_5);
SELECT * FROM fence_attempt($$INSERT INTO fenced_jobs VALUES (6, 'new', $$ || :token_5 || $$)$$);
-- misuse: each with its SQLSTATE
CREATE TABLE misfenced (id int, token bigint, label text);
INSERT INTO misfenced VALUES (1, 1, 'x');
CREATE TRIGGER t1 BEFORE UPDATE ON misfenced FOR EACH ROW EXECUTE FUNCTION lease_fence('nope', 'token');
SELECT * FROM fence_attempt($$UPDATE misfenced SET label = 'y'$$);
DROP TRIGGER t1 ON misfenced;
CREATE TRIGGER t1 BEFORE UPDATE ON misfenced FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'label');
SELECT * FROM fence_attempt($$UPDATE misfenced SET label = 'y'$$);
DROP TRIGGER t1 ON misfenced;
CREATE TRIGGER t1 BEFORE UPDATE ON misfenced FOR EACH ROW EXECUTE FUNCTION lease_fence('id');
SELECT * FROM fence_attempt($$UPDATE misfenced SET label = 'y'$$);
DROP TRIGGER t1 ON misfenced;
CREATE TRIGGER t1 BEFORE UPDATE ON misfenced FOR EACH STATEMENT EXECUTE FUNCTION lease_fence('id', 'token');
SELECT * FROM fence_attempt($$UPDATE misfenced SET label = 'y'$$);
DROP TRIGGER t1 ON misfenced;
CREATE TRIGGER t1 AFTER UPDATE ON misfenced FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'token');
SELECT * FROM fence_attempt($$UPDATE misfenced SET label = 'y'$$);
DROP TRIGGER t1 ON misfenced;
SELECT * FROM fence_attempt($$SELECT lease_fence()$$);
SELECT label FROM misfenced;
DROP TABLE misfenced, fenced_jobs;
DROP FUNCTION fence_attempt(text);
DELETE FROM lease.leases WHERE resource LIKE 'job:%';
