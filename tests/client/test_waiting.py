"""Waiting acquires: woken by release and by expiry, first come first served, bounded by the
wait, by statement_timeout, lock_timeout and cancellation, and nothing left behind."""

import psycopg
import pytest

from conftest import Background, connect, one, wait_for


def is_waiting(observer, pid):
    row = observer.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row == ("Extension", "Extension")


def waiter(resource, holder, wait="30 s", ttl="1 min"):
    return Background(lambda c: one(c, "SELECT lease_acquire(%s, %s, %s, %s)", (resource, holder, ttl, wait)))


def test_waiter_is_woken_by_release(conn):
    held = one(conn, "SELECT lease_acquire('wait:release', 'a', '1 min')")
    b = waiter("wait:release", "b")
    wait_for(lambda: is_waiting(conn, b.pid), what="b to wait")
    assert one(conn, "SELECT lease_release('wait:release', %s)", (held,)) is True
    token = b.result()
    assert token > held
    assert one(conn, "SELECT holder FROM lease_info('wait:release')") == "b"
    one(conn, "SELECT lease_release('wait:release', %s)", (token,))


def test_waiter_is_woken_by_expiry(conn):
    held = one(conn, "SELECT lease_acquire('wait:expiry', 'a', '200 ms')")
    b = waiter("wait:expiry", "b")
    token = b.result()
    assert token > held
    assert one(conn, "SELECT holder FROM lease_info('wait:expiry')") == "b"
    one(conn, "SELECT lease_release('wait:expiry', %s)", (token,))


def test_wait_runs_out_and_returns_null(conn):
    held = one(conn, "SELECT lease_acquire('wait:timeout', 'a', '1 min')")
    assert one(conn, "SELECT lease_acquire('wait:timeout', 'b', '1 min', '100 ms')") is None
    # nothing left queued: once free, a call without wait gets it
    one(conn, "SELECT lease_release('wait:timeout', %s)", (held,))
    assert one(conn, "SELECT lease_acquire('wait:timeout', 'c')") is not None


def test_waiters_are_served_first_come_first_served(conn):
    held = one(conn, "SELECT lease_acquire('wait:fifo', 'holder', '1 min')")
    order = []
    waiters = []
    for name in ["w1", "w2", "w3", "w4"]:
        def take_and_release(c, name=name):
            token = one(c, "SELECT lease_acquire('wait:fifo', %s, '1 min', '30 s')", (name,))
            order.append((name, token))
            one(c, "SELECT lease_release('wait:fifo', %s)", (token,))
            return token
        waiters.append(Background(take_and_release))
        wait_for(lambda w=waiters[-1]: is_waiting(conn, w.pid), what=f"{name} to wait")
    one(conn, "SELECT lease_release('wait:fifo', %s)", (held,))
    tokens = [w.result() for w in waiters]
    assert [name for name, _ in order] == ["w1", "w2", "w3", "w4"]
    assert tokens == sorted(tokens)


def test_a_call_without_wait_does_not_jump_the_queue(conn):
    held = one(conn, "SELECT lease_acquire('wait:jump', 'a', '1 min')")
    b = waiter("wait:jump", "b")
    wait_for(lambda: is_waiting(conn, b.pid), what="b to wait")
    with connect(autocommit=False) as releaser:
        assert one(releaser, "SELECT lease_release('wait:jump', %s)", (held,)) is True
        jumper = Background(lambda c: one(c, "SELECT lease_acquire('wait:jump', 'c')"))
        releaser.commit()
    assert jumper.result() is None
    assert b.result() is not None
    assert one(conn, "SELECT holder FROM lease_info('wait:jump')") == "b"


@pytest.mark.parametrize(
    "setting, error",
    [
        ("SET statement_timeout = '200ms'", psycopg.errors.QueryCanceled),
        ("SET lock_timeout = '200ms'", psycopg.errors.LockNotAvailable),
    ],
)
def test_timeouts_end_a_wait_cleanly(conn, setting, error):
    resource = f"wait:timeouts:{error.__name__}"
    held = one(conn, "SELECT lease_acquire(%s, 'a', '1 min')", (resource,))
    with connect() as b:
        b.execute(setting)
        with pytest.raises(error):
            b.execute("SELECT lease_acquire(%s, 'b', '1 min', '30 s')", (resource,))
        assert one(b, "SELECT 1") == 1  # the connection is still usable
    one(conn, "SELECT lease_release(%s, %s)", (resource, held))
    token = one(conn, "SELECT lease_acquire(%s, 'c')", (resource,))
    assert token is not None
    one(conn, "SELECT lease_release(%s, %s)", (resource, token))


