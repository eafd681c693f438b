"""Lease events over NOTIFY: committed changes only, exact payloads, per-resource commit
order, the takeover ordering rule, strange names, a full ring, and the settings that shape the
stream."""

import os
import signal
import threading

import psycopg
import pytest

from conftest import Listener, connect, one, reload_settings, wait_for, worker_pid

STRANGE = 'quote " backslash \\ newline \n tab \t nul-free é ü 日本 \U0001f600 end'


def marker(conn, listener, name):
    """Commits a release event for `name` and waits for it: every event committed before it
    has then been delivered (the stream is in commit order)."""
    token = one(conn, "SELECT lease_acquire(%s, 'marker', '1 min')", (name,))
    one(conn, "SELECT lease_release(%s, %s)", (name, token))
    listener.until(lambda got: any(e["resource"] == name and e["event"] == "released" for e in got))


def test_acquire_renew_release_expire_payloads(conn, listener):
    token = one(conn, "SELECT lease_acquire('ev:1', 'holder-1', '1 min')")
    acquired_expiry = one(conn, "SELECT expires_at FROM lease_info('ev:1')")
    assert one(conn, "SELECT lease_renew('ev:1', %s)", (token,)) is True  # not announced by default
    assert one(conn, "SELECT lease_release('ev:1', %s)", (token,)) is True
    short = one(conn, "SELECT lease_acquire('ev:2', 'holder-2', '50 ms')")
    events = listener.until(
        lambda got: any(e["resource"] == "ev:2" and e["event"] == "expired" for e in got), what="ev:2 expiry"
    )
    mine = [e for e in events if e["resource"] in ("ev:1", "ev:2")]
    assert [(e["event"], e["resource"], e["holder"], e["token"]) for e in mine] == [
        ("acquired", "ev:1", "holder-1", token),
        ("released", "ev:1", "holder-1", token),
        ("acquired", "ev:2", "holder-2", short),
        ("expired", "ev:2", "holder-2", short),
    ]
    acquired, released, _, expired = mine
    assert set(acquired) == {"seq", "event", "resource", "holder", "token", "expires_at", "at"}
    assert acquired["expires_at"] == acquired_expiry.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert set(released) == {"seq", "event", "resource", "holder", "token", "at"}
    assert expired["reason"] == "ttl"
    assert expired["at"] >= expired["expires_at"]
    seqs = [e["seq"] for e in mine]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_rolled_back_changes_announce_nothing(conn, listener):
    with connect(autocommit=False) as tx:
        one(tx, "SELECT lease_acquire('ev:rolled-back', 'h')")
        tx.rollback()
        tx.execute("SAVEPOINT s")
        one(tx, "SELECT lease_acquire('ev:savepoint-undone', 'h')")
        tx.execute("ROLLBACK TO SAVEPOINT s")
        tx.execute("SAVEPOINT t")
        kept = one(tx, "SELECT lease_acquire('ev:savepoint-kept', 'h')")
        tx.execute("RELEASE SAVEPOINT t")
        tx.commit()
    with connect(autocommit=False) as failing:
        one(failing, "SELECT lease_acquire('ev:failed', 'h')")
        try:
            failing.execute("SELECT 1 / 0")
        except psycopg.errors.DivisionByZero:
            failing.rollback()
    marker(conn, listener, "ev:marker-rollback")
    resources = {e["resource"] for e in listener.received}
    assert "ev:rolled-back" not in resources
    assert "ev:savepoint-undone" not in resources
    assert "ev:failed" not in resources
    assert [e["token"] for e in listener.events_for("ev:savepoint-kept")] == [kept]
    one(conn, "SELECT lease_release('ev:savepoint-kept', %s)", (kept,))


def test_takeover_announces_the_old_tokens_end_before_the_new_grant(conn, listener):
    old = one(conn, "SELECT lease_acquire('ev:takeover', 'old', '100 ms')")
    with connect(autocommit=False) as taker:
        # Our own fence keeps the worker from sweeping the lease first (it skips busy resources).
        assert one(taker, "SELECT lease_check('ev:takeover', %s)", (old,)) is True
        wait_for(lambda: one(taker, "SELECT clock_timestamp() > %s::timestamptz", (
            one(conn, "SELECT expires_at FROM lease.leases WHERE resource = 'ev:takeover'"),
        )), what="expiry")
        new = one(taker, "SELECT lease_acquire('ev:takeover', 'new', '1 min')")
        taker.commit()
    marker(conn, listener, "ev:marker-takeover")
    events = listener.events_for("ev:takeover")
    assert [(e["event"], e.get("reason"), e["holder"], e["token"]) for e in events] == [
        ("acquired", None, "old", old),
        ("expired", "ttl", "old", old),
        ("acquired", None, "new", new),
    ]
    one(conn, "SELECT lease_release('ev:takeover', %s)", (new,))


