"""lease.stats counts what happened, exactly."""

from conftest import Background, Listener, connect, one, wait_for
from test_waiting import is_waiting

COLUMNS = ["acquired", "reacquired", "conflicts", "renewed", "released", "expired_ttl",
           "expired_session_end", "revoked", "waits", "handovers"]


def counters(conn):
    row = conn.execute(f"SELECT {', '.join(COLUMNS)}, wait_seconds, live_leases FROM lease.stats").fetchone()
    return dict(zip(COLUMNS + ["wait_seconds", "live_leases"], row))


def test_counters_count_each_kind_of_change(conn):
    conn.execute("DELETE FROM lease.leases")
    conn.execute("SELECT lease_stats_reset()")
    assert counters(conn) == {name: 0 for name in COLUMNS} | {"wait_seconds": 0.0, "live_leases": 0}

    a = one(conn, "SELECT lease_acquire('stats:a', 'h', '1 min')")          # acquired
    assert one(conn, "SELECT lease_acquire('stats:a', 'h', '1 min')") == a  # reacquired (+ renewed)
    assert one(conn, "SELECT lease_acquire('stats:a', 'other')") is None     # conflict
    assert one(conn, "SELECT lease_renew('stats:a', %s)", (a,)) is True      # renewed
    with connect(autocommit=False) as tx:                                    # rolled back: not counted
        one(tx, "SELECT lease_acquire('stats:rolled-back', 'h')")
        tx.rollback()
    assert one(conn, "SELECT lease_release('stats:a', %s)", (a,)) is True    # released
    one(conn, "SELECT lease_acquire('stats:c', 'h', '1 min')")               # acquired
    assert one(conn, "SELECT lease_force_release('stats:c')") is True        # revoked

    listener = Listener()
    one(conn, "SELECT lease_acquire('stats:short', 'h', '20 ms')")           # acquired, then expired_ttl
    listener.until(lambda got: any(e["resource"] == "stats:short" and e["event"] == "expired" for e in got))

    held = one(conn, "SELECT lease_acquire('stats:d', 'h', '1 min')")        # acquired
    waiter = Background(lambda c: one(c, "SELECT lease_acquire('stats:d', 'w', '1 min', '30 s')"))
    wait_for(lambda: is_waiting(conn, waiter.pid), what="the waiter")
    one(conn, "SELECT lease_release('stats:d', %s)", (held,))                # released
    token = waiter.result()                                                  # waits, handovers, acquired

    holder = connect()
    one(holder, "SELECT lease_acquire('stats:session', 'h', '1 hour', NULL, true)")  # acquired
    holder.close()
    listener.until(lambda got: any(e["resource"] == "stats:session" and e["event"] == "expired" for e in got))
    listener.close()

    got = counters(conn)
    assert got.pop("wait_seconds") > 0
    assert got == {
        "acquired": 6, "reacquired": 1, "conflicts": 1, "renewed": 2, "released": 2, "expired_ttl": 1,
        "expired_session_end": 1, "revoked": 1, "waits": 1, "handovers": 1, "live_leases": 1,
    }
    one(conn, "SELECT lease_release('stats:d', %s)", (token,))


def test_resetting_is_for_administrators(conn):
    conn.execute("DROP ROLE IF EXISTS lease_stats_reader")
    conn.execute("CREATE ROLE lease_stats_reader")
    with connect(autocommit=False) as c:
        c.execute("SET ROLE lease_stats_reader")
        assert one(c, "SELECT count(*) FROM lease.stats") == 1
        try:
            c.execute("SELECT lease_stats_reset()")
            raise AssertionError("reset allowed")
        except Exception as error:
            assert getattr(error, "sqlstate", None) == "42501"
        c.rollback()
    conn.execute("DROP ROLE lease_stats_reader")
