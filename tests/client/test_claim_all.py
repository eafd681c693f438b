"""lease_acquire_all (0.6.0) under concurrency: a waiting claim queues once, with one ticket in
the queue of every resource it names, holds none of them while it waits (what it is owed is
refused to calls without wait), is woken by the release it waits for, is served first come first
served with single acquires and other claims, and leaves every queue when its wait, lock_timeout,
a cancel or the end of its session ends it. Many claimers on overlapping lists in any order
never deadlock, never hold a resource together and never hold part of a claim.
(The plain cases are in tests/regress/sql/claim_all.sql.)"""

import random
import threading
import time

import psycopg
import pytest
from psycopg import sql

from conftest import Background, connect, is_waiting_for_lease, one, wait_for

NAME_PREFIX = "ca"

# How long a wait that should end at once may take: a claim that is not woken sleeps out its
# wait (30 s) instead. A margin of seconds, to tell a wait that ended from one that hangs.
PROMPTLY = 10.0


# --- helpers -------------------------------------------------------------------------------


def claim(conn, resources, holder, ttl="1 min", wait=None, session_bound=False):
    """lease_acquire_all's rows: [(resource, token), ...]."""
    return conn.execute(
        "SELECT resource, token FROM lease_acquire_all(%s::text[], %s, %s::interval, %s::interval, %s)",
        (list(resources), holder, ttl, wait, session_bound),
    ).fetchall()


def claimer(resources, holder, wait="30 s", ttl="1 min"):
    """A claim with `wait`, on a connection of its own, in the background."""
    return Background(lambda c: claim(c, resources, holder, ttl, wait))


def acquire(conn, resource, holder, ttl="1 min", wait=None):
    return one(conn, "SELECT lease_acquire(%s, %s, %s::interval, %s::interval)", (resource, holder, ttl, wait))


def acquirer(resource, holder, wait="30 s", ttl="1 min"):
    """A single lease_acquire with `wait`, in the background."""
    return Background(lambda c: acquire(c, resource, holder, ttl, wait))


def release(conn, resource, token):
    return one(conn, "SELECT lease_release(%s, %s)", (resource, token))


def lease_of(conn, resource):
    """(holder, token) of the live lease on `resource`, None when nobody holds it."""
    return conn.execute("SELECT holder, token FROM lease_info(%s)", (resource,)).fetchone()


def waiters(conn, resource):
    """How many waiting calls are queued for `resource`, held or not (lease.active shows only
    held resources; this is the count it joins)."""
    return one(conn, "SELECT coalesce(sum(waiters), 0)::int FROM lease._waiter_counts()"
                     " WHERE resource_key = lease._resource_key(%s)", (resource,))


def active_waiters(conn, resource):
    """lease.active's waiters column of the held `resource`."""
    return one(conn, "SELECT waiters FROM lease.active WHERE resource = %s", (resource,))


def wait_until_waiting(conn, background, what):
    wait_for(lambda: is_waiting_for_lease(conn, background.pid), what=what)


def session_locks(conn, pid):
    """How many session locks of leases (their lock space: objsubid 0x4C53) `pid` holds."""
    return one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = %s AND pid = %s",
               (0x4C53, pid))


def stats(conn):
    return conn.execute("SELECT acquired, handovers, conflicts FROM lease.stats").fetchone()


def marker(conn, listener, resource):
    """Commits a release of `resource` and waits for its event: every event committed before it
    has then been delivered (the stream is in commit order)."""
    token = acquire(conn, resource, "marker")
    release(conn, resource, token)
    listener.until(lambda got: any(e["resource"] == resource and e["event"] == "released" for e in got),
                   what=f"marker {resource}")


# --- a waiting claim holds nothing and is woken ----------------------------------------------


