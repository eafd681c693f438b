"""Lifelines (0.5.0): one expiry that many leases share. One renewal keeps them all alive
without rewriting them; a lapse (ttl ran out, or the bound session ended) ends them together,
at once for lease_check and for a takeover, and the expiry worker sweeps the rest with exact
events; closing releases them all, waiting for fences; savepoints, privileges, bad input,
REPEATABLE READ and waiters."""

import contextlib
import datetime
import os
import signal

import psycopg
import pytest

from conftest import (Background, connect, dsn, is_waiting_for_lease, is_waiting_on_lock, one,
                      reload_settings, sqlstate_of, wait_for, worker_pid)

NAME_PREFIX = "ll"

SESSION_LOCK_SPACE = 0x4C53
ACQUIRED_KEYS = {"seq", "event", "resource", "holder", "token", "expires_at", "at", "lifeline"}
RELEASED_KEYS = {"seq", "event", "resource", "holder", "token", "at", "lifeline"}
EXPIRED_KEYS = {"seq", "event", "reason", "resource", "holder", "token", "expires_at", "at", "lifeline"}


# --- helpers -------------------------------------------------------------------------------



def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql, params)
    return raised.value.sqlstate, raised.value.diag.message_primary


def iso(timestamp):
    """A timestamptz as the events spell it."""
    return timestamp.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def open_lifeline(conn, name, ttl="1 min", session_bound=False):
    return one(conn, "SELECT lease_lifeline_open(%s, %s::interval, %s)", (name, ttl, session_bound))


def attach(conn, resource, lifeline, holder="h", data=None):
    return one(conn, "SELECT lease_acquire(%s, %s, lifeline => %s, data => %s::jsonb)",
               (resource, holder, lifeline, data))


def lifeline_expiry(conn, lifeline):
    return one(conn, "SELECT expires_at FROM lease.lifelines WHERE id = %s", (lifeline,))


def wait_past(conn, timestamp, what="the server clock"):
    """Waits until the server's clock is past `timestamp` (no guessed sleep)."""
    wait_for(lambda: one(conn, "SELECT clock_timestamp() > %s", (timestamp,)), what=what)


def lapse(conn, lifeline):
    """Waits until the lifeline's expiry (read once, first: the worker may remove the row) has
    passed on the server's clock."""
    expires_at = lifeline_expiry(conn, lifeline)
    assert expires_at is not None
    wait_past(conn, expires_at, what=f"lifeline {lifeline} to lapse")
    return expires_at


def session_locks(conn, pid):
    return one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = %s AND pid = %s",
               (SESSION_LOCK_SPACE, pid))


def marker(conn, listener, name):
    """Commits a release event for `name` and waits for it: every event committed before it
    has then been delivered (the stream is in commit order)."""
    token = one(conn, "SELECT lease_acquire(%s, 'marker', '1 min')", (name,))
    one(conn, "SELECT lease_release(%s, %s)", (name, token))
    listener.until(lambda got: any(e["resource"] == name and e["event"] == "released" for e in got),
                   what=f"marker {name}")


def summary(events):
    return [(e["event"], e.get("reason"), e["holder"], e["token"], e.get("lifeline")) for e in events]


@contextlib.contextmanager
def worker_stopped(conn):
    """Stops the database's expiry worker (SIGSTOP) outside of any transaction of its own, so
    that nothing is swept behind the test's back; continues it afterwards."""
    pid = worker_pid(conn)
    assert pid is not None
    while True:
        os.kill(pid, signal.SIGSTOP)
        if one(conn, "SELECT xact_start IS NULL FROM pg_stat_activity WHERE pid = %s", (pid,)):
            break
        os.kill(pid, signal.SIGCONT)
        wait_for(lambda: one(conn, "SELECT xact_start IS NULL FROM pg_stat_activity WHERE pid = %s", (pid,)),
                 what="the worker to finish its transaction")
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)




# --- opening, attaching, inspecting ---------------------------------------------------------


def test_open_attach_and_inspect(conn, name):
    conn.execute("SET application_name = 'lifeline-app'")
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    assert isinstance(lifeline, int) and lifeline > 0
    row = conn.execute(
        "SELECT name, owner, ttl, renewed_at = opened_at, expires_at - opened_at, remaining > '50 s', "
        "remaining <= '1 min', session_bound, session_pid, application_name, leases "
        "FROM lease.live_lifelines WHERE id = %s", (lifeline,)).fetchone()
    assert row == (name + "ll", "postgres", datetime.timedelta(minutes=1), True, datetime.timedelta(minutes=1),
                   True, True, False, None, None, 0)
    expires_at = lifeline_expiry(conn, lifeline)
    tokens = [attach(conn, f"{name}r{i}", lifeline) for i in range(3)]
    assert all(tokens) and len(set(tokens)) == 3 and lifeline not in tokens
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 3
    for i, token in enumerate(tokens):
        info = conn.execute(
            "SELECT holder, token, lifeline, expires_at, session_pid, data, released_at FROM lease_info(%s)",
            (f"{name}r{i}",)).fetchone()
        assert info == ("h", token, lifeline, expires_at, None, None, None)
        active = conn.execute(
            "SELECT token, lifeline, expires_at, session_bound, data, released_at FROM lease.active "
            "WHERE resource = %s", (f"{name}r{i}",)).fetchone()
        assert active == (token, lifeline, expires_at, False, None, None)
        # the lease has no expiry of its own: it ends with its lifeline
        assert one(conn, "SELECT expires_at = 'infinity' FROM lease.leases WHERE resource = %s",
                   (f"{name}r{i}",)) is True
        assert one(conn, "SELECT lease_check(%s, %s)", (f"{name}r{i}", token)) is True
    # another holder gets nothing while the lifeline lives
    assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (f"{name}r0",)) is None
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 3


