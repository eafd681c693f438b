"""The programs in examples/ run against the test server and do what their READMEs promise:
the leader election (Python), the Rust worker, the psql administration script and the SQL job
queue. Part of scripts/test.sh's client layer; alone (with a server on LEASE_TEST_PORT):
    .venv/bin/pytest tests/client/test_examples.py"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from conftest import PG_BIN, PORT, DATABASE, connect, one, wait_for
from test_waiting import is_waiting

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def pg_environment(dbname=DATABASE):
    """The PG* variables the examples read when no --dsn is given."""
    return os.environ | {"PGHOST": "127.0.0.1", "PGPORT": str(PORT), "PGUSER": "postgres", "PGDATABASE": dbname}


def run_psql(script, dbname=DATABASE, *options):
    return subprocess.run(
        [f"{PG_BIN}/psql", "-X", "-v", "ON_ERROR_STOP=1", *options, "-f", str(script)],
        env=pg_environment(dbname), capture_output=True, text=True, timeout=60,
    )


def apply_schema(example, dbname=DATABASE):
    result = run_psql(EXAMPLES / example / "schema.sql", dbname, "-q")
    assert result.returncode == 0, result.stderr


class Program:
    """A child process whose output lines (stdout and stderr) are collected as they come."""

    def __init__(self, *command, env=None):
        self.process = subprocess.Popen(
            command, env=env or pg_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines = []
        self.name = None  # callers may name their programs
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def line(self, pattern, timeout=30.0):
        """Waits for an output line matching `pattern`; returns the match."""
        def found():
            return next((m for m in map(re.compile(pattern).fullmatch, list(self.lines)) if m), None)
        return wait_for(found, timeout, what=f"a line matching {pattern!r}; got {self.lines}")

    def signal(self, number):
        self.process.send_signal(number)

    def finish(self, timeout=30.0):
        """Waits for the process to exit; returns its status once all its output is read."""
        status = self.process.wait(timeout)
        self._reader.join(timeout)
        return status

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def programs():
    """Starts Programs and kills whatever is still running when the test ends."""
    started = []

    def start(*command, env=None):
        started.append(Program(*command, env=env))
        return started[-1]

    yield start
    for program in started:
        program.kill()


# --- examples/leader-election -------------------------------------------------------------

LEADER = str(EXAMPLES / "leader-election" / "leader.py")


@pytest.fixture
def terms(conn):
    conn.execute("DROP TABLE IF EXISTS leader_terms")
    apply_schema("leader-election")
    yield lambda resource: conn.execute(
        "SELECT token, candidate, started_at, last_seen_at FROM leader_terms WHERE resource = %s ORDER BY token",
        (resource,),
    ).fetchall()
    conn.execute("DROP TABLE leader_terms")


def assert_terms_never_overlap(rows):
    """Tokens increase from term to term, and each term's last fenced write precedes the next
    term's first (server clock)."""
    for earlier, later in zip(rows, rows[1:]):
        assert earlier[0] < later[0]
        assert earlier[3] < later[2], f"term {earlier} overlaps term {later}"


def start_candidate(programs, name, resource, ttl, *options):
    candidate = programs(sys.executable, LEADER, "--name", name, "--resource", resource, "--ttl", str(ttl), *options)
    candidate.name = name
    return candidate


def term_pattern(candidate, resource):
    return re.compile(rf"{candidate.name}: leading {re.escape(resource)} with token (\d+)")


def announced_term(candidate, resource):
    """The token of the first term the candidate announced, or None."""
    return next((int(m[1]) for m in map(term_pattern(candidate, resource).fullmatch, list(candidate.lines)) if m), None)


def leading(candidate, resource, timeout=30.0):
    """Waits for the candidate to announce its first term; returns its token."""
    return int(candidate.line(term_pattern(candidate, resource).pattern, timeout)[1])