def test_a_waiting_claim_holds_nothing_and_is_woken_by_the_release(conn, name):
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h")
    c = claimer([a, b], "c")
    wait_until_waiting(conn, c, "the claim to wait")
    # While it waits, a (free) is held by nobody, and owed to the claim: no call without wait
    # gets it, single, any or all.
    assert lease_of(conn, a) is None
    assert acquire(conn, a, "x") is None
    assert conn.execute("SELECT * FROM lease_acquire_any(ARRAY[%s], 'x')", (a,)).fetchall() == []
    assert claim(conn, [a], "x") == []
    assert lease_of(conn, a) is None
    assert lease_of(conn, b) == ("h", held)
    assert (waiters(conn, a), waiters(conn, b), active_waiters(conn, b)) == (1, 1, 1)
    assert not c.done()
    acquired_before, handovers_before, _ = stats(conn)
    released_at = time.monotonic()
    assert release(conn, b, held) is True
    rows = c.result(timeout=PROMPTLY)
    took = time.monotonic() - released_at
    # woken by the release, not by its wait (30 s) or the old lease's expiry (1 min) running out
    assert took < PROMPTLY, f"the claim returned {took:.1f} s after the release"
    assert [resource for resource, _ in rows] == [a, b]
    tokens = dict(rows)
    assert tokens[a] > held and tokens[b] > held and tokens[a] != tokens[b]
    assert lease_of(conn, a) == ("c", tokens[a])
    assert lease_of(conn, b) == ("c", tokens[b])
    assert (waiters(conn, a), waiters(conn, b)) == (0, 0)
    acquired_after, handovers_after, _ = stats(conn)
    # exactly the two grants were committed (none of its rolled-back attempts); one handover
    assert (acquired_after - acquired_before, handovers_after - handovers_before) == (2, 1)
    assert release(conn, a, tokens[a]) is True
    assert release(conn, b, tokens[b]) is True


def test_the_attempts_of_a_waiting_claim_announce_nothing(conn, name, listener):
    # Every attempt of the claim takes a (free) before it finds b held, and is rolled back:
    # only its final grant is announced, with the token it returned.
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h")
    c = claimer([a, b], "c")
    wait_until_waiting(conn, c, "the claim to wait")
    assert release(conn, b, held) is True
    tokens = dict(c.result(timeout=PROMPTLY))
    assert release(conn, a, tokens[a]) is True
    assert release(conn, b, tokens[b]) is True
    marker(conn, listener, name + "marker")

    def summary(resource):
        return [(e["event"], e["holder"], e["token"]) for e in listener.events_for(resource)]

    assert summary(a) == [("acquired", "c", tokens[a]), ("released", "c", tokens[a])]
    assert summary(b) == [("acquired", "h", held), ("released", "h", held),
                          ("acquired", "c", tokens[b]), ("released", "c", tokens[b])]


def test_a_waiting_claim_is_granted_when_the_lease_expires(conn, name):
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h", ttl="300 ms")
    rows = claim(conn, [a, b], "c", wait="30 s")
    assert [resource for resource, _ in rows] == [a, b]
    assert all(token > held for _, token in rows)
    assert lease_of(conn, b) == ("c", dict(rows)[b])


@pytest.mark.parametrize("how", ["force_release", "disconnect", "terminate"])
def test_a_waiting_claim_is_woken_when_the_lease_ends_otherwise(conn, name, how):
    # a revocation, and the end of a session-bound holder's session (the worker ends its lease)
    a, b = name + "a", name + "b"
    holder = connect()
    held = one(holder, "SELECT lease_acquire(%s, 'h', '10 min', session_bound => true)", (b,))
    c = claimer([a, b], "c")
    wait_until_waiting(conn, c, "the claim to wait")
    assert not c.done()
    if how == "force_release":
        assert one(conn, "SELECT lease_force_release(%s)", (b,)) is True
    elif how == "disconnect":
        holder.close()
    else:
        assert one(conn, "SELECT pg_terminate_backend(%s)", (holder.info.backend_pid,)) is True
    rows = c.result(timeout=PROMPTLY)
    assert [resource for resource, _ in rows] == [a, b]
    assert all(token > held for _, token in rows)
    holder.close()