def test_null_ttl_is_the_default_ttl(conn, name):
    conn.execute("SET lease.default_ttl = '2500ms'")
    lifeline = open_lifeline(conn, name + "ll", None)
    assert conn.execute("SELECT ttl, expires_at - opened_at FROM lease.live_lifelines WHERE id = %s",
                        (lifeline,)).fetchone() == (datetime.timedelta(seconds=2.5),) * 2
    # a renewal without ttl uses the lifeline's own ttl, not the (changed) default
    conn.execute("SET lease.default_ttl = '10s'")
    expires_at = one(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,))
    assert conn.execute("SELECT expires_at, expires_at - renewed_at FROM lease.lifelines WHERE id = %s",
                        (lifeline,)).fetchone() == (expires_at, datetime.timedelta(seconds=2.5))
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 0


def test_acquire_any_attaches_to_a_lifeline(conn, name):
    lifeline = open_lifeline(conn, name + "ll")
    resources = [f"{name}r{i}" for i in range(4)]
    taken = conn.execute(
        "SELECT resource, token FROM lease_acquire_any(%s, 'h', max_count => 3, lifeline => %s, "
        "data => '{\"shard\": true}')", (resources, lifeline)).fetchall()
    assert [r for r, _ in taken] == resources[:3]
    expires_at = lifeline_expiry(conn, lifeline)
    for resource, token in taken:
        assert conn.execute("SELECT token, lifeline, expires_at, data FROM lease_info(%s)", (resource,)).fetchone() \
            == (token, lifeline, expires_at, {"shard": True})
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 3
    assert sqlstate_of(conn, "SELECT * FROM lease_acquire_any(%s, 'h', '1 min', lifeline => %s)",
                       ([resources[3]], lifeline)) == "22023"
    assert sqlstate_of(conn, "SELECT * FROM lease_acquire_any(%s, 'h', session_bound => true, lifeline => %s)",
                       ([resources[3]], lifeline)) == "22023"
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 3
    assert sqlstate_of(conn, "SELECT * FROM lease_acquire_any(%s, 'h', lifeline => %s)",
                       ([resources[3]], lifeline)) == "55000"
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resources[3],)) == 0


def test_reacquire_follows_the_new_call(conn, name):
    first = open_lifeline(conn, name + "first")
    second = open_lifeline(conn, name + "second")
    resource = name + "r"
    token = attach(conn, resource, first, data='{"v": 1}')
    # again on the same lifeline, without data: same token, data kept
    assert attach(conn, resource, first) == token
    assert conn.execute("SELECT lifeline, data FROM lease_info(%s)", (resource,)).fetchone() == (first, {"v": 1})
    # on another lifeline: moves there, data replaced
    assert attach(conn, resource, second, data='{"v": 2}') == token
    assert conn.execute("SELECT lifeline, expires_at, data FROM lease_info(%s)", (resource,)).fetchone() \
        == (second, lifeline_expiry(conn, second), {"v": 2})
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (first,)) == 0
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (second,)) == 1
    # with a ttl of its own: detached, expires by its own ttl, data kept
    assert one(conn, "SELECT lease_acquire(%s, 'h', '7 min')", (resource,)) == token
    row = conn.execute("SELECT lifeline, expires_at - renewed_at, data FROM lease_info(%s)", (resource,)).fetchone()
    assert row == (None, datetime.timedelta(minutes=7), {"v": 2})
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (second,)) == 0
    # closing the lifeline it left does not touch it
    assert one(conn, "SELECT lease_lifeline_close(%s)", (second,)) == 0
    assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is True
    # and back onto a lifeline
    assert attach(conn, resource, first) == token
    assert one(conn, "SELECT lifeline FROM lease_info(%s)", (resource,)) == first
    assert one(conn, "SELECT lease_lifeline_close(%s)", (first,)) == 1
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0


def test_lease_renew_of_an_attached_lease_changes_nothing(conn, name, listener):
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    resource = name + "r"
    token = attach(conn, resource, lifeline)
    before = conn.execute("SELECT xmin::text, ctid::text, renewed_at, expires_at::text FROM lease.leases "
                          "WHERE resource = %s", (resource,)).fetchone()
    reload_settings(conn, notify_renewals="on")
    try:
        with connect() as fresh:
            assert one(fresh, "SELECT lease_renew(%s, %s)", (resource, token)) is True
            assert one(fresh, "SELECT lease_renew(%s, %s, '1 hour')", (resource, token)) is True
            marker(fresh, listener, name + "marker")
    finally:
        reload_settings(conn, notify_renewals=None)
    after = conn.execute("SELECT xmin::text, ctid::text, renewed_at, expires_at::text FROM lease.leases "
                         "WHERE resource = %s", (resource,)).fetchone()
    assert after == before
    assert conn.execute("SELECT lifeline, expires_at FROM lease_info(%s)", (resource,)).fetchone() \
        == (lifeline, lifeline_expiry(conn, lifeline))
    assert [e["event"] for e in listener.events_for(resource)] == ["acquired"]
    # a wrong token is still refused
    assert one(conn, "SELECT lease_renew(%s, %s)", (resource, token + 1000000)) is False
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1


# --- renewals ------------------------------------------------------------------------------