def test_cancel_ends_a_wait_cleanly(conn):
    held = one(conn, "SELECT lease_acquire('wait:cancel', 'a', '1 min')")
    with connect() as b:
        pid = b.info.backend_pid
        wait_job = Background(lambda c: one(c, "SELECT pg_cancel_backend(%s)", (pid,)) if wait_for(
            lambda: is_waiting(c, pid), what="b to wait") else None)
        with pytest.raises(psycopg.errors.QueryCanceled):
            b.execute("SELECT lease_acquire('wait:cancel', 'b', '1 min', '30 s')")
        wait_job.result()
        assert one(b, "SELECT 1") == 1
    one(conn, "SELECT lease_release('wait:cancel', %s)", (held,))
    assert one(conn, "SELECT lease_acquire('wait:cancel', 'c')") is not None


def test_a_waiter_whose_session_dies_leaves_the_queue(conn):
    held = one(conn, "SELECT lease_acquire('wait:dies', 'a', '1 min')")
    b = waiter("wait:dies", "b")
    wait_for(lambda: is_waiting(conn, b.pid), what="b to wait")
    assert one(conn, "SELECT pg_terminate_backend(%s)", (b.pid,)) is True
    with pytest.raises(psycopg.OperationalError):
        b.result()
    one(conn, "SELECT lease_release('wait:dies', %s)", (held,))
    assert one(conn, "SELECT lease_acquire('wait:dies', 'c')") is not None


def test_a_waiter_holds_no_lock_on_the_lease_table_while_it_sleeps(conn):
    held = one(conn, "SELECT lease_acquire('wait:locks', 'a', '1 min')")
    b = waiter("wait:locks", "b")
    wait_for(lambda: is_waiting(conn, b.pid), what="b to wait")
    assert one(conn, "SELECT waiters FROM lease.active WHERE resource = 'wait:locks'") == 1
    # Between attempts it holds no lock on the lease table and no barrier lock. (nextval keeps
    # an access-share lock on the token sequence until the transaction ends, as it always does.)
    locks = conn.execute(
        "SELECT locktype, relation::regclass::text, objsubid FROM pg_locks WHERE pid = %s AND granted"
        " AND locktype NOT IN ('virtualxid', 'transactionid')"
        " AND NOT (locktype = 'relation' AND relation::regclass::text IN ('lease.token_seq', 'pg_locks'))",
        (b.pid,),
    ).fetchall()
    assert locks == []
    one(conn, "SELECT lease_release('wait:locks', %s)", (held,))
    token = b.result()
    one(conn, "SELECT lease_release('wait:locks', %s)", (token,))


def test_an_error_caught_by_plpgsql_inside_a_wait_leaves_the_session_clean(conn):
    held = one(conn, "SELECT lease_acquire('wait:caught', 'a', '1 min')")
    with connect(autocommit=False) as fence:
        # the fence makes the waiter's attempt wait for the barrier lock, where lock_timeout fires
        assert one(fence, "SELECT lease_check('wait:caught', %s)", (held,)) is True
        with connect() as w:
            w.execute("SET lock_timeout = '100ms'")
            w.execute("""
                DO $$ BEGIN
                    PERFORM lease_acquire('wait:caught', 'w', '1 min', '5 s');
                EXCEPTION WHEN lock_not_available THEN
                    RAISE NOTICE 'caught';
                END $$""")
            assert one(w, "SELECT 1") == 1
            assert one(w, "SELECT count(*) FROM lease.active WHERE resource = 'wait:caught' AND waiters > 0") == 0
        fence.rollback()
    one(conn, "SELECT lease_release('wait:caught', %s)", (held,))
    token = one(conn, "SELECT lease_acquire('wait:caught', 'c')")  # no orphaned waiter ahead of us
    assert token is not None
    one(conn, "SELECT lease_release('wait:caught', %s)", (token,))


def test_a_refused_acquire_and_a_failed_fence_do_not_hold_up_the_owner(conn):
    held = one(conn, "SELECT lease_acquire('wait:refused', 'a', '1 min')")
    with connect(autocommit=False) as other:
        assert one(other, "SELECT lease_acquire('wait:refused', 'b')") is None
        assert one(other, "SELECT lease_check('wait:refused', 1)") is False
        # the owner renews and releases while the other transaction is still open
        assert one(conn, "SELECT lease_renew('wait:refused', %s)", (held,)) is True
        assert one(conn, "SELECT lease_release('wait:refused', %s)", (held,)) is True
        other.rollback()