def test_a_waiting_claim_of_sixteen_resources(conn, name):
    resources = [f"{name}r{i:02}" for i in range(16)]
    held = acquire(conn, resources[7], "h")
    c = claimer(resources + resources[:3], "c")  # duplicates count once
    wait_until_waiting(conn, c, "the claim to wait")
    assert [waiters(conn, resource) for resource in resources] == [1] * 16
    assert active_waiters(conn, resources[7]) == 1
    assert [lease_of(conn, resource) for resource in resources] == [None] * 7 + [("h", held)] + [None] * 8
    assert release(conn, resources[7], held) is True
    rows = c.result(timeout=PROMPTLY)
    assert [resource for resource, _ in rows] == resources
    assert [lease_of(conn, resource) for resource in resources] == [("c", token) for _, token in rows]
    assert [waiters(conn, resource) for resource in resources] == [0] * 16


def test_a_session_bound_waiting_claim_binds_only_what_it_got(conn, name):
    # Its rolled-back attempts leave no session lock behind; the granted leases are bound to its
    # session and end with it, and the waiter behind it is then served.
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h")
    granted = threading.Event()
    finish = threading.Event()

    def run(c):
        rows = claim(c, [a, b], "c", wait="30 s", session_bound=True)
        granted.set()
        finish.wait(60)
        return rows

    c = Background(run)
    try:
        wait_until_waiting(conn, c, "the claim to wait")
        assert session_locks(conn, c.pid) == 0
        assert release(conn, b, held) is True
        assert granted.wait(PROMPTLY)
        assert session_locks(conn, c.pid) == 2
        info = conn.execute("SELECT resource, holder, session_pid FROM lease.leases WHERE resource IN (%s, %s)"
                            " ORDER BY resource", (a, b)).fetchall()
        assert info == [(a, "c", c.pid), (b, "c", c.pid)]
        s = acquirer(a, "s")
        wait_until_waiting(conn, s, "the single acquire to wait")
    finally:
        finish.set()
    rows = c.result(timeout=PROMPTLY)  # and its connection is closed
    token = s.result(timeout=PROMPTLY)
    assert token > dict(rows)[a]
    assert lease_of(conn, a) == ("s", token)
    wait_for(lambda: lease_of(conn, b) is None, what="b's session-bound lease to end")


# --- first come, first served with single acquires and other claims --------------------------


def test_a_claim_is_served_before_a_single_waiter_that_came_later(conn, name):
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h")
    c = claimer([a, b], "c")
    wait_until_waiting(conn, c, "the claim to wait")
    s = acquirer(a, "s")
    wait_until_waiting(conn, s, "the single acquire to wait")
    assert (waiters(conn, a), waiters(conn, b)) == (2, 1)
    # a is free, but the claim came first: the single waiter does not get it
    assert lease_of(conn, a) is None
    assert release(conn, b, held) is True
    tokens = dict(c.result(timeout=PROMPTLY))
    assert lease_of(conn, a) == ("c", tokens[a])
    # the single waiter goes on waiting, now for the claim's lease
    assert not s.done()
    assert waiters(conn, a) == 1
    wait_until_waiting(conn, s, "the single acquire to wait again")
    assert release(conn, a, tokens[a]) is True
    token = s.result(timeout=PROMPTLY)
    assert token > tokens[a]
    assert lease_of(conn, a) == ("s", token)
    assert release(conn, a, token) is True
    assert release(conn, b, tokens[b]) is True


def test_a_single_waiter_that_came_first_is_served_before_a_claim(conn, name):
    a, b = name + "a", name + "b"
    held = acquire(conn, a, "h")
    s = acquirer(a, "s")
    wait_until_waiting(conn, s, "the single acquire to wait")
    c = claimer([a, b], "c")
    wait_until_waiting(conn, c, "the claim to wait")
    # b is free, and nobody else waits for it, but it is owed to the claim
    assert acquire(conn, b, "x") is None
    assert lease_of(conn, b) is None
    assert release(conn, a, held) is True
    token = s.result(timeout=PROMPTLY)
    assert token > held
    assert lease_of(conn, a) == ("s", token)
    # the claim goes on waiting (for a), still holding nothing
    assert not c.done()
    wait_until_waiting(conn, c, "the claim to wait again")
    assert lease_of(conn, b) is None
    assert release(conn, a, token) is True
    tokens = dict(c.result(timeout=PROMPTLY))
    assert tokens[a] > token
    assert lease_of(conn, a) == ("c", tokens[a])
    assert lease_of(conn, b) == ("c", tokens[b])
    assert release(conn, a, tokens[a]) is True
    assert release(conn, b, tokens[b]) is True