def test_one_renewal_keeps_many_leases_alive_without_rewriting_them(conn, name):
    lifeline = open_lifeline(conn, name + "ll", "1 s")
    resources = [f"{name}r{i:02}" for i in range(25)]
    tokens = {r: attach(conn, r, lifeline) for r in resources}
    rows_before = conn.execute("SELECT resource, xmin::text, ctid::text FROM lease.leases "
                               "WHERE resource LIKE %s ORDER BY resource", (name + "%",)).fetchall()
    assert len(rows_before) == 25
    first_expiry = lifeline_expiry(conn, lifeline)
    lifeline_xmin = one(conn, "SELECT xmin::text FROM lease.lifelines WHERE id = %s", (lifeline,))
    renewals = []

    def renew_until_past_the_first_expiry():
        renewals.append(one(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)))
        return one(conn, "SELECT clock_timestamp() > %s + interval '500 ms'", (first_expiry,))

    wait_for(renew_until_past_the_first_expiry, what="a second past the first expiry")
    assert len(renewals) >= 2 and renewals == sorted(renewals)
    # the last renewal moved the expiry to its time + the lifeline's ttl, in the lifeline row only
    row = conn.execute("SELECT expires_at, expires_at - renewed_at, xmin::text <> %s FROM lease.lifelines "
                       "WHERE id = %s", (lifeline_xmin, lifeline)).fetchone()
    assert row == (renewals[-1], datetime.timedelta(seconds=1), True)
    for resource, token in tokens.items():
        assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is True
    rows_after = conn.execute("SELECT resource, xmin::text, ctid::text FROM lease.leases "
                              "WHERE resource LIKE %s ORDER BY resource", (name + "%",)).fetchall()
    assert rows_after == rows_before
    assert one(conn, "SELECT count(*) FROM lease.active WHERE resource LIKE %s AND expires_at = %s",
               (name + "%", renewals[-1])) == 25
    # an explicit ttl
    expires_at = one(conn, "SELECT lease_lifeline_renew(%s, '5 min')", (lifeline,))
    assert conn.execute("SELECT expires_at, expires_at - renewed_at, ttl FROM lease.lifelines WHERE id = %s",
                        (lifeline,)).fetchone() == (expires_at, datetime.timedelta(minutes=5),
                                                    datetime.timedelta(seconds=1))
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 25


def test_renew_returns_now_plus_ttl(conn, name):
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    with connect(autocommit=False) as tx:
        expires_at = one(tx, "SELECT lease_lifeline_renew(%s, '90 s')", (lifeline,))
        renewed_at = one(tx, "SELECT renewed_at FROM lease.lifelines WHERE id = %s", (lifeline,))
        assert expires_at - renewed_at == datetime.timedelta(seconds=90)
        assert renewed_at >= one(tx, "SELECT now()")
        tx.commit()
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 0


# --- lapses --------------------------------------------------------------------------------


def test_a_lapse_ends_every_lease_at_once_and_a_takeover_is_announced_in_order(conn, name, listener):
    """With the worker stopped (nothing is swept), a lapse ends every attached lease at once:
    lease_check is false while their rows are still there, the lifeline is refused, and another
    holder takes one over (expired lifeline_expired, then acquired). The worker then removes the
    others, each announced, and deletes the lifeline."""
    a, b, c, d = (name + s for s in "abcd")
    with worker_stopped(conn):
        lifeline = open_lifeline(conn, name + "ll", "300 ms")
        tokens = {r: attach(conn, r, lifeline) for r in (a, b, c)}
        d_token = attach(conn, d, lifeline)
        expires_at = lapse(conn, lifeline)
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource IN (%s, %s, %s)", (a, b, c)) == 3
        for resource, token in tokens.items():
            assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is False
            assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0
        assert one(conn, "SELECT count(*) FROM lease.active WHERE resource IN (%s, %s, %s)", (a, b, c)) == 0
        assert one(conn, "SELECT count(*) FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 0
        message = f"lifeline {lifeline} has lapsed, was closed, or never existed"
        assert error_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == ("55000", message)
        assert error_of(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == ("55000", message)
        assert error_of(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (name + "d", lifeline)) \
            == ("55000", message)
        new = one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (a,))
        assert new is not None and new > max(tokens.values())
        assert conn.execute("SELECT holder, lifeline FROM lease_info(%s)", (a,)).fetchone() == ("other", None)
        # lease_acquire_any takes one over too
        taken = conn.execute("SELECT resource, token FROM lease_acquire_any(%s, 'other', '1 min')", ([d],)).fetchall()
        assert [r for r, _ in taken] == [d]
        new_d = taken[0][1]
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0,
             what="the worker to delete the lapsed lifeline")
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource IN (%s, %s)", (b, c)) == 0
    marker(conn, listener, name + "marker")
    assert summary(listener.events_for(a)) == [
        ("acquired", None, "h", tokens[a], lifeline),
        ("expired", "lifeline_expired", "h", tokens[a], lifeline),
        ("acquired", None, "other", new, None),
    ]
    for resource in (b, c):
        events = listener.events_for(resource)
        assert summary(events) == [
            ("acquired", None, "h", tokens[resource], lifeline),
            ("expired", "lifeline_expired", "h", tokens[resource], lifeline),
        ]
        acquired, expired = events
        assert set(acquired) == ACQUIRED_KEYS and set(expired) == EXPIRED_KEYS
        assert acquired["expires_at"] == expired["expires_at"] == iso(expires_at)
        assert expired["at"] >= expired["expires_at"]
    assert set(listener.events_for(a)[1]) == EXPIRED_KEYS
    assert summary(listener.events_for(d)) == [
        ("acquired", None, "h", d_token, lifeline),
        ("expired", "lifeline_expired", "h", d_token, lifeline),
        ("acquired", None, "other", new_d, None),
    ]
    assert one(conn, "SELECT lease_release(%s, %s)", (a, new)) is True


