"""The guarantees at their edges, each a defect found from outside in 0.3.0 (issue 13): fenced
deletes, calls that must not wait for other transactions, who may fence and see tokens, a
holder's own retry, stale snapshots, binding on re-acquire, a worker that cannot start, and a
full NOTIFY queue."""

import os

import psycopg
import pytest

from conftest import (
    PG_BIN, RUN_DIR, SERVER_USER, Background, Listener, as_root, as_server_user, connect, dsn,
    free_port, is_waiting_for_lease, one,
    reload_settings, wait_for, worker_pid,
)


def sqlstate_of(conn, sql, params=()):
    try:
        conn.execute(sql, params)
    except psycopg.Error as error:
        if not conn.autocommit:
            conn.rollback()
        return error.sqlstate
    return None


def wait_until_expired(conn, resource):
    wait_for(lambda: one(conn, "SELECT coalesce((SELECT clock_timestamp() > expires_at FROM lease.leases "
                               "WHERE resource = %s), true)", (resource,)), what=f"{resource} to expire")


@pytest.fixture
def jobs(conn):
    conn.execute("DROP TABLE IF EXISTS edge_jobs")
    conn.execute("CREATE TABLE edge_jobs (id int PRIMARY KEY, state text, lease_token bigint)")
    conn.execute("CREATE TRIGGER f BEFORE UPDATE OR DELETE ON edge_jobs FOR EACH ROW "
                 "EXECUTE FUNCTION lease_fence('id', 'lease_token', 'edge:job:')")
    conn.execute("INSERT INTO edge_jobs VALUES (42, 'queued', NULL)")
    yield "edge_jobs"
    conn.execute("DROP TABLE edge_jobs")
    conn.execute("DELETE FROM lease.leases WHERE resource LIKE 'edge:%'")


def test_a_stale_holder_cannot_delete_or_update_without_its_token(conn, jobs):
    """Item 1: the trigger checked the token stored in the old row, which any deleter passes."""
    t1 = one(conn, "SELECT lease_acquire('edge:job:42', 'w1', '20 ms')")
    wait_until_expired(conn, "edge:job:42")
    t2 = one(conn, "SELECT lease_acquire('edge:job:42', 'w2', '1 hour')")
    assert t2 > t1
    conn.execute("UPDATE edge_jobs SET state = 'running', lease_token = %s WHERE id = 42", (t2,))
    with connect(autocommit=False) as w1:
        # the stale worker, with or without trying to fence first
        assert one(w1, "SELECT lease_check('edge:job:42', %s)", (t1,)) is False
        with pytest.raises(psycopg.Error) as deleted:
            w1.execute("DELETE FROM edge_jobs WHERE id = 42")
        assert deleted.value.sqlstate == "55000"
        assert '"edge:job:42"' in str(deleted.value)
        w1.rollback()
        assert sqlstate_of(w1, "UPDATE edge_jobs SET state = 'stolen' WHERE id = 42") == "55000"
        assert sqlstate_of(w1, "UPDATE edge_jobs SET state = 'stolen', lease_token = %s WHERE id = 42",
                           (t1,)) == "55000"
    with connect(autocommit=False) as w2:
        w2.execute("SELECT lease_assert('edge:job:42', %s)", (t2,))
        w2.execute("UPDATE edge_jobs SET state = 'done' WHERE id = 42")
        w2.execute("DELETE FROM edge_jobs WHERE id = 42")
        w2.commit()
    assert one(conn, "SELECT count(*) FROM edge_jobs") == 0