@pytest.mark.parametrize("binding", ["ttl", "session-bound"])
def test_a_killed_leader_is_replaced_within_the_ttl(conn, programs, terms, binding):
    resource, ttl, margin = f"examples:leader:{binding}", 2.0, 2.0
    options = ["--session-bound"] if binding == "session-bound" else []
    candidates = {name: start_candidate(programs, name, resource, ttl, *options) for name in ("a", "b", "c")}
    for name, candidate in candidates.items():  # all running, connected, and handling SIGTERM
        candidate.line(rf"{name}: candidate for {re.escape(resource)}")
    first = wait_for(lambda: conn.execute("SELECT holder, token FROM lease_info(%s)", (resource,)).fetchone(),
                     what="a leader")
    leader = candidates[first[0].split("#")[0]]  # the client names each lease object NAME#N
    assert leading(leader, resource) == first[1]

    killed_at = time.monotonic()
    leader.signal(signal.SIGKILL)
    others = [c for c in candidates.values() if c is not leader]
    successor = wait_for(lambda: next((c for c in others if announced_term(c, resource)), None),
                         timeout=killed_at + ttl + margin - time.monotonic(), what="a new leader")
    assert leader.finish() == -signal.SIGKILL
    second = announced_term(successor, resource)
    assert second > first[1]
    holder, token = conn.execute("SELECT holder, token FROM lease_info(%s)", (resource,)).fetchone()
    assert (holder.split("#")[0], token) == (successor.name, second)

    # Shut down the follower first, then the leader: the leader releases as it exits.
    follower = next(c for c in others if c is not successor)
    for candidate in (follower, successor):
        candidate.signal(signal.SIGTERM)
        assert candidate.finish() == 0
    assert f"{successor.name}: released token {second}: True" in successor.lines
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0
    rows = terms(resource)
    assert [(token, name) for token, name, *_ in rows] == [(first[1], leader.name), (second, successor.name)]
    assert_terms_never_overlap(rows)


def test_a_leader_steps_down_the_moment_its_lease_is_revoked(conn, programs, terms):
    # ttl 60 s: the first renewal is 20 s away, so only the revoked event can stop it sooner.
    resource = "examples:leader:revoked"
    candidate = start_candidate(programs, "solo", resource, 60)
    token = leading(candidate, resource)
    assert one(conn, "SELECT lease_force_release(%s)", (resource,)) is True
    candidate.line(rf"solo: stopped leading \(token {token}\): revoked \(event\)", timeout=10)
    again = int(candidate.line(rf"solo: leading {re.escape(resource)} with token (?!{token}\b)(\d+)")[1])
    assert again > token
    candidate.signal(signal.SIGTERM)
    assert candidate.finish() == 0
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0
    rows = terms(resource)
    assert [row[0] for row in rows] == [token, again]
    assert_terms_never_overlap(rows)


# --- examples/rust-worker -----------------------------------------------------------------

EXIT_LEASE_LOST = 3