def test_the_worker_sweeps_a_lapsed_lifeline_promptly(conn, name, listener):
    lifeline = open_lifeline(conn, name + "ll", "300 ms")
    resources = [f"{name}r{i}" for i in range(6)]
    tokens = {r: attach(conn, r, lifeline) for r in resources}
    expires_at = lifeline_expiry(conn, lifeline)
    listener.until(lambda got: len([e for e in got if e["resource"] in tokens and e["event"] == "expired"]) == 6,
                   what="six expired events")
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0,
             what="the lifeline row to go")
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE %s", (name + "%",)) == 0
    marker(conn, listener, name + "marker")
    for resource, token in tokens.items():
        events = listener.events_for(resource)
        assert summary(events) == [("acquired", None, "h", token, lifeline),
                                   ("expired", "lifeline_expired", "h", token, lifeline)]
        expired = events[1]
        assert set(expired) == EXPIRED_KEYS
        assert expired["expires_at"] == iso(expires_at)
        # promptly: within a few seconds of the lapse
        at = datetime.datetime.strptime(expired["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
        assert expires_at <= at < expires_at + datetime.timedelta(seconds=5)
    assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
    # free for anyone now
    new = one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resources[0],))
    assert new > max(tokens.values())
    one(conn, "SELECT lease_release(%s, %s)", (resources[0], new))


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_an_uncommitted_renewal_holds_off_the_takeover_of_a_lapsing_lifeline(conn, name, listener, outcome):
    """The renewal was made before the lapse but has not committed when the committed expiry
    passes: a takeover finds the lease busy (NULL), and the worker leaves it alone. Committed,
    the lifeline lives on; rolled back, it has lapsed and the lease is taken over."""
    resource = name + "r"
    lifeline = open_lifeline(conn, name + "ll", "1 s")
    token = attach(conn, resource, lifeline)
    committed_expiry = lifeline_expiry(conn, lifeline)
    with connect(autocommit=False) as renewer:
        new_expiry = one(renewer, "SELECT lease_lifeline_renew(%s, '1 min')", (lifeline,))
        wait_past(conn, committed_expiry, what="the committed expiry")
        assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
        assert one(conn, "SELECT count(*) FROM lease_acquire_any(ARRAY[%s], 'other', '1 min')", (resource,)) == 0
        # the worker leaves it alone while the renewal is pending
        wait_past(conn, committed_expiry + datetime.timedelta(milliseconds=1500), what="the worker to have run")
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 1
        assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
        if outcome == "commit":
            renewer.commit()
        else:
            renewer.rollback()
    if outcome == "commit":
        assert lifeline_expiry(conn, lifeline) == new_expiry
        assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
        assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is True
        assert conn.execute("SELECT token, expires_at FROM lease_info(%s)", (resource,)).fetchone() \
            == (token, new_expiry)
        assert one(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) > new_expiry - datetime.timedelta(minutes=1)
        assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
    else:
        assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
        assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is False
        # taken over by the acquire, or swept by the worker first: granted either way
        new = wait_for(lambda: one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)),
                       timeout=10, what="the lease to be granted")
        assert new > token
        marker(conn, listener, name + "marker")
        assert summary(listener.events_for(resource)) == [
            ("acquired", None, "h", token, lifeline),
            ("expired", "lifeline_expired", "h", token, lifeline),
            ("acquired", None, "other", new, None),
        ]
        one(conn, "SELECT lease_release(%s, %s)", (resource, new))


def test_a_fence_keeps_a_takeover_out_past_the_lapse(conn, name):
    resource = name + "r"
    lifeline = open_lifeline(conn, name + "ll", "300 ms")
    token = attach(conn, resource, lifeline)
    with connect(autocommit=False) as writer:
        assert one(writer, "SELECT lease_check(%s, %s)", (resource, token)) is True
        lapse(conn, lifeline)
        assert one(conn, "SELECT lease_acquire(%s, 'taker', '1 min')", (resource,)) is None
        taker = Background(lambda c: one(c, "SELECT lease_acquire(%s, 'taker', '1 min', wait => '1 min')",
                                         (resource,)))
        wait_for(lambda: is_waiting_for_lease(conn, taker.pid), what="the takeover to wait")
        assert not taker.done()
        writer.commit()
    assert taker.result() > token
    assert one(conn, "SELECT holder FROM lease_info(%s)", (resource,)) == "taker"


def test_waiters_are_granted_when_the_lifeline_lapses(conn, name):
    resources = [name + "a", name + "b"]
    lifeline = open_lifeline(conn, name + "ll", "700 ms")
    tokens = [attach(conn, r, lifeline) for r in resources]
    waiters = [Background(lambda c, r=r: one(c, "SELECT lease_acquire(%s, 'waiter', '1 min', wait => '30 s')", (r,)))
               for r in resources]
    for waiter in waiters:
        wait_for(lambda: is_waiting_for_lease(conn, waiter.pid), what="the waiter to wait")
    expires_at = lifeline_expiry(conn, lifeline)
    granted = [waiter.result() for waiter in waiters]
    for resource, token, new in zip(resources, tokens, granted):
        assert new is not None and new > token
        info = conn.execute("SELECT holder, token, lifeline, acquired_at >= %s FROM lease_info(%s)",
                            (expires_at, resource)).fetchone()
        assert info == ("waiter", new, None, True)


def test_a_waiter_is_granted_when_the_lifeline_closes(conn, name):
    resource = name + "r"
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    token = attach(conn, resource, lifeline)
    waiter = Background(lambda c: one(c, "SELECT lease_acquire(%s, 'waiter', '1 min', wait => '30 s')", (resource,)))
    wait_for(lambda: is_waiting_for_lease(conn, waiter.pid), what="the waiter to wait")
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
    assert waiter.result() > token
    assert one(conn, "SELECT holder FROM lease_info(%s)", (resource,)) == "waiter"