def test_claims_in_opposite_orders_are_served_in_the_order_they_came(conn, name):
    a, b = name + "a", name + "b"
    held = {a: acquire(conn, a, "h"), b: acquire(conn, b, "h")}
    first = claimer([a, b], "first")
    wait_until_waiting(conn, first, "the first claim to wait")
    second = claimer([b, a], "second")
    wait_until_waiting(conn, second, "the second claim to wait")
    assert (active_waiters(conn, a), active_waiters(conn, b)) == (2, 2)
    with connect(autocommit=False) as releaser:
        assert release(releaser, a, held[a]) is True
        assert release(releaser, b, held[b]) is True
    first_tokens = dict(first.result(timeout=PROMPTLY))
    assert [first_tokens.get(r, 0) > held[r] for r in (a, b)] == [True, True]
    assert not second.done()
    wait_until_waiting(conn, second, "the second claim to wait again")
    assert lease_of(conn, a) == ("first", first_tokens[a])
    assert lease_of(conn, b) == ("first", first_tokens[b])
    with connect(autocommit=False) as releaser:
        assert release(releaser, b, first_tokens[b]) is True
        assert release(releaser, a, first_tokens[a]) is True
    rows = second.result(timeout=PROMPTLY)
    assert [resource for resource, _ in rows] == [b, a]
    second_tokens = dict(rows)
    assert second_tokens[a] > first_tokens[a] and second_tokens[b] > first_tokens[b]
    assert release(conn, a, second_tokens[a]) is True
    assert release(conn, b, second_tokens[b]) is True


# --- ended waits leave every queue and hold nothing ------------------------------------------


def test_a_claim_whose_wait_runs_out_holds_nothing_and_leaves_the_queues(conn, name):
    a, b, c_ = name + "a", name + "b", name + "c"
    held = acquire(conn, b, "h")
    c = claimer([a, b, c_], "c", wait="4 s")
    wait_until_waiting(conn, c, "the claim to wait")
    # counted once on every resource it names, held (lease.active) or not
    assert (waiters(conn, a), waiters(conn, b), waiters(conn, c_)) == (1, 1, 1)
    assert active_waiters(conn, b) == 1
    s = acquirer(a, "s")  # behind the claim
    wait_until_waiting(conn, s, "the single acquire to wait")
    assert waiters(conn, a) == 2
    assert c.result(timeout=30) == []
    # the single waiter behind it is served at once: a was free all along
    token = s.result(timeout=PROMPTLY)
    assert lease_of(conn, a) == ("s", token)
    assert lease_of(conn, c_) is None
    assert (waiters(conn, a), waiters(conn, b), waiters(conn, c_)) == (0, 0, 0)
    assert active_waiters(conn, b) == 0
    # nothing queued is left on c: a call without wait gets it
    other = acquire(conn, c_, "x")
    assert other is not None
    assert release(conn, c_, other) is True
    assert release(conn, a, token) is True
    assert release(conn, b, held) is True