def test_acquire_does_not_wait_for_a_fenced_transaction(conn):
    """Item 5: a non-waiting acquire blocked until the holder's fenced transaction ended."""
    token = one(conn, "SELECT lease_acquire('edge:fenced', 'holder', '300 ms')")
    with connect(autocommit=False) as holder:
        holder.execute("SELECT lease_assert('edge:fenced', %s)", (token,))
        quick = Background(lambda c: one(c, "SELECT lease_acquire('edge:fenced', 'other', '1 s')"))
        waiting = Background(lambda c: one(c, "SELECT lease_acquire('edge:fenced', 'other', '1 s', wait => '100 ms')"))
        assert quick.result(timeout=10) is None
        assert waiting.result(timeout=10) is None
        # expired while the fence stands: still never granted, and still no waiting past `wait`
        wait_until_expired(conn, "edge:fenced")
        quick = Background(lambda c: one(c, "SELECT lease_acquire('edge:fenced', 'other', '1 s')"))
        waiting = Background(lambda c: one(c, "SELECT lease_acquire('edge:fenced', 'other', '1 s', wait => '200 ms')"))
        assert quick.result(timeout=10) is None
        assert waiting.result(timeout=10) is None
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        # a waiter with time to spare gets it the moment the fenced transaction ends
        patient = Background(lambda c: one(c, "SELECT lease_acquire('edge:fenced', 'other', '1 s', wait => '30 s')"))
        wait_for(lambda: is_waiting_for_lease(conn, patient.pid), what="the waiter to wait for the fence")
        holder.commit()
        assert patient.result() > token
    conn.execute("DELETE FROM lease.leases WHERE resource = 'edge:fenced'")


@pytest.fixture
def roles(conn):
    for role in ("edge_alice", "edge_bob"):
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
    yield
    conn.execute("DELETE FROM lease.leases WHERE resource LIKE 'edge:%'")
    for role in ("edge_alice", "edge_bob"):
        conn.execute(f"DROP ROLE {role}")


def connect_as(role, autocommit=True):
    return psycopg.connect(dsn().replace("user=postgres", f"user={role}"), autocommit=autocommit)


def test_nobody_else_can_make_a_lease_lapse(conn, roles):
    """Item 8: bob's fence with alice's token held up alice's renewal until her lease lapsed."""
    with connect_as("edge_alice") as alice, connect_as("edge_bob", autocommit=False) as bob:
        token = one(alice, "SELECT lease_acquire('edge:shared', 'alice', '2 s')")
        # bob sees who holds it, not the token, and cannot fence with it
        assert bob.execute("SELECT holder, token FROM lease_info('edge:shared')").fetchone() == ("alice", None)
        assert one(alice, "SELECT token FROM lease_info('edge:shared')") == token
        assert one(bob, "SELECT lease_check('edge:shared', %s)", (token,)) is False
        assert sqlstate_of(bob, "SELECT lease_assert('edge:shared', %s)", (token,)) == "42501"
        bob.execute("SELECT 1")  # stays in a transaction
        def renew_as_alice(c):
            c.execute("SET ROLE edge_alice")
            return one(c, "SELECT lease_renew('edge:shared', %s, '1 hour')", (token,))

        renewal = Background(renew_as_alice)
        assert renewal.result(timeout=10) is True
        assert bob.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        bob.rollback()
        # the holder's own fence does not hold up its heartbeat's renewal either
        with connect_as("edge_alice", autocommit=False) as fenced:
            fenced.execute("SELECT lease_assert('edge:shared', %s)", (token,))
            assert one(alice, "SELECT lease_renew('edge:shared', %s, '1 hour')", (token,)) is True
            assert one(alice, "SELECT lease_acquire('edge:shared', 'alice', '1 hour')") == token
            fenced.commit()


def test_a_holders_retry_with_wait_returns_its_token_at_once(conn):
    """Item 9: the holder's re-acquire with wait queued behind other waiters and returned NULL."""
    token = one(conn, "SELECT lease_acquire('edge:retry', 'A', '10 s')")
    expires_at = one(conn, "SELECT expires_at FROM lease.leases WHERE resource = 'edge:retry'")
    waiter = Background(lambda c: one(c, "SELECT lease_acquire('edge:retry', 'B', '10 s', wait => '20 s')"))
    wait_for(lambda: one(conn, "SELECT waiters FROM lease.active WHERE resource = 'edge:retry'") == 1,
             what="B to queue")
    assert one(conn, "SELECT lease_acquire('edge:retry', 'A', '1 hour', wait => '200 ms')") == token
    assert one(conn, "SELECT expires_at > %s + interval '30 min' FROM lease.leases WHERE resource = 'edge:retry'",
               (expires_at,))
    assert one(conn, "SELECT lease_release('edge:retry', %s)", (token,)) is True
    assert waiter.result() > token
    conn.execute("DELETE FROM lease.leases WHERE resource = 'edge:retry'")