# --- closing -------------------------------------------------------------------------------


def test_close_releases_every_lease_and_ends_the_lifeline(conn, name, listener):
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    resources = [f"{name}r{i}" for i in range(3)]
    tokens = {r: attach(conn, r, lifeline) for r in resources}
    # one of them released on its own first: the close counts only what it releases
    assert one(conn, "SELECT lease_release(%s, %s)", (resources[2], tokens[resources[2]])) is True
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 2
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 2
    assert one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE %s", (name + "%",)) == 0
    for resource, token in tokens.items():
        assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is False
    message = f"lifeline {lifeline} has lapsed, was closed, or never existed"
    assert error_of(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == ("55000", message)
    assert error_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == ("55000", message)
    assert sqlstate_of(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (resources[0], lifeline)) == "55000"
    marker(conn, listener, name + "marker")
    for resource, token in tokens.items():
        events = listener.events_for(resource)
        assert summary(events) == [("acquired", None, "h", token, lifeline), ("released", None, "h", token, lifeline)]
        assert set(events[1]) == RELEASED_KEYS
    # an empty lifeline closes with 0
    empty = open_lifeline(conn, name + "empty")
    assert one(conn, "SELECT lease_lifeline_close(%s)", (empty,)) == 0


def test_close_waits_for_a_fence_in_progress(conn, name, listener):
    fenced, other = name + "fenced", name + "other"
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    fenced_token = attach(conn, fenced, lifeline)
    other_token = attach(conn, other, lifeline)
    with connect(autocommit=False) as writer:
        assert one(writer, "SELECT lease_check(%s, %s)", (fenced, fenced_token)) is True
        closer = Background(lambda c: one(c, "SELECT lease_lifeline_close(%s)", (lifeline,)))
        wait_for(lambda: is_waiting_on_lock(conn, closer.pid), what="the close to wait for the fence")
        assert not closer.done()
        # the fenced lease is still held while the writer's transaction lasts
        assert one(writer, "SELECT lease_check(%s, %s)", (fenced, fenced_token)) is True
        writer.commit()
    assert closer.result() == 2
    assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
    assert one(conn, "SELECT lease_check(%s, %s)", (fenced, fenced_token)) is False
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource IN (%s, %s)", (fenced, other)) == 0
    marker(conn, listener, name + "marker")
    assert summary(listener.events_for(fenced)) == [("acquired", None, "h", fenced_token, lifeline),
                                                    ("released", None, "h", fenced_token, lifeline)]
    assert summary(listener.events_for(other)) == [("acquired", None, "h", other_token, lifeline),
                                                   ("released", None, "h", other_token, lifeline)]


def test_a_rolled_back_close_keeps_everything(conn, name, listener):
    resource = name + "r"
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    token = attach(conn, resource, lifeline)
    with connect(autocommit=False) as closer:
        assert one(closer, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
        # a renewal cannot get past the close in progress; it waits for its outcome
        renewer = Background(lambda c: one(c, "SELECT lease_lifeline_renew(%s, '2 min')", (lifeline,)))
        wait_for(lambda: one(conn, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                             (renewer.pid,)), what="the renewal to wait for the close")
        closer.rollback()
    renewed = renewer.result()
    assert lifeline_expiry(conn, lifeline) == renewed
    assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is True
    assert one(conn, "SELECT lifeline FROM lease_info(%s)", (resource,)) == lifeline
    assert attach(conn, name + "late", lifeline) is not None
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 2
    marker(conn, listener, name + "marker")
    assert [e["event"] for e in listener.events_for(resource)] == ["acquired"]
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 2


# --- session-bound lifelines -----------------------------------------------------------------


@pytest.mark.parametrize("ending", ["terminate", "disconnect"])
def test_a_session_bound_lifeline_lapses_with_its_session(conn, name, listener, ending):
    holder = connect()
    holder.execute("SET application_name = 'lifeline-holder'")
    pid = holder.info.backend_pid
    lifeline = open_lifeline(holder, name + "ll", "1 hour", session_bound=True)
    row = conn.execute("SELECT session_bound, session_pid, application_name FROM lease.live_lifelines "
                       "WHERE id = %s", (lifeline,)).fetchone()
    assert row == (True, pid, "lifeline-holder")
    assert session_locks(conn, pid) == 1
    a, b = name + "a", name + "b"
    token_a = attach(holder, a, lifeline)
    token_b = attach(conn, b, lifeline)  # another session of the same role may attach too
    assert conn.execute("SELECT lifeline, session_pid FROM lease_info(%s)", (a,)).fetchone() == (lifeline, None)
    waiter = Background(lambda c: one(c, "SELECT lease_acquire(%s, 'waiter', '1 min', wait => '30 s')", (a,)))
    wait_for(lambda: is_waiting_for_lease(conn, waiter.pid), what="the waiter to wait")
    if ending == "terminate":
        assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    else:
        holder.close()
    new = waiter.result()
    assert new > token_a
    wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
             what="the holder's backend to exit")
    assert one(conn, "SELECT lease_check(%s, %s)", (b, token_b)) is False
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0,
             what="the worker to delete the lifeline")
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (b,)) == 0
    assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
    marker(conn, listener, name + "marker")
    assert summary(listener.events_for(a)) == [
        ("acquired", None, "h", token_a, lifeline),
        ("expired", "lifeline_expired", "h", token_a, lifeline),
        ("acquired", None, "waiter", new, None),
    ]
    assert summary(listener.events_for(b)) == [
        ("acquired", None, "h", token_b, lifeline),
        ("expired", "lifeline_expired", "h", token_b, lifeline),
    ]
    one(conn, "SELECT lease_release(%s, %s)", (a, new))
    if ending == "terminate":
        holder.close()