@pytest.fixture(scope="module")
def rust_worker():
    """Builds the worker once (target/examples, shared with CI's cache of target/)."""
    project = EXAMPLES / "rust-worker"
    env = os.environ | {"CARGO_TARGET_DIR": str(ROOT / "target" / "examples"),
                        "PATH": f"{Path.home() / '.cargo' / 'bin'}:{os.environ['PATH']}"}  # as scripts/common.sh
    build = subprocess.run(["cargo", "build", "--quiet"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, build.stderr
    return str(ROOT / "target" / "examples" / "debug" / "lease-rust-worker")


@pytest.fixture
def progress(conn):
    conn.execute("DROP TABLE IF EXISTS rust_worker_progress")
    apply_schema("rust-worker")
    yield lambda resource: conn.execute(
        "SELECT token, step FROM rust_worker_progress WHERE resource = %s", (resource,)).fetchone()
    conn.execute("DROP TABLE rust_worker_progress")


def steps_done(worker):
    return [int(m[1]) for m in map(re.compile(r"step (\d+)/\d+").fullmatch, worker.lines) if m]


def test_rust_worker_renews_while_it_works_and_releases(conn, programs, rust_worker, progress):
    # 4 steps of 500 ms with a 1 s ttl: the later fenced writes pass only because it renewed.
    resource = "examples:rust:complete"
    worker = programs(rust_worker, "--resource", resource, "--ttl-ms", "1000", "--steps", "4", "--step-ms", "500")
    assert worker.finish() == 0, worker.lines
    token = int(worker.line(rf"acquired {re.escape(resource)} token=(\d+) ttl_ms=1000")[1])
    assert f"renewed token={token}" in worker.lines
    assert steps_done(worker) == [1, 2, 3, 4]
    assert worker.lines[-1] == "done: 4 steps, released=true"
    assert progress(resource) == (token, 4)
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0


def test_rust_worker_cancels_its_work_when_the_lease_is_force_released(conn, programs, rust_worker, progress):
    resource = "examples:rust:revoked"
    worker = programs(rust_worker, "--dsn", f"host=127.0.0.1 port={PORT} user=postgres dbname={DATABASE}",
                      "--resource", resource, "--ttl-ms", "3000", "--steps", "1000", "--step-ms", "50")
    token = int(worker.line(rf"acquired {re.escape(resource)} token=(\d+) ttl_ms=3000")[1])
    worker.line(r"step 2/1000")
    assert one(conn, "SELECT lease_force_release(%s)", (resource,)) is True
    assert worker.finish() == EXIT_LEASE_LOST, worker.lines
    assert any(line.startswith("lease lost: ") for line in worker.lines)
    cancelled = int(worker.line(r"work cancelled at step (\d+)/1000")[1])
    done = steps_done(worker)
    assert done == list(range(1, cancelled))
    assert progress(resource) == (token, done[-1])


def test_a_paused_rust_worker_writes_nothing_after_a_takeover(conn, programs, rust_worker, progress):
    resource = "examples:rust:stolen"
    worker = programs(rust_worker, "--resource", resource, "--ttl-ms", "1000", "--steps", "1000", "--step-ms", "50")
    token = int(worker.line(rf"acquired {re.escape(resource)} token=(\d+) ttl_ms=1000")[1])
    worker.line(r"step 2/1000")
    worker.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0, what="the lease to expire")
        thief = one(conn, "SELECT lease_acquire(%s, 'thief', '1 min')", (resource,))
        assert thief > token
        written = conn.execute(
            "UPDATE rust_worker_progress SET token = %s, step = 0 WHERE resource = %s AND lease_check(resource, %s)",
            (thief, resource, thief)).rowcount
        assert written == 1
    finally:
        worker.signal(signal.SIGCONT)
    assert worker.finish() == EXIT_LEASE_LOST, worker.lines
    assert any(line.startswith("lease lost: ") for line in worker.lines)
    assert progress(resource) == (thief, 0)
    assert one(conn, "SELECT holder FROM lease_info(%s)", (resource,)) == "thief"
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, thief)) is True


# --- examples/psql-admin -------------------------------------------------------------------

ADMIN_DB, APP_ROLE, OPERATOR = "lease_examples_admin", "lease_examples_app", "lease_examples_operator"


@pytest.fixture
def admin_database(conn):
    conn.execute(f"DROP DATABASE IF EXISTS {ADMIN_DB} WITH (FORCE)")
    for role in (OPERATOR, APP_ROLE):
        conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
    conn.execute(f"CREATE DATABASE {ADMIN_DB}")
    with connect(dbname=ADMIN_DB) as admin:
        admin.execute("CREATE EXTENSION lease")
    yield ADMIN_DB
    conn.execute(f"DROP DATABASE {ADMIN_DB} WITH (FORCE)")
    for role in (OPERATOR, APP_ROLE):
        conn.execute(f"DROP ROLE {role}")


def app_connection(application_name):
    return psycopg.connect(f"host=127.0.0.1 port={PORT} user={APP_ROLE} dbname={ADMIN_DB} "
                           f"application_name={application_name}", autocommit=True)