def test_repeatable_read_acquire_with_a_stale_snapshot(conn):
    """Item 9: a stale REPEATABLE READ acquire returned NULL where 40001 was documented."""
    with connect(autocommit=False) as rr:
        rr.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        rr.execute("SELECT count(*) FROM lease.leases")  # the snapshot is taken here
        token = one(conn, "SELECT lease_acquire('edge:rr', 'other', '1 hour')")
        # held by another as last committed: NULL, whatever the snapshot shows
        assert one(rr, "SELECT lease_acquire('edge:rr', 'me', '1 hour')") is None
        assert one(conn, "SELECT lease_release('edge:rr', %s)", (token,)) is True
        # free now, but changed since the snapshot: a grant would be decided on news the
        # transaction cannot read
        assert sqlstate_of(rr, "SELECT lease_acquire('edge:rr', 'me', '1 hour')") == "40001"
        rr.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert one(rr, "SELECT lease_acquire('edge:rr', 'me', '1 hour')") is not None
        rr.commit()
    conn.execute("DELETE FROM lease.leases WHERE resource = 'edge:rr'")


def test_reacquire_with_session_bound_binds_or_refuses(conn):
    """Item 10: a re-acquire with session_bound returned the token without binding the lease."""
    with connect() as first:
        pid = first.info.backend_pid
        token = one(first, "SELECT lease_acquire('edge:bind', 'h', '1 hour')")
        assert one(first, "SELECT lease_acquire('edge:bind', 'h', '1 hour', session_bound => true)") == token
        assert one(conn, "SELECT session_pid FROM lease_info('edge:bind')") == pid
        with connect() as second:
            # the same holder from another session: the lease is bound to the first
            assert sqlstate_of(second, "SELECT lease_acquire('edge:bind', 'h', '1 hour', session_bound => true)") == "55006"
            assert one(second, "SELECT lease_acquire('edge:bind', 'h', '1 hour')") == token
            assert one(conn, "SELECT session_pid FROM lease_info('edge:bind')") == pid
    # bound: the lease ends with the first session
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease_info('edge:bind')") == 0, what="the binding to end it")


def test_events_are_held_back_or_dropped_while_the_notify_queue_is_too_full(conn):
    """Item 10: with the NOTIFY queue full, every lease change without a worker failed at commit
    and the worker restarted in a loop losing a batch each time. lease.notify_queue_limit = 0
    stands for a full queue."""
    conn.execute("DROP DATABASE IF EXISTS edge_noworker WITH (FORCE)")
    conn.execute("CREATE DATABASE edge_noworker")
    listener = Listener()
    try:
        with connect(dbname="edge_noworker") as other:
            other.execute("CREATE EXTENSION lease")
            reload_settings(conn, notify_queue_limit='0')
            before = one(conn, "SELECT events_dropped FROM lease.stats")
            # no worker serves that database (lease.database = 'postgres'): dropped and counted
            token = one(other, "SELECT lease_acquire('edge:queue', 'h', '1 hour')")
            assert one(other, "SELECT lease_release('edge:queue', %s)", (token,)) is True
            assert one(conn, "SELECT events_dropped FROM lease.stats") == before + 2
            # the worker's database: kept in the ring while the queue is too full
            seq = one(conn, "SELECT last_seq FROM lease_event_stats()")
            tokens = [one(conn, "SELECT lease_acquire(%s, 'h', '1 hour')", (f"edge:held:{i}",)) for i in range(10)]
            wait_for(lambda: one(conn, "SELECT last_seq FROM lease_event_stats()") == seq + 10, what="the events")
            assert one(conn, "SELECT pending FROM lease_event_stats()") == 10
            assert listener.events_for("edge:held:0") == []
            reload_settings(conn, notify_queue_limit=None)
            events = listener.until(lambda got: len([e for e in got if e["resource"].startswith("edge:held:")]) == 10)
            held = [e for e in events if e["resource"].startswith("edge:held:")]
            assert [(e["seq"], e["token"]) for e in held] == [(seq + 1 + i, token) for i, token in enumerate(tokens)]
            assert one(conn, "SELECT dropped FROM lease_event_stats()") == 0
    finally:
        listener.close()
        reload_settings(conn, notify_queue_limit=None)
        conn.execute("DELETE FROM lease.leases WHERE resource LIKE 'edge:%'")
        conn.execute("DROP DATABASE IF EXISTS edge_noworker WITH (FORCE)")