def test_events_of_each_resource_arrive_in_commit_order(listener):
    resources = [f"ev:order:{i}" for i in range(4)]
    rounds = 60

    def churn(worker):
        with connect() as c:
            for n in range(rounds):
                resource = resources[(worker + n) % len(resources)]
                token = one(c, "SELECT lease_acquire(%s, %s, '1 min')", (resource, f"w{worker}"))
                if token is not None:
                    one(c, "SELECT lease_release(%s, %s)", (resource, token))

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with connect() as c:
        marker(c, listener, "ev:marker-order")
    for resource in resources:
        events = listener.events_for(resource)
        assert events, resource
        # commit order per resource: acquired, released, acquired, released, ... same token in pairs
        for first, second in zip(events[::2], events[1::2]):
            assert (first["event"], second["event"]) == ("acquired", "released"), events
            assert first["token"] == second["token"]
        tokens = [e["token"] for e in events if e["event"] == "acquired"]
        assert tokens == sorted(tokens)
    seqs = [e["seq"] for e in listener.received]
    assert seqs == sorted(seqs)


def test_a_full_ring_drops_events_and_listeners_see_the_gap(conn, listener):
    """With the worker stopped, one transaction commits 5,000 events into the 4,096-slot ring:
    the first 4,096 are kept and published in order once the worker runs again, the other 904
    are dropped and counted, and their sequence numbers are used all the same."""
    # No lease left that could expire (and be announced by the worker) during the test.
    conn.execute("SELECT count(lease_force_release(resource)) FROM lease.leases")
    conn.execute("SELECT lease_sweep(1000000)")
    assert one(conn, "SELECT count(*) FROM lease.leases") == 0
    marker(conn, listener, "ev:full:before")
    last_seq = listener.received[-1]["seq"]
    dropped_before = one(conn, "SELECT dropped FROM lease_event_stats()")
    pid = worker_pid(conn)
    os.kill(pid, signal.SIGSTOP)
    try:
        released = one(
            conn,
            """SELECT count(*) FILTER (WHERE lease_release(r, lease_acquire(r, 'h', '1 min')))
               FROM (SELECT 'ev:full:' || i AS r FROM generate_series(1, 2500) AS i) AS s""",
        )
        assert released == 2500
        assert one(conn, "SELECT pending FROM lease_event_stats()") == 4096
    finally:
        os.kill(pid, signal.SIGCONT)
    # A marker committed before the worker has made room would be dropped too.
    wait_for(lambda: one(conn, "SELECT pending FROM lease_event_stats()") == 0, what="the ring to drain")
    marker(conn, listener, "ev:full:after")
    assert one(conn, "SELECT dropped FROM lease_event_stats()") - dropped_before == 904
    burst = [e for e in listener.received if last_seq < e["seq"] <= last_seq + 5000]
    assert [e["seq"] for e in burst] == list(range(last_seq + 1, last_seq + 4097))
    # in commit order: acquired and released for each resource in turn, up to the 4,096th event
    assert [(e["event"], e["resource"]) for e in burst] == [
        (kind, f"ev:full:{i}") for i in range(1, 2049) for kind in ("acquired", "released")
    ]
    after = listener.events_for("ev:full:after")
    assert after[0]["seq"] > last_seq + 5000


def test_payloads_carry_the_largest_and_strangest_names(conn, listener):
    resource = (STRANGE * 10).encode()[:500].decode("utf-8", "ignore")
    resource = resource + "r" * (512 - len(resource.encode()))
    holder = (STRANGE * 5).encode()[:250].decode("utf-8", "ignore")
    holder = holder + "h" * (256 - len(holder.encode()))
    assert len(resource.encode()) == 512 and len(holder.encode()) == 256
    token = one(conn, "SELECT lease_acquire(%s, %s, '1 min')", (resource, holder))
    one(conn, "SELECT lease_release(%s, %s)", (resource, token))
    events = listener.until(lambda got: len([e for e in got if e["resource"] == resource]) == 2)
    assert [(e["event"], e["holder"], e["token"]) for e in events if e["resource"] == resource] == [
        ("acquired", holder, token),
        ("released", holder, token),
    ]


def test_renewals_are_announced_only_when_enabled(conn, listener):
    token = one(conn, "SELECT lease_acquire('ev:renew', 'h', '1 min')")
    one(conn, "SELECT lease_renew('ev:renew', %s)", (token,))
    reload_settings(conn, notify_renewals="on")
    try:
        with connect() as fresh:
            one(fresh, "SELECT lease_renew('ev:renew', %s, '2 min')", (token,))
            marker(fresh, listener, "ev:marker-renew")
    finally:
        reload_settings(conn, notify_renewals=None)
    events = listener.events_for("ev:renew")
    assert [e["event"] for e in events] == ["acquired", "renewed"]
    assert events[1]["expires_at"] > events[0]["expires_at"]
    one(conn, "SELECT lease_release('ev:renew', %s)", (token,))