def sections(output):
    """Splits psql's output at the script's '== N.' headings; each section is a list of rows
    (header rows included, one list of cells per line), without rulers and row counts."""
    noise = re.compile(r"[-+]*|-\[ RECORD \d+ \][-+]*|\(\d+ rows?\)")
    found = {}
    for block in re.split(r"^== (?=\d+\.)", output, flags=re.M)[1:]:
        number, _, rest = block.partition(".")
        lines = rest.splitlines()[1:]
        found[int(number)] = [[cell.strip() for cell in line.split("|")] for line in lines
                              if not noise.fullmatch(line.strip())]
    return found


def test_the_psql_admin_script_shows_holders_waiters_and_forces_a_release(admin_database):
    with app_connection("worker-7") as app, connect(dbname=admin_database) as observer:
        job = one(app, "SELECT lease_acquire('job:42', 'worker-7', '10 min')")
        report = one(app, "SELECT lease_acquire('report:daily', 'cron', '1 hour')")
        with app_connection("consumer-a") as consumer:
            partition = one(consumer, "SELECT lease_acquire('partition:7', 'consumer-a', '10 min', NULL, true)")
            waiter = app_connection("worker-9")
            waiter_pid = waiter.info.backend_pid
            granted = {}
            thread = threading.Thread(target=lambda: granted.update(token=one(
                waiter, "SELECT lease_acquire('job:42', 'worker-9', '10 min', wait => '60 s')")))
            thread.start()
            wait_for(lambda: is_waiting(observer, waiter_pid), what="the waiter to queue")

            result = run_psql(EXAMPLES / "psql-admin" / "admin.sql", admin_database,
                              "-v", "resource=job:42", "-v", f"operator={OPERATOR}")
            assert result.returncode == 0, result.stderr
            thread.join(30)
            assert not thread.is_alive()
            waiter.close()
            shown = sections(result.stdout)

            holders = {row[0]: row for row in shown[1][1:]}
            assert set(holders) == {"job:42", "partition:7", "report:daily"}
            assert holders["job:42"][:4] + holders["job:42"][6:] == ["job:42", "worker-7", str(job), APP_ROLE, "", "", "1"]
            assert holders["report:daily"][:4] + holders["report:daily"][6:] == [
                "report:daily", "cron", str(report), APP_ROLE, "", "", "0"]
            assert holders["partition:7"][:4] + holders["partition:7"][6:] == [
                "partition:7", "consumer-a", str(partition), APP_ROLE, str(consumer.info.backend_pid), "consumer-a", "0"]

            queued, sessions = shown[2][1], [row for row in shown[2] if row[0].isdigit()]
            assert queued == ["job:42", "worker-7", "1"]
            assert [row[:3] for row in sessions] == [[str(waiter_pid), APP_ROLE, "worker-9"]]

            detail = {row[0]: row[1] for row in shown[3]}
            assert (detail["resource"], detail["holder"], detail["token"]) == ("job:42", "worker-7", str(job))
            assert shown[4][1][-1] == "3"                              # live_leases
            assert shown[5] == [["leases_the_operator_sees"], ["0"], ["leases_the_operator_sees"], ["3"]]
            assert shown[6] == [["force_released"], ["t"], ["revoked_token_still_valid"], ["f"]]

            assert granted["token"] > job
            assert observer.execute("SELECT holder, token FROM lease_info('job:42')").fetchone() == (
                "worker-9", granted["token"])
            assert one(app, "SELECT lease_renew('job:42', %s)", (job,)) is False


# --- examples/job-queue --------------------------------------------------------------------

QUEUE = EXAMPLES / "job-queue"
PSQL_VARIABLE = re.compile(r"(?<![:\w]):('?)(\w+)\1")  # :name and :'name', not ::casts


def queue_statement(name):
    """The statement of examples/job-queue/<name>.sql with its psql variables as psycopg parameters."""
    return PSQL_VARIABLE.sub(r"%(\2)s", (QUEUE / f"{name}.sql").read_text().replace("%", "%%"))