def test_a_database_whose_worker_cannot_start_publishes_directly():
    """Item 10: a database was marked served before its worker started, so with
    max_worker_processes exhausted its events were never published."""
    directory = os.path.join(RUN_DIR, "edge-noworkers")
    data = os.path.join(directory, "data")
    port = free_port()
    as_root("rm", "-rf", directory)
    as_root("mkdir", "-p", directory)
    as_root("chown", SERVER_USER, directory)
    as_server_user(f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "-A", "trust")
    settings = (f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{directory}'\n"
                "shared_preload_libraries = 'lease'\nmax_worker_processes = 1\nmax_logical_replication_workers = 0\nfsync = off\n")
    as_server_user("sh", "-c", f"printf \"{settings}\" >> {data}/postgresql.conf")
    log = os.path.join(directory, "server.log")
    as_server_user(f"{PG_BIN}/pg_ctl", "-D", data, "-l", log, "-w", "start")
    try:
        with connect(port=port) as conn:
            conn.execute("CREATE EXTENSION lease")
            wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease launcher'") == 1,
                     what="the launcher")
            listener = Listener(port=port)
            try:
                for round in range(3):  # the launcher is asked again after each commit, in vain
                    token = one(conn, "SELECT lease_acquire('edge:direct', 'h', '1 hour')")
                    assert one(conn, "SELECT lease_release('edge:direct', %s)", (token,)) is True
                    events = listener.until(lambda got: len(got) == 2 * (round + 1))
                    assert [(e["event"], "seq" in e) for e in events[-2:]] == [("acquired", False), ("released", False)]
            finally:
                listener.close()
            assert one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease expirer'") == 0
            assert one(conn, "SELECT (last_seq, pending) = (0, 0) FROM lease_event_stats()")
        wait_for(lambda: "could not start an expiry worker" in as_root("cat", log).stdout, what="the warning")
    finally:
        as_server_user(f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop", check=False)
        as_root("rm", "-rf", directory, check=False)


def test_no_call_that_cannot_succeed_queues_ahead_of_a_renewal(conn, roles):
    """Review of issue 13: a queued exclusive request (a hopeless release, a waiter) held up the
    holder's renewal behind a fence until the lease lapsed."""
    with connect_as("edge_alice") as alice, connect_as("edge_alice", autocommit=False) as fenced:
        token = one(alice, "SELECT lease_acquire('edge:queue-renew', 'alice', '2 s', session_bound => true)")
        fenced.execute("SELECT lease_assert('edge:queue-renew', %s)", (token,))
        with connect_as("edge_bob") as bob:
            # answered at once, without queueing for the lock the fence holds
            assert sqlstate_of(bob, "SELECT lease_release('edge:queue-renew', %s)", (token,)) == "42501"
            assert one(bob, "SELECT lease_release('edge:queue-renew', 999999)") is False
            assert one(bob, "SELECT lease_renew('edge:queue-renew', 999999)") is False
        waiter = Background(lambda c: one(c, "SELECT lease_acquire('edge:queue-renew', 'waiter', '1 min', wait => '20 s')"))
        wait_for(lambda: is_waiting_for_lease(conn, waiter.pid), what="the waiter to queue")
        renewal = Background(lambda c: (c.execute("SET ROLE edge_alice"),
                                        one(c, "SELECT lease_renew('edge:queue-renew', %s, '1 hour')", (token,)))[1])
        assert renewal.result(timeout=10) is True
        assert not waiter.done() and fenced.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        fenced.commit()
        assert one(alice, "SELECT lease_release('edge:queue-renew', %s)", (token,)) is True
        assert waiter.result() > token


def test_a_worker_waiting_for_a_lock_is_terminated_and_comes_back(conn):
    """Review of issue 13: the expiry worker ignored SIGTERM while it waited for a lock."""
    with connect(autocommit=False) as locker:
        one(conn, "SELECT lease_acquire('edge:locked-sweep', 'h', '20 ms')")
        locker.execute("LOCK TABLE lease.leases IN ACCESS EXCLUSIVE MODE")
        pid = wait_for(lambda: one(conn, "SELECT (SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease expirer' "
                                         "AND datname = current_database() AND wait_event_type = 'Lock')"),
                       what="the worker to wait for the table lock")
        assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
        wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
                 what="the worker to end while the lock is held")
        locker.rollback()
    wait_for(lambda: worker_pid(conn) not in (None, pid), what="a new worker")
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.leases WHERE resource = 'edge:locked-sweep'") == 0,
             what="the new worker to sweep")