@pytest.mark.parametrize(
    "setting, error",
    [
        ("SET lock_timeout = '100ms'", psycopg.errors.LockNotAvailable),  # 55P03
        ("SET statement_timeout = '200ms'", psycopg.errors.QueryCanceled),  # 57014
    ],
)
def test_timeouts_end_a_waiting_claim_cleanly(conn, name, setting, error):
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h")
    with connect() as w:
        w.execute(setting)
        started = time.monotonic()
        with pytest.raises(error) as raised:
            claim(w, [a, b], "c", wait="30 s")
        assert time.monotonic() - started < PROMPTLY
        assert raised.value.sqlstate == {psycopg.errors.LockNotAvailable: "55P03",
                                         psycopg.errors.QueryCanceled: "57014"}[error]
        assert one(w, "SELECT 1") == 1  # the connection is still usable
        assert one(w, "SELECT count(*) FROM lease.leases WHERE holder = 'c' AND resource LIKE %s", (name + "%",)) == 0
    assert lease_of(conn, a) is None
    assert (waiters(conn, a), waiters(conn, b)) == (0, 0)
    token = acquire(conn, a, "x")  # not owed to anyone any more
    assert token is not None
    assert release(conn, a, token) is True
    assert release(conn, b, held) is True


def test_a_lock_timeout_caught_by_plpgsql_leaves_the_queues(conn, name):
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h")
    with connect() as w:
        w.execute("SET lock_timeout = '100ms'")
        w.execute(sql.SQL("""
            DO $$ BEGIN
                PERFORM * FROM lease_acquire_all(ARRAY[{}, {}], 'c', '1 min', '30 s');
                RAISE EXCEPTION 'not reached';
            EXCEPTION WHEN lock_not_available THEN
                RAISE NOTICE 'caught';
            END $$""").format(sql.Literal(a), sql.Literal(b)))
        # the session goes on, out of every queue, holding nothing
        assert (waiters(w, a), waiters(w, b)) == (0, 0)
        assert one(w, "SELECT count(*) FROM lease.leases WHERE holder = 'c' AND resource LIKE %s", (name + "%",)) == 0
        token = acquire(w, a, "x")
        assert token is not None
        assert release(w, a, token) is True
    assert release(conn, b, held) is True


def test_a_cancelled_claim_holds_nothing_and_leaves_the_queues(conn, name):
    a, b = name + "a", name + "b"
    held = acquire(conn, b, "h")
    c = claimer([a, b], "c")
    wait_until_waiting(conn, c, "the claim to wait")
    s = acquirer(a, "s")  # behind the claim
    wait_until_waiting(conn, s, "the single acquire to wait")
    assert one(conn, "SELECT pg_cancel_backend(%s)", (c.pid,)) is True
    with pytest.raises(psycopg.errors.QueryCanceled) as raised:
        c.result(timeout=PROMPTLY)
    assert raised.value.sqlstate == "57014"
    token = s.result(timeout=PROMPTLY)  # served at once: a was free all along
    assert lease_of(conn, a) == ("s", token)
    assert (waiters(conn, a), waiters(conn, b)) == (0, 0)
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE holder = 'c' AND resource LIKE %s", (name + "%",)) == 0
    assert lease_of(conn, b) == ("h", held)
    assert release(conn, a, token) is True
    assert release(conn, b, held) is True


def test_a_claim_whose_session_ends_while_waiting_leaves_the_queues(conn, name):
    a, b, c_ = name + "a", name + "b", name + "c"
    held = acquire(conn, b, "h")
    c = claimer([a, b, c_], "c")
    wait_until_waiting(conn, c, "the claim to wait")
    s = acquirer(a, "s")  # behind the claim on a
    wait_until_waiting(conn, s, "the single acquire to wait")
    t = claimer([c_, name + "d"], "t")  # behind the claim on c
    wait_until_waiting(conn, t, "the second claim to wait")
    assert one(conn, "SELECT pg_terminate_backend(%s)", (c.pid,)) is True
    with pytest.raises(psycopg.OperationalError):
        c.result(timeout=PROMPTLY)
    token = s.result(timeout=PROMPTLY)
    assert lease_of(conn, a) == ("s", token)
    rows = t.result(timeout=PROMPTLY)
    assert [resource for resource, _ in rows] == [c_, name + "d"]
    assert (waiters(conn, a), waiters(conn, b), waiters(conn, c_)) == (0, 0, 0)
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE holder = 'c' AND resource LIKE %s", (name + "%",)) == 0
    assert lease_of(conn, b) == ("h", held)