ENQUEUE, CLAIM, HEARTBEAT, COMPLETE = map(queue_statement, ("enqueue", "claim", "heartbeat", "complete"))
# discard.sql is a transaction of four statements, run one by one
DISCARD = [statement.strip() for statement in "\n".join(
    line for line in queue_statement("discard").splitlines() if not line.startswith("--")).split(";")
    if statement.strip()]


class QueueWorker:
    """A worker of the job queue on its own connection, running the example's statements."""

    def __init__(self, name, ttl=timedelta(minutes=1), session_bound=False):
        self.name, self.ttl, self.session_bound = name, ttl, session_bound
        self.conn = connect()

    def claim(self, batch, window=100):
        """{job id: token} of the jobs claimed."""
        rows = self.conn.execute(CLAIM, {"worker": self.name, "ttl": self.ttl, "batch": batch, "window": window,
                                         "session_bound": self.session_bound}).fetchall()
        return {job: token for job, _payload, token in rows}

    def heartbeat(self, job, token):
        return one(self.conn, HEARTBEAT, {"id": job, "token": token, "ttl": self.ttl})

    def complete(self, job, token):
        return self.conn.execute(COMPLETE, {"id": job, "token": token, "result": self.name}).fetchall()

    def discard(self, job, token):
        """Runs discard.sql; the answer of its release."""
        try:
            for statement in DISCARD:
                cursor = self.conn.execute(statement, {"id": job, "token": token})
                if "lease_release" in statement:
                    released = cursor.fetchone()[0]
        except psycopg.Error:
            self.conn.execute("ROLLBACK")
            raise
        return released


@pytest.fixture
def queue(conn):
    """An empty jobs table; yields a function that enqueues n jobs and returns their ids."""
    conn.execute("DROP TABLE IF EXISTS jobs")
    conn.execute("DELETE FROM lease.leases WHERE resource LIKE 'job:%'")
    apply_schema("job-queue")
    yield lambda n: [one(conn, ENQUEUE, {"payload": f"job {i}"}) for i in range(n)]
    conn.execute("DROP TABLE jobs")
    conn.execute("DELETE FROM lease.leases WHERE resource LIKE 'job:%'")


def job_rows(conn, ids):
    return [row[1:] for row in conn.execute(
        "SELECT id, state, worker, lease_token, attempts, result FROM jobs WHERE id = ANY(%s) ORDER BY id",
        (list(ids),)).fetchall()]


def live_job_leases(conn, ids):
    return one(conn, "SELECT count(*) FROM unnest(%s::bigint[]) AS id, lease_info('job:' || id)", (list(ids),))


def job_lease_rows(conn, ids):
    """Lease rows of the jobs, expired or not: a claim skips a lease while the expiry worker
    (or anyone) is changing it, so the tests wait until an ended lease is removed."""
    return one(conn, "SELECT count(*) FROM lease.leases WHERE resource = ANY(%s)", ([f"job:{i}" for i in ids],))


def test_job_queue_workers_claim_disjoint_jobs_and_finish_each_once(conn, queue):
    ids = queue(20)
    workers = [QueueWorker(f"w{i}") for i in range(4)]
    claimed_together, claimed_all = threading.Barrier(len(workers)), threading.Barrier(len(workers))
    first_claims, finished, errors = {}, {}, []

    def work(worker):
        # All claim at once; then each finishes its jobs and claims more until none is left.
        # (A claim may return fewer jobs than asked: it skips leases being changed at that
        # moment, including leases of jobs finished after the claim read its candidates.)
        try:
            claimed_together.wait(10)
            first_claims[worker.name] = claimed = worker.claim(3)
            claimed_all.wait(10)
            finished[worker.name] = []
            while claimed:
                for job, token in claimed.items():
                    assert worker.heartbeat(job, token) is True
                    assert worker.complete(job, token) == [(True,)]
                    finished[worker.name].append(job)
                claimed = worker.claim(3)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert [len(claimed) for claimed in first_claims.values()] == [3, 3, 3, 3]
    assert len(set().union(*first_claims.values())) == 12
    assert sorted(job for jobs in finished.values() for job in jobs) == ids
    by_worker = {job: name for name, jobs in finished.items() for job in jobs}
    assert job_rows(conn, ids) == [
        ("done", by_worker[job], token, 1, by_worker[job])
        for job, token in conn.execute("SELECT id, lease_token FROM jobs ORDER BY id").fetchall()]
    assert job_lease_rows(conn, ids) == 0
    for worker in workers:
        worker.conn.close()