def dead_sessions_lifeline(conn, name, resources):
    """A session-bound lifeline with `resources` attached, whose session has ended (terminated,
    its backend gone); returns the lifeline's id and the tokens."""
    holder = connect()
    pid = holder.info.backend_pid
    lifeline = open_lifeline(holder, name + "ll", "1 hour", session_bound=True)
    tokens = {r: attach(holder, r, lifeline) for r in resources}
    assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resources[0],)) is None
    assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
             what="the holder's backend to exit")
    holder.close()
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = ANY(%s)", (list(resources),)) \
        == len(resources)
    return lifeline, tokens


def test_lease_check_is_false_as_soon_as_the_bound_session_ends(conn, name):
    """With the worker stopped, the end of the bound session alone ends the leases for the
    fences (lease_check, lease_set_data, lease_renew), as the end of the ttl does. lease_info and
    lease.live_lifelines, which read the tables only (as for a session-bound lease), show them
    until the worker removes them."""
    with worker_stopped(conn):
        lifeline, tokens = dead_sessions_lifeline(conn, name, [name + "a", name + "b"])
        assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
        for resource, token in tokens.items():
            assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is False
            assert one(conn, "SELECT lease_renew(%s, %s)", (resource, token)) is False
            assert one(conn, "SELECT lease_set_data(%s, %s, '{}')", (resource, token)) is False
        # A release finds the lease ended: false, and its row goes (announced as expired).
        resource, token = next(iter(tokens.items()))
        assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is False
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 0,
             what="the worker to end the lifeline")
    for resource in tokens:
        assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0


def test_a_dead_sessions_lifeline_is_taken_over_at_once(conn, name, listener):
    """With the worker stopped, another holder takes the leases of a lifeline whose session
    ended over at once, with lease_acquire and with lease_acquire_any."""
    a, b, c = (name + s for s in "abc")
    with worker_stopped(conn):
        lifeline, tokens = dead_sessions_lifeline(conn, name, [a, b, c])
        assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
        assert sqlstate_of(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (name + "d", lifeline)) == "55000"
        new_a = one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (a,))
        assert new_a is not None
        taken = conn.execute("SELECT resource, token FROM lease_acquire_any(%s, 'other', '1 min')",
                             ([b],)).fetchall()
        assert [r for r, _ in taken] == [b]
        new_b = taken[0][1]
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0,
             what="the worker to delete the lifeline")
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (c,)) == 0
    marker(conn, listener, name + "marker")
    for resource, new in ((a, new_a), (b, new_b)):
        assert summary(listener.events_for(resource)) == [
            ("acquired", None, "h", tokens[resource], lifeline),
            ("expired", "lifeline_expired", "h", tokens[resource], lifeline),
            ("acquired", None, "other", new, None),
        ]
    assert summary(listener.events_for(c)) == [("acquired", None, "h", tokens[c], lifeline),
                                               ("expired", "lifeline_expired", "h", tokens[c], lifeline)]