def test_notify_off_announces_nothing_and_the_channel_can_change(conn, listener):
    reload_settings(conn, notify="off")
    try:
        with connect() as fresh:
            token = one(fresh, "SELECT lease_acquire('ev:silent', 'h')")
            one(fresh, "SELECT lease_release('ev:silent', %s)", (token,))
    finally:
        reload_settings(conn, notify=None)
    marker(conn, listener, "ev:marker-silent")
    assert listener.events_for("ev:silent") == []

    other = Listener(channel="lease_other_channel")
    reload_settings(conn, notify_channel="lease_other_channel")
    try:
        with connect() as fresh:
            token = one(fresh, "SELECT lease_acquire('ev:other-channel', 'h')")
        events = other.until(lambda got: any(e["resource"] == "ev:other-channel" for e in got))
        assert [e["event"] for e in events if e["resource"] == "ev:other-channel"] == ["acquired"]
    finally:
        reload_settings(conn, notify_channel=None)
        other.close()
    one(conn, "SELECT lease_release('ev:other-channel', %s)", (token,))


def test_databases_the_worker_does_not_serve_notify_directly():
    with connect(dbname="postgres") as admin:
        admin.execute("DROP DATABASE IF EXISTS lease_other_db")
        admin.execute("CREATE DATABASE lease_other_db")
    with connect(dbname="lease_other_db") as conn:
        conn.execute("CREATE EXTENSION lease")
        other = Listener(dbname="lease_other_db")
        try:
            token = one(conn, "SELECT lease_acquire('ev:direct', 'h', '1 min')")
            events = other.until(lambda got: any(e["resource"] == "ev:direct" for e in got))
            assert [(e["event"], e["token"]) for e in events] == [("acquired", token)]
            assert "seq" not in events[0]
        finally:
            other.close()
    with connect(dbname="postgres") as admin:
        admin.execute("DROP DATABASE lease_other_db WITH (FORCE)")


def test_events_are_published_only_while_a_session_of_the_database_listens(conn):
    """With nobody listening, committed changes are not numbered or published (lease.stats still
    counts them); a LISTEN, on any channel, brings them back for every change that commits after
    it; the listener's exit ends it again."""

    def cycle(resource):
        token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
        assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is True
        return token

    def stream():
        return conn.execute("SELECT last_seq, pending, published, dropped FROM lease_event_stats()").fetchone()

    def unheard():
        """Whether a cycle committed now goes unnumbered (each try commits one)."""
        before = stream()[0]
        cycle("ev:unheard:probe")
        return stream()[0] == before

    # The listeners of earlier tests end with their sessions.
    wait_for(unheard, what="no session listening")
    wait_for(lambda: stream()[1] == 0, what="the ring to drain")
    last_seq, _, published, dropped = stream()
    acquired = one(conn, "SELECT acquired FROM lease.stats")
    for i in range(3):
        cycle(f"ev:unheard:{i}")
    assert stream() == (last_seq, 0, published, dropped)
    assert one(conn, "SELECT acquired FROM lease.stats") == acquired + 3

    listener = Listener()
    try:
        token = cycle("ev:unheard:heard")
        listener.until(lambda got: ("released", token) in [(e["event"], e["token"]) for e in got], what="the release")
        # (any other lease of the database that expires meanwhile is numbered too)
        events = listener.events_for("ev:unheard:heard")
        assert [(e["event"], e["token"]) for e in events] == [("acquired", token), ("released", token)]
        assert last_seq < events[0]["seq"] < events[1]["seq"]
    finally:
        listener.close()
    wait_for(unheard, what="the listener's mark to end with its session")
    with connect() as unrelated:
        unrelated.execute("LISTEN some_other_channel")
        before = stream()[0]
        cycle("ev:unheard:other-channel")
        assert stream()[0] >= before + 2


def test_utility_statements_keep_their_errors_whole(conn):
    """The hook that sees LISTEN runs for every utility statement of the server: their errors
    reach the client exactly as PostgreSQL raises them, position, context and names included."""
    with pytest.raises(psycopg.errors.UndefinedObject) as undefined:
        conn.execute("CREATE TABLE ev_no_such_type (a no_such_type)")
    assert undefined.value.diag.statement_position == "33"
    with pytest.raises(psycopg.errors.RaiseException) as raised:
        conn.execute("DO $$BEGIN RAISE EXCEPTION 'stop' USING TABLE = 'some_table', CONSTRAINT = 'some_check'; END$$")
    diag = raised.value.diag
    assert (diag.message_primary, diag.table_name, diag.constraint_name) == ("stop", "some_table", "some_check")
    assert "PL/pgSQL function inline_code_block line 1 at RAISE" in diag.context
    assert diag.message_detail is None


def test_prepared_transactions_that_change_leases_are_refused(conn):
    with connect(autocommit=False) as tx:
        one(tx, "SELECT lease_acquire('ev:2pc', 'h')")
        try:
            tx.execute("PREPARE TRANSACTION 'lease-2pc'")
            raise AssertionError("PREPARE TRANSACTION was accepted")
        except psycopg.errors.FeatureNotSupported as error:
            assert error.diag.message_primary == "cannot PREPARE a transaction that changed leases"
    assert one(conn, "SELECT count(*) FROM lease_info('ev:2pc')") == 0