@pytest.mark.parametrize("binding", ["ttl", "session-bound"])
def test_job_queue_a_dead_workers_jobs_are_claimed_again(conn, queue, binding):
    # A ttl lease frees the jobs at its expiry (5 s); a session-bound one (ttl 10 min) at once.
    session_bound = binding == "session-bound"
    ids = queue(2)
    dead = QueueWorker("dead", timedelta(minutes=10) if session_bound else timedelta(seconds=5), session_bound)
    survivor = QueueWorker("survivor")
    lost = dead.claim(2)
    assert sorted(lost) == ids
    dead.conn.close()  # what a killed process's connection does
    if not session_bound:
        assert survivor.claim(2) == {}
        assert live_job_leases(conn, ids) == 2  # that empty claim ran while the leases were live
    wait_for(lambda: job_lease_rows(conn, ids) == 0, what="the dead worker's leases to end")
    reclaimed = survivor.claim(2)
    assert sorted(reclaimed) == ids
    assert all(reclaimed[job] > lost[job] for job in ids)
    assert job_rows(conn, ids) == [("running", "survivor", reclaimed[job], 2, None) for job in ids]
    for job in ids:
        assert survivor.complete(job, reclaimed[job]) == [(True,)]
    assert job_rows(conn, ids) == [("done", "survivor", reclaimed[job], 2, "survivor") for job in ids]
    survivor.conn.close()


def test_job_queue_a_stale_workers_late_completion_is_rejected(conn, queue):
    [job] = queue(1)
    stale, successor = QueueWorker("stale", ttl=timedelta(seconds=1)), QueueWorker("successor")
    old = stale.claim(1)[job]
    wait_for(lambda: job_lease_rows(conn, [job]) == 0, what="the stale worker's lease to expire")
    assert stale.heartbeat(job, old) is False
    new = successor.claim(1)[job]
    assert new > old
    with pytest.raises(psycopg.Error) as rejected:
        stale.complete(job, old)
    assert rejected.value.sqlstate == "55000"
    assert job_rows(conn, [job]) == [("running", "successor", new, 2, None)]
    assert successor.complete(job, new) == [(True,)]
    with pytest.raises(psycopg.Error) as rejected_again:
        stale.complete(job, old)
    assert rejected_again.value.sqlstate == "55000"
    assert job_rows(conn, [job]) == [("done", "successor", new, 2, "successor")]
    stale.conn.close()
    successor.conn.close()


def test_job_queue_only_the_holder_discards_a_job(conn, queue):
    [job] = queue(1)
    stale, successor = QueueWorker("stale", ttl=timedelta(seconds=1)), QueueWorker("successor")
    old = stale.claim(1)[job]
    wait_for(lambda: job_lease_rows(conn, [job]) == 0, what="the stale worker's lease to expire")
    new = successor.claim(1)[job]
    # the stale worker's discard: its lease_assert fails, and a bare DELETE has no proof either
    with pytest.raises(psycopg.Error) as rejected:
        stale.discard(job, old)
    assert rejected.value.sqlstate == "55000"
    with pytest.raises(psycopg.Error) as bare:
        stale.conn.execute("DELETE FROM jobs WHERE id = %s", (job,))
    assert bare.value.sqlstate == "55000"
    assert job_rows(conn, [job]) == [("running", "successor", new, 2, None)]
    assert successor.discard(job, new) is True
    assert job_rows(conn, [job]) == []
    assert job_lease_rows(conn, [job]) == 0
    stale.conn.close()
    successor.conn.close()