def test_a_prepared_transaction_takes_its_fence_proofs_with_it(conn, jobs):
    """Review of issue 13: after PREPARE TRANSACTION the session kept the proofs of the
    prepared transaction, and its next transaction deleted fenced rows without one."""
    token = one(conn, "SELECT lease_acquire('edge:job:42', 'w1', '1 hour')")
    conn.execute("UPDATE edge_jobs SET lease_token = %s WHERE id = 42", (token,))
    with connect(autocommit=False) as w1:
        w1.execute("SELECT lease_check('edge:job:42', %s)", (token,))
        w1.execute("PREPARE TRANSACTION 'edge_fenced'")
        try:
            with pytest.raises(psycopg.Error) as rejected:
                w1.execute("DELETE FROM edge_jobs WHERE id = 42")
            assert rejected.value.sqlstate == "55000"
            w1.rollback()
        finally:
            conn.execute("COMMIT PREPARED 'edge_fenced'")
    assert one(conn, "SELECT count(*) FROM edge_jobs") == 1


def test_a_privileged_refresh_shows_an_ordinary_role_no_other_tokens(conn, roles):
    """Review of issue 13: lease_info and lease.active decided on the role the session acted as,
    so a superuser refreshing an ordinary role's materialized view filled it with every token."""
    with connect_as("edge_alice") as alice:
        token = one(alice, "SELECT lease_acquire('edge:mv', 'alice', '1 hour')")
        assert alice.execute("SELECT (SELECT token FROM lease_info('edge:mv')), "
                             "(SELECT count(*) FROM lease.active WHERE resource = 'edge:mv')").fetchone() == (token, 1)
    conn.execute("GRANT CREATE ON SCHEMA public TO edge_bob")
    try:
        with connect_as("edge_bob") as bob:
            bob.execute("CREATE MATERIALIZED VIEW edge_mv AS SELECT (SELECT token FROM lease_info('edge:mv')) AS token, "
                        "(SELECT count(*) FROM lease.active WHERE resource = 'edge:mv') AS active_rows")
        conn.execute("REFRESH MATERIALIZED VIEW edge_mv")
        with connect_as("edge_bob") as bob:
            assert bob.execute("SELECT token, active_rows FROM edge_mv").fetchone() == (None, 0)
    finally:
        conn.execute("DROP MATERIALIZED VIEW IF EXISTS edge_mv")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM edge_bob")