# --- a claim that includes the caller's own lease ---------------------------------------------


def test_a_claim_is_not_held_up_by_waiters_for_a_lease_it_already_holds(conn, name):
    # Re-acquiring a lease one holds is not a grant and is unaffected by the queue (a single
    # lease_acquire with wait is answered at once, and so is a claim whose other resources are
    # free). A claim that must wait for another resource does not queue for its own lease
    # (behind s, who waits for that lease, it would never be the head of every queue it is in).
    a, b = name + "a", name + "b"
    own = acquire(conn, a, "c")  # c holds a
    s = acquirer(a, "s")  # s waits for c's lease on a
    wait_until_waiting(conn, s, "the single acquire to wait")
    held = acquire(conn, b, "h")
    assert acquire(conn, a, "c", wait="30 s") == own  # a re-acquire with wait: at once
    c = claimer([a, b], "c", wait="5 s")  # c wants b too, keeping a
    wait_until_waiting(conn, c, "the claim to wait")
    released_at = time.monotonic()
    assert release(conn, b, held) is True
    rows = c.result(timeout=30)
    took = time.monotonic() - released_at
    try:
        # expected: granted at once, a with its own token; found: no rows, after the whole wait
        assert [resource for resource, _ in rows] == [a, b], f"{rows} after {took:.1f} s"
        assert dict(rows)[a] == own
        assert took < PROMPTLY
    finally:
        s.connection.cancel()
        with pytest.raises(psycopg.errors.QueryCanceled):
            s.result(timeout=PROMPTLY)


def test_a_claim_by_a_holder_passes_an_earlier_claim_that_waits_for_its_lease(conn, name):
    # c holds a; w claims [a, b] with wait and waits for c's a (w is first in b's queue). c then
    # claims [a, b] too: giving way to w on b would make the two wait for each other until one
    # wait ran out, so c does not give way to a waiter for a lease it holds. w is served after c.
    a, b = name + "a", name + "b"
    own = acquire(conn, a, "c")
    w = claimer([a, b], "w")
    wait_until_waiting(conn, w, "the earlier claim to wait")
    assert acquire(conn, b, "x") is None  # b is owed to w
    rows = claim(conn, [a, b], "c", wait="30 s")
    assert [resource for resource, _ in rows] == [a, b]
    assert dict(rows)[a] == own
    assert is_waiting_for_lease(conn, w.pid)
    assert release(conn, a, own) is True
    assert release(conn, b, dict(rows)[b]) is True
    granted = w.result(timeout=PROMPTLY)
    assert [resource for resource, _ in granted] == [a, b]
    assert min(token for _, token in granted) > dict(rows)[b]


# --- many claimers, overlapping lists, any order ------------------------------------------------


WORKERS = 8
ITERATIONS = 60
RESOURCES = 6