def test_a_session_bound_lifeline_can_be_renewed_and_closed_from_another_session(conn, name):
    with connect() as holder:
        pid = holder.info.backend_pid
        lifeline = open_lifeline(holder, name + "ll", "1 min", session_bound=True)
        token = attach(holder, name + "r", lifeline)
        assert one(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) is not None
        assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
        assert one(conn, "SELECT lease_check(%s, %s)", (name + "r", token)) is False
        assert one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0
        assert sqlstate_of(holder, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
        assert pid == holder.info.backend_pid


# --- savepoints ---------------------------------------------------------------------------


def test_savepoint_rollbacks_undo_open_attach_and_close(conn, name, listener):
    with connect(autocommit=False) as tx:
        pid = tx.info.backend_pid
        # open undone
        tx.execute("SAVEPOINT s")
        undone = open_lifeline(tx, name + "undone", "1 min", session_bound=True)
        tx.execute("ROLLBACK TO SAVEPOINT s")
        # open kept, attach undone, attach kept
        lifeline = open_lifeline(tx, name + "kept", "1 min")
        tx.execute("SAVEPOINT t")
        attach(tx, name + "undone-attach", lifeline)
        tx.execute("ROLLBACK TO SAVEPOINT t")
        token = attach(tx, name + "r", lifeline)
        tx.commit()
        assert session_locks(conn, pid) == 0
    assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (undone,)) == "55000"
    assert one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (undone,)) == 0
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (name + "undone-attach",)) == 0
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 1
    # close undone
    with connect(autocommit=False) as tx:
        tx.execute("SAVEPOINT s")
        assert one(tx, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
        tx.execute("ROLLBACK TO SAVEPOINT s")
        # the lifeline lives on in the same transaction
        assert one(tx, "SELECT lease_lifeline_renew(%s)", (lifeline,)) is not None
        tx.commit()
    assert one(conn, "SELECT lease_check(%s, %s)", (name + "r", token)) is True
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 1
    # a renewal undone leaves the expiry as it was
    expires_at = lifeline_expiry(conn, lifeline)
    with connect(autocommit=False) as tx:
        tx.execute("SAVEPOINT s")
        one(tx, "SELECT lease_lifeline_renew(%s, '10 min')", (lifeline,))
        tx.execute("ROLLBACK TO SAVEPOINT s")
        tx.commit()
    assert lifeline_expiry(conn, lifeline) == expires_at
    marker(conn, listener, name + "marker")
    assert listener.events_for(name + "undone-attach") == []
    assert [e["event"] for e in listener.events_for(name + "r")] == ["acquired"]
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1


def test_open_attach_renew_and_close_in_one_transaction(conn, name, listener):
    with connect(autocommit=False) as tx:
        lifeline = open_lifeline(tx, name + "ll", "1 min")
        token = attach(tx, name + "r", lifeline)
        assert one(tx, "SELECT lease_lifeline_renew(%s)", (lifeline,)) is not None
        assert one(tx, "SELECT lease_check(%s, %s)", (name + "r", token)) is True
        # not visible to others before the commit
        assert one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0
        assert one(tx, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
        tx.commit()
    assert one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0
    marker(conn, listener, name + "marker")
    assert summary(listener.events_for(name + "r")) == [("acquired", None, "h", token, lifeline),
                                                        ("released", None, "h", token, lifeline)]


def test_a_failed_transaction_leaves_no_lifeline(conn, name):
    with connect(autocommit=False) as tx:
        lifeline = open_lifeline(tx, name + "ll", "1 min")
        attach(tx, name + "r", lifeline)
        with pytest.raises(psycopg.errors.DivisionByZero):
            tx.execute("SELECT 1 / 0")
        tx.rollback()
    assert one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (name + "r",)) == 0


# --- privileges ---------------------------------------------------------------------------

ROLES = ("ll_alice", "ll_bob", "ll_carol")


@pytest.fixture
def roles(conn):
    for role in reversed(ROLES):
        conn.execute(f"DROP ROLE IF EXISTS {role}")
    for role in ROLES:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute("GRANT ll_alice TO ll_carol")
    yield
    conn.execute("DELETE FROM lease.leases WHERE owner IN ('ll_alice'::regrole, 'll_bob'::regrole, 'll_carol'::regrole)")
    conn.execute("DELETE FROM lease.lifelines WHERE owner IN ('ll_alice'::regrole, 'll_bob'::regrole, 'll_carol'::regrole)")
    for role in reversed(ROLES):
        conn.execute(f"DROP ROLE {role}")


def connect_as(role, autocommit=True):
    return psycopg.connect(dsn().replace("user=postgres", f"user={role}"), autocommit=autocommit)


def test_only_members_of_the_opening_role_may_use_a_lifeline(conn, name, roles):
    with connect_as("ll_alice") as alice, connect_as("ll_bob") as bob, connect_as("ll_carol") as carol:
        lifeline = open_lifeline(alice, name + "ll", "1 min")
        token = attach(alice, name + "a", lifeline, holder="alice")
        assert one(conn, "SELECT owner FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == "ll_alice"
        denied = ("42501", f'permission denied for lifeline {lifeline} opened by role "ll_alice"')
        assert error_of(bob, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == denied
        assert error_of(bob, "SELECT lease_lifeline_renew(%s, '1 hour')", (lifeline,)) == denied
        assert error_of(bob, "SELECT lease_lifeline_close(%s)", (lifeline,)) == denied
        assert error_of(bob, "SELECT lease_acquire(%s, 'bob', lifeline => %s)", (name + "b", lifeline)) == denied
        assert sqlstate_of(bob, "SELECT * FROM lease_acquire_any(ARRAY[%s], 'bob', lifeline => %s)",
                           (name + "b", lifeline)) == "42501"
        assert one(conn, "SELECT count(*) FROM lease_info(%s)", (name + "b",)) == 0
        # bob does not see it; carol (a member of alice) and the superuser do
        assert one(bob, "SELECT count(*) FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 0
        assert one(carol, "SELECT count(*) FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 1
        assert one(alice, "SELECT count(*) FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 1
        # members may renew and attach
        assert one(carol, "SELECT lease_lifeline_renew(%s)", (lifeline,)) is not None
        carol_token = attach(carol, name + "c", lifeline, holder="carol")
        assert carol_token is not None
        assert one(conn, "SELECT lease_lifeline_renew(%s)", (lifeline,)) is not None
        # bob's own lifeline: alice may not use it either
        bobs = open_lifeline(bob, name + "bobs", "1 min")
        assert error_of(alice, "SELECT lease_lifeline_renew(%s)", (bobs,)) == \
            ("42501", f'permission denied for lifeline {bobs} opened by role "ll_bob"')
        assert sqlstate_of(carol, "SELECT lease_lifeline_close(%s)", (bobs,)) == "42501"
        # nothing changed by the refusals
        assert one(alice, "SELECT lease_check(%s, %s)", (name + "a", token)) is True
        assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 2
        assert one(carol, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 2
        assert one(bob, "SELECT lease_lifeline_close(%s)", (bobs,)) == 0


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("sql, params, sqlstate", [
    ("SELECT lease_lifeline_open(NULL)", (), "22004"),
    ("SELECT lease_lifeline_open(NULL, '1 min')", (), "22004"),
    ("SELECT lease_lifeline_open('')", (), "22023"),
    ("SELECT lease_lifeline_open(' \t ')", (), "22023"),
    ("SELECT lease_lifeline_open(%s)", ("x" * 257,), "22023"),
    ("SELECT lease_lifeline_open(%s)", ("é" * 129,), "22023"),
    ("SELECT lease_lifeline_open('x', '0 s')", (), "22023"),
    ("SELECT lease_lifeline_open('x', '-1 s')", (), "22023"),
    ("SELECT lease_lifeline_open('x', '1 day 1 second')", (), "22023"),
    ("SELECT lease_lifeline_renew(NULL)", (), "22004"),
    ("SELECT lease_lifeline_renew(0)", (), "22023"),
    ("SELECT lease_lifeline_renew(-7)", (), "22023"),
    ("SELECT lease_lifeline_renew(9223372036854775807)", (), "55000"),
    ("SELECT lease_lifeline_close(NULL)", (), "22004"),
    ("SELECT lease_lifeline_close(0)", (), "22023"),
    ("SELECT lease_lifeline_close(-1)", (), "22023"),
    ("SELECT lease_lifeline_close(9223372036854775807)", (), "55000"),
    ("SELECT lease_acquire('ll:bad', 'h', lifeline => 0)", (), "22023"),
    ("SELECT lease_acquire('ll:bad', 'h', lifeline => -3)", (), "22023"),
    ("SELECT lease_acquire('ll:bad', 'h', lifeline => 9223372036854775807)", (), "55000"),
    ("SELECT * FROM lease_acquire_any(ARRAY['ll:bad'], 'h', lifeline => 9223372036854775807)", (), "55000"),
])
def test_bad_input_is_rejected(conn, sql, params, sqlstate):
    assert sqlstate_of(conn, sql, params) == sqlstate
    assert one(conn, "SELECT count(*) FROM lease_info('ll:bad')") == 0


def test_bad_input_against_a_live_lifeline_changes_nothing(conn, name):
    lifeline = open_lifeline(conn, name + "ll", "1 min")
    expires_at = lifeline_expiry(conn, lifeline)
    resource = name + "r"
    cases = [
        ("SELECT lease_lifeline_renew(%s, '0 s')", (lifeline,), "22023"),
        ("SELECT lease_lifeline_renew(%s, '-5 min')", (lifeline,), "22023"),
        ("SELECT lease_lifeline_renew(%s, '2 days')", (lifeline,), "22023"),
        ("SELECT lease_acquire(%s, 'h', '1 min', lifeline => %s)", (resource, lifeline), "22023"),
        ("SELECT lease_acquire(%s, 'h', NULL, NULL, true, %s)", (resource, lifeline), "22023"),
        ("SELECT lease_acquire(%s, NULL, lifeline => %s)", (resource, lifeline), "22004"),
        ("SELECT lease_acquire(%s, 'h', lifeline => %s, data => %s::jsonb)",
         (resource, lifeline, '"' + "x" * 600 + '"'), "22023"),
    ]
    for sql, params, sqlstate in cases:
        assert (sql, sqlstate_of(conn, sql, params)) == (sql, sqlstate)
    assert lifeline_expiry(conn, lifeline) == expires_at
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 0
    # names of exactly 256 bytes are fine
    assert open_lifeline(conn, "é" * 128, "1 s") > 0
    one(conn, "DELETE FROM lease.lifelines WHERE name = %s RETURNING 1", ("é" * 128,))
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 0


def test_a_lease_token_is_not_a_lifeline(conn, name):
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (name + "r",))
    assert sqlstate_of(conn, "SELECT lease_lifeline_renew(%s)", (token,)) == "55000"
    assert sqlstate_of(conn, "SELECT lease_lifeline_close(%s)", (token,)) == "55000"
    assert sqlstate_of(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (name + "s", token)) == "55000"
    assert one(conn, "SELECT lease_check(%s, %s)", (name + "r", token)) is True


# --- isolation levels ---------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_lifelines_under_snapshot_isolation(conn, name, isolation):
    resource = name + "r"
    with connect(autocommit=False) as tx:
        tx.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        lifeline = open_lifeline(tx, name + "ll", "1 min")
        token = attach(tx, resource, lifeline, data='{"n": 1}')
        assert one(tx, "SELECT lease_lifeline_renew(%s)", (lifeline,)) is not None
        assert one(tx, "SELECT lease_check(%s, %s)", (resource, token)) is True
        assert one(tx, "SELECT lifeline FROM lease_info(%s)", (resource,)) == lifeline
        tx.commit()
    with connect(autocommit=False) as tx:
        tx.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        assert one(tx, "SELECT lease_check(%s, %s)", (resource, token)) is True
        assert one(tx, "SELECT lease_lifeline_renew(%s, '2 min')", (lifeline,)) is not None
        assert one(tx, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (resource, lifeline)) == token
        tx.commit()
    with connect(autocommit=False) as tx:
        tx.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        assert one(tx, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
        tx.commit()
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0


def test_a_lapse_is_seen_inside_an_old_repeatable_read_snapshot(conn, name):
    resource = name + "r"
    lifeline = open_lifeline(conn, name + "ll", "400 ms")
    token = attach(conn, resource, lifeline)
    with connect(autocommit=False) as tx:
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert one(tx, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 1  # snapshot taken
        lapse(conn, lifeline)
        assert one(tx, "SELECT lease_check(%s, %s)", (resource, token)) is False
        assert sqlstate_of(tx, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
        tx.rollback()


def test_a_replaced_key_of_the_lifeline_table_is_served_through_sql(conn, name):
    """The direct read of a lifeline serves only the table as created: with its primary key
    replaced (by one on (name, id)), every call answers as before, through SQL."""
    lifeline = one(conn, "SELECT lease_lifeline_open(%s, '1 min')", (name + "ll",))
    token = one(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (name + "r", lifeline))
    conn.execute("ALTER TABLE lease.lifelines DROP CONSTRAINT lifelines_pkey, ADD PRIMARY KEY (name, id)")
    try:
        with connect() as c:
            assert one(c, "SELECT lease_check(%s, %s)", (name + "r", token)) is True
            assert one(c, "SELECT lease_lifeline_renew(%s) > now()", (lifeline,)) is True
            assert one(c, "SELECT lease_acquire(%s, 'other', '1 min')", (name + "r",)) is None
            assert one(c, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
            assert sqlstate_of(c, "SELECT lease_lifeline_renew(%s)", (lifeline,)) == "55000"
    finally:
        conn.execute("ALTER TABLE lease.lifelines DROP CONSTRAINT lifelines_pkey, ADD PRIMARY KEY (id)")
