"""Session-bound leases end when the holder's session ends, however it ends; the worker
announces expired with reason session_ended and waiters get the lease at once."""

import psycopg
import pytest

from conftest import Background, Listener, connect, one, wait_for

SESSION_LOCK_SPACE = 0x4C53


def session_locks(conn, pid):
    return one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = %s AND pid = %s",
               (SESSION_LOCK_SPACE, pid))


@pytest.mark.parametrize("ending", ["disconnect", "terminate"])
def test_lease_ends_with_the_holders_session(conn, ending):
    resource = f"session:{ending}"
    listener = Listener()
    holder = connect()
    holder.execute("SET application_name = 'holder-app'")
    pid = holder.info.backend_pid
    token = one(holder, "SELECT lease_acquire(%s, 'h', '1 hour', NULL, true)", (resource,))
    info = conn.execute("SELECT holder, token, session_pid, application_name FROM lease_info(%s)", (resource,)).fetchone()
    assert info == ("h", token, pid, "holder-app")
    assert session_locks(conn, pid) == 1
    waiter = Background(lambda c: one(c, "SELECT lease_acquire(%s, 'next', '1 min', '30 s')", (resource,)))
    if ending == "disconnect":
        holder.close()
    else:
        assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    new_token = waiter.result()
    assert new_token > token
    assert one(conn, "SELECT holder FROM lease_info(%s)", (resource,)) == "next"
    events = listener.until(lambda got: any(e["resource"] == resource and e["event"] == "acquired" and e["holder"] == "next" for e in got))
    mine = [(e["event"], e.get("reason"), e["token"]) for e in events if e["resource"] == resource]
    assert mine == [("acquired", None, token), ("expired", "session_ended", token), ("acquired", None, new_token)]
    listener.close()
    one(conn, "SELECT lease_release(%s, %s)", (resource, new_token))
    if ending == "terminate":
        holder.close()


def test_release_by_the_holder_drops_the_session_lock(conn):
    with connect() as holder:
        pid = holder.info.backend_pid
        token = one(holder, "SELECT lease_acquire('session:release', 'h', '1 hour', NULL, true)")
        assert session_locks(conn, pid) == 1
        assert one(holder, "SELECT lease_renew('session:release', %s)", (token,)) is True
        assert one(holder, "SELECT lease_release('session:release', %s)", (token,)) is True
        assert session_locks(conn, pid) == 0


def test_an_aborted_session_bound_acquire_leaves_no_lock(conn):
    with connect(autocommit=False) as holder:
        pid = holder.info.backend_pid
        one(holder, "SELECT lease_acquire('session:abort', 'h', '1 hour', NULL, true)")
        holder.rollback()
        assert session_locks(conn, pid) == 0
        holder.execute("SAVEPOINT s")
        one(holder, "SELECT lease_acquire('session:abort', 'h', '1 hour', NULL, true)")
        holder.execute("ROLLBACK TO SAVEPOINT s")
        holder.commit()
        assert session_locks(conn, pid) == 0
    assert one(conn, "SELECT count(*) FROM lease_info('session:abort')") == 0


def test_plain_leases_survive_their_session(conn):
    with connect() as holder:
        token = one(holder, "SELECT lease_acquire('session:plain', 'h', '1 hour')")
    assert one(conn, "SELECT token FROM lease_info('session:plain')") == token
    assert one(conn, "SELECT session_pid FROM lease_info('session:plain')") is None
    one(conn, "SELECT lease_release('session:plain', %s)", (token,))


def test_a_release_rolled_back_with_its_savepoint_keeps_the_session_lock(conn):
    with connect(autocommit=False) as holder:
        pid = holder.info.backend_pid
        token = one(holder, "SELECT lease_acquire('session:savepoint', 'h', '1 hour', NULL, true)")
        holder.commit()
        holder.execute("SAVEPOINT s")
        assert one(holder, "SELECT lease_release('session:savepoint', %s)", (token,)) is True
        holder.execute("ROLLBACK TO SAVEPOINT s")
        holder.commit()
        assert session_locks(conn, pid) == 1
        assert one(conn, "SELECT token FROM lease_info('session:savepoint')") == token
        # another session cannot take it over: the holder is alive
        assert one(conn, "SELECT lease_acquire('session:savepoint', 'other')") is None
        assert one(holder, "SELECT lease_release('session:savepoint', %s)", (token,)) is True
        holder.commit()
        assert session_locks(conn, pid) == 0


def test_acquire_and_release_in_one_transaction_leaves_no_session_lock(conn):
    with connect(autocommit=False) as holder:
        pid = holder.info.backend_pid
        token = one(holder, "SELECT lease_acquire('session:same-tx', 'h', '1 hour', NULL, true)")
        assert one(holder, "SELECT lease_release('session:same-tx', %s)", (token,)) is True
        holder.commit()
        assert session_locks(conn, pid) == 0