def test_many_claimers_never_deadlock_overlap_or_hold_part_of_a_claim(conn, name):
    resources = [f"{name}r{i}" for i in range(RESOURCES)]
    holders_table, log_table = "claim_all_holders", "claim_all_log"
    conn.execute(f"DROP TABLE IF EXISTS {holders_table}, {log_table}")
    conn.execute(f"CREATE TABLE {holders_table} (resource text PRIMARY KEY, n integer NOT NULL)")
    conn.execute(f"CREATE TABLE {log_table} (id bigserial PRIMARY KEY, resource text NOT NULL,"
                 " token bigint NOT NULL, worker integer NOT NULL)")
    conn.execute(f"INSERT INTO {holders_table} SELECT unnest(%s::text[]), 0", (resources,))
    problems = []
    lock = threading.Lock()
    counts = {"waiting granted": 0, "waiting refused": 0, "no-wait granted": 0, "no-wait refused": 0}

    def problem(text):
        with lock:
            problems.append(text)

    def work(c, worker):
        rng = random.Random(1000 + worker)
        holder = f"w{worker}"
        for iteration in range(ITERATIONS):
            picked = rng.sample(resources, rng.randint(2, 4))
            if iteration % 3 == 0:
                picked.sort()
            elif iteration % 3 == 1:
                picked.sort(reverse=True)
            listed = picked + [picked[0]] if iteration % 4 == 0 else picked  # a duplicate, taken once
            waits = iteration % 5 != 4
            # The claim and the increments in one transaction: while the claim's grants are
            # uncommitted its increments are too (and hold the counter rows), and the decrements
            # commit with the releases. A resource granted to two claimers at once makes the
            # later increment see the earlier one's: 2. (Counting up and down inside the fenced
            # transaction would prove nothing: a second holder's increment would wait for the
            # first one's row lock, and see its count only after it was back to 0.)
            with c.transaction():
                rows = claim(c, listed, holder, ttl="1 min", wait="30 s" if waits else None)
                # in one order (by name), so that the counter rows never deadlock themselves
                for resource, _ in sorted(rows):
                    n = one(c, f"UPDATE {holders_table} SET n = n + 1 WHERE resource = %s RETURNING n", (resource,))
                    if n != 1:
                        problem(f"{holder} #{iteration}: {n} holders of {resource}")
            with lock:
                counts[("waiting " if waits else "no-wait ") + ("granted" if rows else "refused")] += 1
            if not rows:
                mine = c.execute("SELECT resource FROM lease.leases WHERE holder = %s AND resource LIKE %s",
                                 (holder, name + "%")).fetchall()
                if mine:
                    problem(f"{holder} #{iteration}: a refused claim of {listed} left {mine} held")
                continue
            if [resource for resource, _ in rows] != picked:
                problem(f"{holder} #{iteration}: claimed {listed}, got {rows}")
            # The fenced work: every token holds its resource for the whole transaction.
            with c.transaction():
                for resource, token in rows:
                    c.execute("SELECT lease_assert(%s, %s)", (resource, token))
                    c.execute(f"INSERT INTO {log_table} (resource, token, worker) VALUES (%s, %s, %s)",
                              (resource, token, worker))
            with c.transaction():
                for resource, token in sorted(rows):
                    n = one(c, f"UPDATE {holders_table} SET n = n - 1 WHERE resource = %s RETURNING n", (resource,))
                    if n != 0:
                        problem(f"{holder} #{iteration}: {n} holders of {resource} left at its release")
                    if release(c, resource, token) is not True:
                        problem(f"{holder} #{iteration}: the release of {resource} ({token}) failed")
        return worker

    waits_before = one(conn, "SELECT waits FROM lease.stats")
    try:
        workers = [Background(lambda c, worker=worker: work(c, worker)) for worker in range(WORKERS)]
        errors = []
        for background in workers:
            try:
                background.result(timeout=300)
            except Exception as error:  # every kind, deadlocks (40P01) included
                errors.append(f"{type(error).__name__}: {getattr(error, 'sqlstate', None)}: {error}")
        assert errors == []
        assert problems == []
        # Every waiting claim was granted (none waited in a circle until its wait ran out).
        expected_waiting = WORKERS * sum(1 for i in range(ITERATIONS) if i % 5 != 4)
        assert counts["waiting granted"] == expected_waiting, counts
        assert counts["waiting refused"] == 0, counts
        # ... and the run did contend: claims queued, and claims without wait were refused
        assert one(conn, "SELECT waits FROM lease.stats") - waits_before > 0
        assert counts["no-wait refused"] > 0, counts
        # Per resource, the fenced transactions committed in token order, each token once.
        log = conn.execute(f"SELECT resource, token FROM {log_table} ORDER BY id").fetchall()
        assert len(log) == len(set(log))
        for resource in resources:
            tokens = [token for r, token in log if r == resource]
            assert tokens == sorted(tokens), resource
        assert conn.execute(f"SELECT count(*) FROM {holders_table} WHERE n <> 0").fetchone() == (0,)
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE %s", (name + "%",)) == 0
        assert all(waiters(conn, resource) == 0 for resource in resources)
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {holders_table}, {log_table}")
