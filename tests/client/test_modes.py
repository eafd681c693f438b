"""Shared leases and permits (0.6.0) under concurrency and with the other features: readers
woken together when a writer releases; first come first served across modes (a writer that
waits keeps later readers out, waiting or not); 12 permit holders on a capacity of 3 never more
than 3 at once, served in the order they queued; lease_set_capacity raising (waiters in at once)
and lowering (nobody revoked); the fence of a shared holder or a permit holder against the
takeover of its expired lease, and not against other shared grants or permits; session-bound
and lifeline-attached shared leases and permits; their events; REPEATABLE READ.
(The plain cases are in tests/regress/sql/modes.sql.)"""

import datetime
import random
import threading
import time

import psycopg
import pytest

from conftest import Background, connect, is_waiting_for_lease, one, wait_for

NAME_PREFIX = "md"

# How long a wait that should end at once may take: a call that is not woken sleeps out its wait
# (60 s) or the lease in its way (10 min) instead. A margin of seconds, to tell a wait that
# ended from one that hangs.
PROMPTLY = 10.0
LONG_WAIT = "60 s"
LONG_TTL = "10 min"


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def capacities(name):
    """Removes the capacities the test declared (the `name` fixture removes its leases)."""
    yield
    with connect() as c:
        c.execute("DELETE FROM lease.capacities WHERE resource LIKE %s", (name + "%",))


def acquire(conn, resource, holder, ttl=LONG_TTL, wait=None, mode="exclusive", capacity=None,
            session_bound=False, lifeline=None):
    return one(
        conn,
        "SELECT lease_acquire(%s, %s, %s::interval, %s::interval, session_bound => %s, lifeline => %s,"
        " mode => %s, capacity => %s)",
        (resource, holder, None if lifeline else ttl, wait, session_bound, lifeline, mode, capacity),
    )


def shared(conn, resource, holder, **kwargs):
    return acquire(conn, resource, holder, mode="shared", **kwargs)


def permit(conn, resource, holder, **kwargs):
    """A permit: with `capacity` stated, or of the capacity declared already."""
    kwargs.setdefault("mode", "permit")
    return acquire(conn, resource, holder, **kwargs)


def waiter(resource, holder, wait=LONG_WAIT, ttl=LONG_TTL, **kwargs):
    """A waiting lease_acquire on a connection of its own, in the background; its result is
    (token, the monotonic time it returned)."""
    return Background(lambda c: (acquire(c, resource, holder, ttl, wait, **kwargs), time.monotonic()))


def release(conn, resource, token):
    return one(conn, "SELECT lease_release(%s, %s)", (resource, token))


def check(conn, resource, token):
    return one(conn, "SELECT lease_check(%s, %s)", (resource, token))


def holders(conn, resource):
    """lease_info's live holders: {holder: (token, mode, capacity)}."""
    rows = conn.execute("SELECT holder, token, mode, capacity FROM lease_info(%s)", (resource,)).fetchall()
    return {holder: (token, mode, capacity) for holder, token, mode, capacity in rows}


def waiters(conn, resource):
    """How many waiting calls are queued for `resource`, held or not."""
    return one(conn, "SELECT coalesce(sum(waiters), 0)::int FROM lease._waiter_counts()"
                     " WHERE resource_key = lease._resource_key(%s)", (resource,))


def wait_until_waiting(conn, background, what):
    wait_for(lambda: is_waiting_for_lease(conn, background.pid), what=what)


def queue(conn, resource, holder, **kwargs):
    """Starts a waiter and returns it once it sleeps in the queue."""
    background = waiter(resource, holder, **kwargs)
    wait_until_waiting(conn, background, f"{holder} to wait")
    return background


def served(background, since):
    """The token a waiter got, checking that it returned promptly after `since` (the monotonic
    time just before the change that should let it in), and not before."""
    token, returned_at = background.result(timeout=PROMPTLY)
    assert token is not None
    assert returned_at >= since, "granted before the change that should have let it in"
    assert returned_at - since < PROMPTLY, f"returned {returned_at - since:.1f} s after the change"
    return token


def expire_now(conn, resource, token):
    """Waits until the server clock is past the expiry of `token`'s lease (read once, first:
    the worker may remove the row)."""
    expires_at = one(conn, "SELECT expires_at FROM lease.leases WHERE resource = %s AND token = %s",
                     (resource, token))
    assert expires_at is not None
    wait_for(lambda: one(conn, "SELECT clock_timestamp() > %s", (expires_at,)), what=f"{token} to expire")


def iso(timestamp):
    """A timestamptz as the events spell it."""
    return timestamp.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def marker(conn, listener, resource):
    """Commits a release of `resource` and waits for its event: every event committed before it
    has then been delivered (the stream is in commit order)."""
    token = acquire(conn, resource, "marker")
    release(conn, resource, token)
    listener.until(lambda got: any(e["resource"] == resource and e["event"] == "released" for e in got),
                   what=f"marker {resource}")


def without_seq_and_at(event):
    """An event without its two values that cannot be known (checked for their type)."""
    assert isinstance(event["seq"], int) and isinstance(event["at"], str), event
    return {key: value for key, value in event.items() if key not in ("seq", "at")}


# --- readers and writers waiting --------------------------------------------------------------


def test_readers_waiting_behind_a_writer_are_all_granted_together_when_it_releases(conn, name):
    resource = name + "rw"
    writer = acquire(conn, resource, "writer")
    readers = [queue(conn, resource, f"r{i}", mode="shared") for i in range(4)]
    assert waiters(conn, resource) == 4
    assert holders(conn, resource) == {"writer": (writer, "exclusive", None)}
    since = time.monotonic()
    assert release(conn, resource, writer) is True
    # woken by the release: a reader left to its own schedule would wait out its 60 s
    tokens = [served(reader, since) for reader in readers]
    assert all(token > writer for token in tokens) and len(set(tokens)) == 4
    # all four hold at once, each with its own token
    assert holders(conn, resource) == {f"r{i}": (tokens[i], "shared", None) for i in range(4)}
    assert waiters(conn, resource) == 0
    for token in tokens:
        assert check(conn, resource, token) is True
        assert release(conn, resource, token) is True


def test_a_writer_waiting_behind_readers_gets_the_resource_when_the_last_reader_releases(conn, name):
    resource = name + "rw"
    r1 = shared(conn, resource, "r1")
    r2 = shared(conn, resource, "r2")
    writer = queue(conn, resource, "writer")
    # lease.active: one row per reader, each showing the writer that waits
    assert conn.execute("SELECT holder, token, mode, capacity, waiters FROM lease.active WHERE resource = %s"
                        " ORDER BY holder", (resource,)).fetchall() == [("r1", r1, "shared", None, 1),
                                                                        ("r2", r2, "shared", None, 1)]
    assert release(conn, resource, r1) is True
    # woken by that release, it finds r2 still holding and sleeps again
    wait_until_waiting(conn, writer, "the writer to wait again")
    assert holders(conn, resource) == {"r2": (r2, "shared", None)}
    assert not writer.done()
    since = time.monotonic()
    assert release(conn, resource, r2) is True
    token = served(writer, since)
    assert token > r2
    assert holders(conn, resource) == {"writer": (token, "exclusive", None)}
    assert release(conn, resource, token) is True


def test_a_reader_without_wait_is_refused_while_a_writer_waits(conn, name):
    resource = name + "rw"
    r1 = shared(conn, resource, "r1")
    writer = queue(conn, resource, "writer")
    # readers could join r1, but the resource is owed to the writer that came first
    assert shared(conn, resource, "late") is None
    assert conn.execute("SELECT * FROM lease_acquire_any(ARRAY[%s], 'late', mode => 'shared')",
                        (resource,)).fetchall() == []
    assert holders(conn, resource) == {"r1": (r1, "shared", None)}
    since = time.monotonic()
    assert release(conn, resource, r1) is True
    token = served(writer, since)
    assert holders(conn, resource) == {"writer": (token, "exclusive", None)}
    assert shared(conn, resource, "late") is None
    assert release(conn, resource, token) is True
    assert shared(conn, resource, "late") is not None


def test_a_waiting_reader_that_came_after_a_writer_is_served_after_it(conn, name):
    resource = name + "rw"
    r1 = shared(conn, resource, "r1")
    writer = queue(conn, resource, "writer")
    late = queue(conn, resource, "late", mode="shared")
    assert waiters(conn, resource) == 2
    # the late reader does not join r1 while the writer waits
    assert holders(conn, resource) == {"r1": (r1, "shared", None)}
    since = time.monotonic()
    assert release(conn, resource, r1) is True
    w = served(writer, since)
    assert holders(conn, resource) == {"writer": (w, "exclusive", None)}
    wait_until_waiting(conn, late, "the late reader to wait again")
    assert not late.done()
    since = time.monotonic()
    assert release(conn, resource, w) is True
    token = served(late, since)
    assert token > w
    assert holders(conn, resource) == {"late": (token, "shared", None)}
    assert release(conn, resource, token) is True


def test_the_queue_is_served_in_order_across_modes(conn, name):
    # holder | w1, r1, r2, w2, r3: w1; then r1 and r2 together (r3 stays behind w2); then w2;
    # then r3.
    resource = name + "rw"
    held = acquire(conn, resource, "holder")
    w1 = queue(conn, resource, "w1")
    r1 = queue(conn, resource, "r1", mode="shared")
    r2 = queue(conn, resource, "r2", mode="shared")
    w2 = queue(conn, resource, "w2")
    r3 = queue(conn, resource, "r3", mode="shared")
    assert waiters(conn, resource) == 5

    since = time.monotonic()
    assert release(conn, resource, held) is True
    t_w1 = served(w1, since)
    assert holders(conn, resource) == {"w1": (t_w1, "exclusive", None)}

    since = time.monotonic()
    assert release(conn, resource, t_w1) is True
    t_r1, t_r2 = served(r1, since), served(r2, since)
    assert holders(conn, resource) == {"r1": (t_r1, "shared", None), "r2": (t_r2, "shared", None)}
    wait_until_waiting(conn, w2, "w2 to wait again")
    wait_until_waiting(conn, r3, "r3 to wait again")
    assert waiters(conn, resource) == 2

    assert release(conn, resource, t_r1) is True
    wait_until_waiting(conn, w2, "w2 to wait again")
    assert holders(conn, resource) == {"r2": (t_r2, "shared", None)}
    since = time.monotonic()
    assert release(conn, resource, t_r2) is True
    t_w2 = served(w2, since)
    assert holders(conn, resource) == {"w2": (t_w2, "exclusive", None)}
    wait_until_waiting(conn, r3, "r3 to wait again")

    since = time.monotonic()
    assert release(conn, resource, t_w2) is True
    t_r3 = served(r3, since)
    assert holders(conn, resource) == {"r3": (t_r3, "shared", None)}
    assert held < t_w1 < min(t_r1, t_r2) < max(t_r1, t_r2) < t_w2 < t_r3
    assert release(conn, resource, t_r3) is True


def test_a_permit_request_without_wait_is_refused_while_a_writer_waits(conn, name):
    # A free permit is owed to the writer waiting for the permits to end; a waiting permit
    # request queues behind it.
    resource = name + "sem"
    p1 = permit(conn, resource, "p1", capacity=3)
    writer = queue(conn, resource, "writer")
    assert permit(conn, resource, "late") is None
    late = queue(conn, resource, "late-waiting", mode="permit")
    assert holders(conn, resource) == {"p1": (p1, "permit", 3)}
    since = time.monotonic()
    assert release(conn, resource, p1) is True
    w = served(writer, since)
    wait_until_waiting(conn, late, "the late permit to wait again")
    since = time.monotonic()
    assert release(conn, resource, w) is True
    token = served(late, since)
    assert holders(conn, resource) == {"late-waiting": (token, "permit", 3)}
    assert release(conn, resource, token) is True


# --- permits: a counting semaphore under load ---------------------------------------------------


WORKERS = 12
ROUNDS = 8
CAPACITY = 3


def test_permits_never_exceed_the_capacity_and_waiters_are_served_in_order(conn, name):
    resource = name + "sem"
    occupancy, log = "modes_occupancy", "modes_permit_log"
    conn.execute(f"DROP TABLE IF EXISTS {occupancy}, {log}")
    conn.execute(f"CREATE TABLE {occupancy} (id int PRIMARY KEY, n int NOT NULL)")
    conn.execute(f"INSERT INTO {occupancy} VALUES (1, 0)")
    conn.execute(f"CREATE TABLE {log} (token bigint PRIMARY KEY, worker int NOT NULL, round int NOT NULL,"
                 " started_at timestamptz NOT NULL, ended_at timestamptz)")
    problems, seen = [], []
    lock = threading.Lock()

    def problem(text):
        with lock:
            problems.append(text)

    # The occupancy counter goes up in the grant's own transaction and down in the release's:
    # while a grant is uncommitted its increment is too (and holds the counter's row), so the
    # count a grant sees is the number of permits whose grant committed and whose release did
    # not, itself included, at the moment it commits. A fourth holder would see 4.
    def grant(c, holder, **kwargs):
        with c.transaction():
            token = permit(c, resource, holder, **kwargs)
            n = one(c, f"UPDATE {occupancy} SET n = n + 1 WHERE id = 1 RETURNING n") if token else None
        return token, n

    def give_back(c, token, who):
        with c.transaction():
            n = one(c, f"UPDATE {occupancy} SET n = n - 1 WHERE id = 1 RETURNING n")
            if n < 0:
                problem(f"{who}: occupancy {n}")
            if release(c, resource, token) is not True:
                problem(f"{who}: the release of {token} failed")

    def work(c, worker):
        rng = random.Random(4200 + worker)
        holder = f"w{worker}"
        for round_ in range(ROUNDS):
            token, n = grant(c, holder, ttl="1 min", wait="60 s")
            if token is None:
                problem(f"{holder} #{round_}: not granted within its wait")
                return
            with lock:
                seen.append(n)
            if n > CAPACITY:
                problem(f"{holder} #{round_}: {n} permits held at once")
            # the fenced work: the token holds its permit for the whole transaction
            with c.transaction():
                c.execute("SELECT lease_assert(%s, %s)", (resource, token))
                c.execute(f"INSERT INTO {log} VALUES (%s, %s, %s, clock_timestamp(), NULL)", (token, worker, round_))
                c.execute("SELECT pg_sleep(%s)", (rng.uniform(0, 0.04),))
                c.execute(f"UPDATE {log} SET ended_at = clock_timestamp() WHERE token = %s", (token,))
            give_back(c, token, f"{holder} #{round_}")
        return worker

    try:
        # The gate: every permit held here (and counted) while the workers queue one by one.
        gate = [grant(conn, f"gate{i}", capacity=CAPACITY)[0] for i in range(CAPACITY)]
        assert all(gate) and permit(conn, resource, "extra") is None
        waits_before = one(conn, "SELECT waits FROM lease.stats")
        workers = []
        for worker in range(WORKERS):
            workers.append(Background(lambda c, worker=worker: work(c, worker)))
            wait_until_waiting(conn, workers[-1], f"worker {worker} to queue")
        assert waiters(conn, resource) == WORKERS
        for i, token in enumerate(gate):
            give_back(conn, token, f"gate{i}")
        errors = []
        for background in workers:
            try:
                background.result(timeout=120)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {getattr(error, 'sqlstate', None)}: {error}")
        assert errors == []
        assert problems == []
        assert len(seen) == WORKERS * ROUNDS
        # at most the capacity, and the run did fill it
        assert max(seen) == CAPACITY
        assert one(conn, "SELECT waits FROM lease.stats") - waits_before >= WORKERS
        assert one(conn, f"SELECT n FROM {occupancy}") == 0
        rows = conn.execute(f"SELECT token, worker, round, started_at, ended_at FROM {log}").fetchall()
        assert len(rows) == WORKERS * ROUNDS
        # The fenced intervals (each inside its holder's grant and release): never more than the
        # capacity at once (ends counted before starts at the same instant).
        points = sorted([(start, 1) for _, _, _, start, _ in rows] + [(end, -1) for _, _, _, _, end in rows],
                        key=lambda point: (point[0], point[1]))
        running = peak = 0
        for _, step in points:
            running += step
            peak = max(peak, running)
        assert peak <= CAPACITY
        # First come, first served: the workers' first grants in the order they queued, all
        # before any second grant (their second requests queued behind the first ones).
        first = sorted((token, worker) for token, worker, round_, _, _ in rows if round_ == 0)
        assert [worker for _, worker in first] == list(range(WORKERS))
        later = [token for token, _, round_, _, _ in rows if round_ > 0]
        assert first[-1][0] < min(later)
        assert holders(conn, resource) == {}
        assert waiters(conn, resource) == 0
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {occupancy}, {log}")


MIXED_WORKERS = 8
MIXED_ITERATIONS = 25
MIXED_CAPACITY = 2


def test_the_three_modes_never_hold_one_resource_together_under_load(conn, name):
    # Exclusive leases, shared leases and permits (capacity 2) on one resource, asked for at
    # random, mostly with wait. One counter row holds the occupancy of each mode: a grant
    # increments its mode's column in its own transaction and checks all three on the row it
    # wrote (the row lock serialises the grants' and releases' commits, so each grant sees the
    # occupancy at the moment it commits); a release decrements in its own transaction.
    resource = name + "mixed"
    table = "modes_mixed_occupancy"
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, exclusive int NOT NULL, shared int NOT NULL,"
                 " permit int NOT NULL)")
    conn.execute(f"INSERT INTO {table} VALUES (1, 0, 0, 0)")
    assert one(conn, "SELECT lease_set_capacity(%s, %s)", (resource, MIXED_CAPACITY)) is None
    problems, grants, peaks = [], {"exclusive": 0, "shared": 0, "permit": 0}, {"shared": 0, "permit": 0}
    lock = threading.Lock()

    def problem(text):
        with lock:
            problems.append(text)

    def work(c, worker):
        rng = random.Random(900 + worker)
        holder = f"w{worker}"
        for iteration in range(MIXED_ITERATIONS):
            mode = rng.choices(["exclusive", "shared", "permit"], [2, 5, 3])[0]
            waits = rng.random() < 0.8
            with c.transaction():
                token = acquire(c, resource, holder, ttl="1 min", wait="30 s" if waits else None, mode=mode)
                counts = None
                if token is not None:
                    counts = c.execute(f"UPDATE {table} SET {mode} = {mode} + 1 WHERE id = 1"
                                       " RETURNING exclusive, shared, permit").fetchone()
            if token is None:
                if waits:
                    problem(f"{holder} #{iteration}: a waiting {mode} request was not granted within 30 s")
                continue
            exclusive, shared_, permits = counts
            if exclusive > 1 or (exclusive and (shared_ or permits)) or (shared_ and permits) \
                    or permits > MIXED_CAPACITY:
                problem(f"{holder} #{iteration}: {mode} granted with exclusive={exclusive} shared={shared_}"
                        f" permit={permits}")
            with lock:
                grants[mode] += 1
                peaks["shared"] = max(peaks["shared"], shared_)
                peaks["permit"] = max(peaks["permit"], permits)
            with c.transaction():
                c.execute("SELECT lease_assert(%s, %s)", (resource, token))
                c.execute("SELECT pg_sleep(%s)", (rng.uniform(0, 0.02),))
            with c.transaction():
                if release(c, resource, token) is not True:
                    problem(f"{holder} #{iteration}: the release of {token} failed")
                c.execute(f"UPDATE {table} SET {mode} = {mode} - 1 WHERE id = 1")
        return worker

    try:
        waits_before = one(conn, "SELECT waits FROM lease.stats")
        workers = [Background(lambda c, worker=worker: work(c, worker)) for worker in range(MIXED_WORKERS)]
        errors = []
        for background in workers:
            try:
                background.result(timeout=300)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {getattr(error, 'sqlstate', None)}: {error}")
        assert errors == []
        assert problems == []
        # every mode was granted, shared leases together, and the run contended
        assert min(grants.values()) > 0, grants
        assert peaks["shared"] >= 2, peaks
        assert one(conn, "SELECT waits FROM lease.stats") - waits_before > 0
        assert conn.execute(f"SELECT exclusive, shared, permit FROM {table}").fetchone() == (0, 0, 0)
        assert holders(conn, resource) == {}
        assert waiters(conn, resource) == 0
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_permit_waiters_are_served_first_come_first_served(conn, name):
    resource = name + "sem"
    h0, h1 = (permit(conn, resource, f"h{i}", capacity=2) for i in range(2))
    q0, q1, q2 = (queue(conn, resource, f"q{i}", mode="permit") for i in range(3))
    assert waiters(conn, resource) == 3
    since = time.monotonic()
    assert release(conn, resource, h0) is True
    t0 = served(q0, since)
    wait_until_waiting(conn, q1, "q1 to wait again")
    wait_until_waiting(conn, q2, "q2 to wait again")
    assert holders(conn, resource) == {"h1": (h1, "permit", 2), "q0": (t0, "permit", 2)}
    since = time.monotonic()
    assert release(conn, resource, h1) is True
    t1 = served(q1, since)
    wait_until_waiting(conn, q2, "q2 to wait again")
    assert holders(conn, resource) == {"q0": (t0, "permit", 2), "q1": (t1, "permit", 2)}
    since = time.monotonic()
    assert release(conn, resource, t0) is True
    t2 = served(q2, since)
    assert t0 < t1 < t2
    assert holders(conn, resource) == {"q1": (t1, "permit", 2), "q2": (t2, "permit", 2)}
    assert waiters(conn, resource) == 0


@pytest.mark.parametrize("mode", ["shared", "permit"])
def test_a_holders_reacquire_works_while_others_wait(conn, name, mode):
    # As for an exclusive lease: re-acquiring a lease one holds is not a grant, and a client
    # that retries (with wait) after losing the answer gets its own token back.
    resource = name + mode
    mine = acquire(conn, resource, "me", mode=mode, capacity=1 if mode == "permit" else None)
    other = queue(conn, resource, "other", mode="exclusive" if mode == "shared" else "permit")
    try:
        again = acquire(conn, resource, "me", mode=mode)
        retried = acquire(conn, resource, "me", wait="1 s", mode=mode)
        assert (again, retried) == (mine, mine)
    finally:
        since = time.monotonic()
        assert release(conn, resource, mine) is True
        served(other, since)


# --- lease_set_capacity -------------------------------------------------------------------------


def test_raising_the_capacity_lets_waiters_in_at_once(conn, name):
    resource = name + "sem"
    p1 = permit(conn, resource, "p1", capacity=1)
    first = queue(conn, resource, "q1", mode="permit")
    second = queue(conn, resource, "q2", mode="permit")
    since = time.monotonic()
    assert one(conn, "SELECT lease_set_capacity(%s, 3)", (resource,)) == 1
    # not at the expiry of p1 (10 min) nor at the end of their waits (60 s)
    t1, t2 = served(first, since), served(second, since)
    assert holders(conn, resource) == {"p1": (p1, "permit", 3), "q1": (t1, "permit", 3), "q2": (t2, "permit", 3)}
    assert permit(conn, resource, "extra") is None


def test_lowering_the_capacity_revokes_nobody(conn, name):
    resource = name + "sem"
    tokens = [permit(conn, resource, f"p{i}", capacity=3) for i in range(3)]
    queued = queue(conn, resource, "q", mode="permit")
    with connect(autocommit=False) as fenced:
        # a holder's open fenced transaction does not hold up the change
        assert check(fenced, resource, tokens[0]) is True
        assert one(conn, "SELECT lease_set_capacity(%s, 1)", (resource,)) == 3
        # every permit still holds: fences, renewals
        for token in tokens:
            assert check(conn, resource, token) is True
            assert one(conn, "SELECT lease_renew(%s, %s, %s::interval)", (resource, token, LONG_TTL)) is True
        fenced.commit()
    assert holders(conn, resource) == {f"p{i}": (tokens[i], "permit", 1) for i in range(3)}
    # no permit is granted until fewer than the new capacity hold
    assert release(conn, resource, tokens[0]) is True
    wait_until_waiting(conn, queued, "the waiter to wait again")
    assert release(conn, resource, tokens[1]) is True
    wait_until_waiting(conn, queued, "the waiter to wait again")
    assert holders(conn, resource) == {"p2": (tokens[2], "permit", 1)}
    since = time.monotonic()
    assert release(conn, resource, tokens[2]) is True
    token = served(queued, since)
    assert holders(conn, resource) == {"q": (token, "permit", 1)}
    assert permit(conn, resource, "extra") is None


# --- fences ----------------------------------------------------------------------------------------


def test_a_readers_fence_holds_off_a_writer_but_not_another_reader(conn, name):
    resource = name + "rw"
    with connect(autocommit=False) as fenced:
        r1 = shared(conn, resource, "r1", ttl="300 ms")
        assert check(fenced, resource, r1) is True
        expire_now(conn, resource, r1)
        # the expired shared lease is not taken over while its fence stands
        assert acquire(conn, resource, "writer") is None
        # another reader is granted meanwhile, and leaves again
        r2 = shared(conn, resource, "r2")
        assert r2 > r1
        assert holders(conn, resource) == {"r2": (r2, "shared", None)}
        assert release(conn, resource, r2) is True
        assert acquire(conn, resource, "writer") is None
        writer = queue(conn, resource, "writer")
        assert not writer.done()
        assert holders(conn, resource) == {}
        since = time.monotonic()
        fenced.commit()
    token = served(writer, since)
    assert token > r2
    assert holders(conn, resource) == {"writer": (token, "exclusive", None)}
    assert check(conn, resource, r1) is False


def test_a_readers_fence_ended_by_rollback_lets_the_writer_in(conn, name):
    resource = name + "rw"
    with connect(autocommit=False) as fenced:
        r1 = shared(conn, resource, "r1", ttl="300 ms")
        assert check(fenced, resource, r1) is True
        expire_now(conn, resource, r1)
        writer = queue(conn, resource, "writer")
        since = time.monotonic()
        fenced.rollback()
    token = served(writer, since)
    assert holders(conn, resource) == {"writer": (token, "exclusive", None)}


def test_a_permit_holders_fence_holds_off_the_takeover_of_its_permit_only(conn, name):
    resource = name + "sem"
    with connect(autocommit=False) as fenced:
        p1 = permit(conn, resource, "p1", capacity=3, ttl="300 ms")
        p2 = permit(conn, resource, "p2")
        assert check(fenced, resource, p1) is True
        expire_now(conn, resource, p1)
        # a free permit is granted meanwhile
        p3 = permit(conn, resource, "p3")
        assert p3 is not None
        # the third place is p1's, expired but fenced: not taken over
        assert permit(conn, resource, "p4") is None
        taker = queue(conn, resource, "p4", mode="permit")
        assert holders(conn, resource) == {"p2": (p2, "permit", 3), "p3": (p3, "permit", 3)}
        since = time.monotonic()
        fenced.commit()
    p4 = served(taker, since)
    assert p4 > p3
    assert holders(conn, resource) == {"p2": (p2, "permit", 3), "p3": (p3, "permit", 3), "p4": (p4, "permit", 3)}
    assert check(conn, resource, p1) is False
    assert permit(conn, resource, "p5") is None


def test_revoking_the_readers_lets_the_waiting_writer_in_at_once(conn, name, listener):
    resource = name + "rw"
    tokens = [shared(conn, resource, f"r{i}") for i in range(2)]
    writer = queue(conn, resource, "writer")
    since = time.monotonic()
    assert one(conn, "SELECT lease_force_release(%s)", (resource,)) is True
    token = served(writer, since)
    assert holders(conn, resource) == {"writer": (token, "exclusive", None)}
    assert [check(conn, resource, t) for t in tokens] == [False, False]
    assert release(conn, resource, token) is True
    marker(conn, listener, name + "marker")
    revoked = sorted((e["holder"], e["token"], e.get("mode")) for e in listener.events_for(resource)
                     if e["event"] == "revoked")
    assert revoked == [("r0", tokens[0], "shared"), ("r1", tokens[1], "shared")]


# --- session-bound, lifelines --------------------------------------------------------------------


def test_session_bound_shared_leases_end_with_their_sessions(conn, name, listener):
    resource = name + "rw"
    sessions = [connect(), connect()]
    try:
        tokens = [shared(s, resource, f"r{i}", session_bound=True) for i, s in enumerate(sessions)]
        writer = queue(conn, resource, "writer")
        assert one(conn, "SELECT pg_terminate_backend(%s)", (sessions[0].info.backend_pid,)) is True
        wait_for(lambda: "r0" not in holders(conn, resource), what="r0's lease to end")
        wait_until_waiting(conn, writer, "the writer to wait again")
        assert holders(conn, resource) == {"r1": (tokens[1], "shared", None)}
        since = time.monotonic()
        assert one(conn, "SELECT pg_terminate_backend(%s)", (sessions[1].info.backend_pid,)) is True
        token = served(writer, since)
        assert holders(conn, resource) == {"writer": (token, "exclusive", None)}
    finally:
        for s in sessions:
            s.close()
    assert release(conn, resource, token) is True
    marker(conn, listener, name + "marker")
    ended = [(e["event"], e.get("reason"), e["holder"], e["token"], e.get("mode"))
             for e in listener.events_for(resource) if e["event"] == "expired"]
    assert ended == [("expired", "session_ended", "r0", tokens[0], "shared"),
                     ("expired", "session_ended", "r1", tokens[1], "shared")]


def test_a_session_bound_permit_ends_with_its_session(conn, name, listener):
    resource = name + "sem"
    holder = connect()
    try:
        bound = permit(holder, resource, "bound", capacity=2, session_bound=True)
        other = permit(conn, resource, "other")
        queued = queue(conn, resource, "q", mode="permit")
        since = time.monotonic()
        assert one(conn, "SELECT pg_terminate_backend(%s)", (holder.info.backend_pid,)) is True
        token = served(queued, since)
    finally:
        holder.close()
    assert holders(conn, resource) == {"other": (other, "permit", 2), "q": (token, "permit", 2)}
    marker(conn, listener, name + "marker")
    ended = [without_seq_and_at(e) for e in listener.events_for(resource) if e["event"] == "expired"]
    assert [{k: v for k, v in e.items() if k != "expires_at"} for e in ended] == [
        {"event": "expired", "reason": "session_ended", "resource": resource, "holder": "bound", "token": bound,
         "mode": "permit", "capacity": 2},
    ]


@pytest.mark.parametrize("ending", ["lapse", "close"])
def test_shared_leases_and_permits_on_a_lifeline_end_with_it(conn, name, listener, ending):
    rw, sem = name + "rw", name + "sem"
    lifeline = one(conn, "SELECT lease_lifeline_open(%s, %s::interval)",
                   (name + "lifeline", "2 s" if ending == "lapse" else LONG_TTL))
    reader = shared(conn, rw, "r", lifeline=lifeline)
    holder = permit(conn, sem, "p", capacity=1, lifeline=lifeline)
    assert holders(conn, rw) == {"r": (reader, "shared", None)}
    assert holders(conn, sem) == {"p": (holder, "permit", 1)}
    writer = queue(conn, rw, "writer")
    second = queue(conn, sem, "q", mode="permit")
    since = time.monotonic()
    if ending == "close":
        assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 2
    # granted at the close, or at the lapse (2 s), not at the end of their waits
    w, q = served(writer, since), served(second, since)
    assert check(conn, rw, reader) is False
    assert check(conn, sem, holder) is False
    assert holders(conn, rw) == {"writer": (w, "exclusive", None)}
    assert holders(conn, sem) == {"q": (q, "permit", 1)}
    marker(conn, listener, name + "marker")

    def ends(resource):
        return [(e["event"], e.get("reason"), e["holder"], e["token"], e.get("mode"), e.get("capacity"),
                 e.get("lifeline")) for e in listener.events_for(resource) if e["event"] in ("released", "expired")]

    if ending == "close":
        assert ends(rw) == [("released", None, "r", reader, "shared", None, lifeline)]
        assert ends(sem) == [("released", None, "p", holder, "permit", 1, lifeline)]
    else:
        assert ends(rw) == [("expired", "lifeline_expired", "r", reader, "shared", None, lifeline)]
        assert ends(sem) == [("expired", "lifeline_expired", "p", holder, "permit", 1, lifeline)]


# --- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shared", "permit"])
def test_events_of_shared_leases_and_permits(conn, name, listener, mode):
    resource = name + mode
    extra = {"mode": "shared"} if mode == "shared" else {"mode": "permit", "capacity": 2}
    capacity = None if mode == "shared" else 2
    with connect(autocommit=False) as tx:
        first = acquire(tx, resource, "a", mode=mode, capacity=capacity)
        second = acquire(tx, resource, "b", ttl="200 ms", mode=mode, capacity=capacity)
        expiry = dict(tx.execute("SELECT token, expires_at FROM lease.leases WHERE resource = %s",
                                 (resource,)).fetchall())
        tx.commit()
    assert release(conn, resource, first) is True
    # b expires; the worker announces it
    listener.until(lambda got: any(e["resource"] == resource and e["event"] == "expired" for e in got),
                   what="the expiry")
    events = [without_seq_and_at(e) for e in listener.events_for(resource)]
    common = {"resource": resource, **extra}
    assert events == [
        {"event": "acquired", "holder": "a", "token": first, "expires_at": iso(expiry[first]), **common},
        {"event": "acquired", "holder": "b", "token": second, "expires_at": iso(expiry[second]), **common},
        {"event": "released", "holder": "a", "token": first, **common},
        {"event": "expired", "reason": "ttl", "holder": "b", "token": second, "expires_at": iso(expiry[second]),
         **common},
    ]
    seqs = [e["seq"] for e in listener.events_for(resource)]
    assert seqs == sorted(seqs)


def test_an_exclusive_leases_events_carry_no_mode(conn, name, listener):
    resource = name + "x"
    token = acquire(conn, resource, "a")
    assert release(conn, resource, token) is True
    listener.until(lambda got: any(e["resource"] == resource and e["event"] == "released" for e in got))
    assert [sorted(e) for e in listener.events_for(resource)] == [
        sorted(["seq", "event", "resource", "holder", "token", "expires_at", "at"]),
        sorted(["seq", "event", "resource", "holder", "token", "at"]),
    ]


# --- REPEATABLE READ ---------------------------------------------------------------------------


def snapshot_transaction(isolation="REPEATABLE READ"):
    """A transaction whose snapshot is taken now."""
    tx = connect(autocommit=False)
    tx.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    tx.execute("SELECT 1")
    return tx


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_shared_acquire_behind_a_snapshot(conn, name, isolation):
    resource = name + "rw"
    with snapshot_transaction(isolation) as tx:
        writer = acquire(conn, resource, "writer")
        # held by a writer as last committed: refused, whatever the snapshot shows
        assert shared(tx, resource, "r") is None
        assert release(conn, resource, writer) is True
        # free now, but a writer came and went after the snapshot: 40001
        with pytest.raises(psycopg.errors.SerializationFailure):
            shared(tx, resource, "r")
        tx.rollback()
    assert holders(conn, resource) == {}


def test_a_shared_acquire_joins_readers_granted_before_the_snapshot(conn, name):
    resource = name + "rw"
    r1 = shared(conn, resource, "r1")
    with snapshot_transaction() as tx:
        r2 = shared(tx, resource, "r2")
        assert r2 > r1
        tx.commit()
    assert set(holders(conn, resource)) == {"r1", "r2"}


def test_a_shared_acquire_after_another_reader_joined_behind_the_snapshot(conn, name):
    # Readers never keep each other out, so the grant could be made; refusing it with 40001 is
    # sound too (what the transaction read about the resource's lease rows is out of date).
    # It is never NULL: nothing keeps a reader out.
    resource = name + "rw"
    with snapshot_transaction() as tx:
        r1 = shared(conn, resource, "r1")
        try:
            r2 = shared(tx, resource, "r2")
            assert r2 is not None and r2 > r1
            tx.commit()
        except psycopg.errors.SerializationFailure:
            tx.rollback()


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_superseded_shared_token_never_passes_under_snapshot_isolation(conn, name, isolation):
    resource = name + "rw"
    old = shared(conn, resource, "old")
    with snapshot_transaction(isolation) as tx:
        assert one(tx, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 1
        assert release(conn, resource, old) is True
        writer = acquire(conn, resource, "writer")
        assert check(tx, resource, old) is False
        assert check(tx, resource, writer) is True
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            tx.execute("SELECT lease_assert(%s, %s)", (resource, old))
        tx.rollback()


def test_a_waiting_shared_acquire_under_repeatable_read_ends_in_40001(conn, name):
    # Its wait outlives changes of the lease (the writer's grant after its snapshot, and the
    # release): the grant would be decided on what the snapshot cannot see.
    resource = name + "rw"
    with snapshot_transaction() as tx:
        writer = acquire(conn, resource, "writer")
        pid = tx.info.backend_pid

        def release_once_waiting(c):
            wait_for(lambda: is_waiting_for_lease(c, pid), what="the reader to wait")
            since = time.monotonic()
            assert release(c, resource, writer) is True
            return since

        releaser = Background(release_once_waiting)
        with pytest.raises(psycopg.errors.SerializationFailure):
            shared(tx, resource, "r", wait=LONG_WAIT)
        ended = time.monotonic()
        since = releaser.result(timeout=PROMPTLY)
        assert 0 <= ended - since < PROMPTLY
        tx.rollback()
    assert holders(conn, resource) == {}
    assert waiters(conn, resource) == 0


def test_a_permit_behind_a_snapshot(conn, name):
    resource = name + "sem"
    p1 = permit(conn, resource, "p1", capacity=2)
    with snapshot_transaction() as tx:
        p2 = permit(conn, resource, "p2")
        # full as last committed: refused
        assert permit(tx, resource, "p3") is None
        assert release(conn, resource, p2) is True
        # a place is free again, but the permits changed after the snapshot: 40001
        with pytest.raises(psycopg.errors.SerializationFailure):
            permit(tx, resource, "p3")
        tx.rollback()
    assert holders(conn, resource) == {"p1": (p1, "permit", 2)}


def test_a_permit_is_never_granted_above_a_capacity_lowered_behind_the_snapshot(conn, name):
    resource = name + "sem"
    p1 = permit(conn, resource, "p1", capacity=3)
    with snapshot_transaction() as tx:
        assert one(conn, "SELECT lease_set_capacity(%s, 1)", (resource,)) == 3
        assert permit(conn, resource, "rc") is None  # READ COMMITTED: full at 1
        try:
            granted = permit(tx, resource, "rr")
            tx.commit()
        except psycopg.errors.SerializationFailure:
            granted = None
            tx.rollback()
    live = holders(conn, resource)
    # expected: NULL or 40001, one permit live; found: a second permit under capacity 1
    assert granted is None and live == {"p1": (p1, "permit", 1)}, f"granted {granted}: {live}"


def test_a_permit_of_a_capacity_declared_behind_the_snapshot(conn, name):
    resource = name + "sem"
    with snapshot_transaction() as tx:
        p1 = permit(conn, resource, "p1", capacity=2)
        try:
            granted = permit(tx, resource, "rr")
            outcome = "granted" if granted is not None and granted > p1 else f"token {granted}"
            tx.commit()
        except psycopg.Error as error:
            outcome = error.sqlstate
            tx.rollback()
    assert outcome in ("granted", "40001"), outcome


# --- lease_acquire_any -----------------------------------------------------------------------


def test_acquire_any_leaves_a_resource_owed_to_a_waiting_writer(conn, name):
    a, b = name + "a", name + "b"
    r1 = shared(conn, a, "r1")
    writer = queue(conn, a, "writer")
    rows = conn.execute("SELECT resource FROM lease_acquire_any(ARRAY[%s, %s], 'claimer', max_count => 2,"
                        " mode => 'shared')", (a, b)).fetchall()
    assert rows == [(b,)]
    assert set(holders(conn, a)) == {"r1"}
    since = time.monotonic()
    assert release(conn, a, r1) is True
    served(writer, since)


# --- many readers at once; a lifeline renewal in flight ---------------------------------------


def test_a_reader_is_granted_while_many_readers_grants_are_uncommitted(conn, name):
    # Each uncommitted grant holds its slot's lock: a new reader looks further, however many.
    resource = name + "many"
    readers = [connect(autocommit=False) for _ in range(12)]
    try:
        tokens = [shared(c, resource, f"reader-{n}") for n, c in enumerate(readers)]
        assert all(token is not None for token in tokens)
        late = shared(conn, resource, "late")
        assert late is not None and late > max(tokens)
        assert acquire(conn, resource, "writer") is None
        for c in readers:
            c.commit()
        assert len(holders(conn, resource)) == 13
    finally:
        for c in readers:
            c.close()


def test_a_permit_waits_for_a_lifeline_renewal_in_flight_of_a_reader(conn, name):
    # A reader attached to a lifeline that looks lapsed counts as ended only once the lapse is
    # confirmed: while a renewal of the lifeline is in flight, a permit of the resource (the
    # other kind) is not granted, and after the renewal commits the reader holds again.
    resource = name + "renewing"
    lifeline = one(conn, "SELECT lease_lifeline_open('renewing', '500 ms')")
    reader = shared(conn, resource, "reader", lifeline=lifeline)
    expires_at = one(conn, "SELECT expires_at FROM lease.lifelines WHERE id = %s", (lifeline,))
    with connect(autocommit=False) as renewer:
        assert one(renewer, "SELECT lease_lifeline_renew(%s, '1 hour') > now()", (lifeline,)) is True
        wait_for(lambda: one(conn, "SELECT clock_timestamp() > %s", (expires_at,)), what="the old expiry")
        assert permit(conn, resource, "worker", capacity=2) is None
        renewer.commit()
    assert permit(conn, resource, "worker", capacity=2) is None
    assert check(conn, resource, reader) is True
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 1
    assert permit(conn, resource, "worker", capacity=2) is not None


# --- after the second review ----------------------------------------------------------------


def test_a_reader_removes_an_exclusive_lease_whose_session_ended_and_its_token_fails(conn, name):
    # A session-bound exclusive lease whose binding ended (pg_advisory_unlock_all ends it) no
    # longer holds; a reader's grant removes it first, announcing its end, so its token can no
    # longer fence or renew while the reader holds.
    resource = name + "ended"
    with connect() as holder:
        token = acquire(holder, resource, "writer", session_bound=True)
        holder.execute("SELECT pg_advisory_unlock_all()")
        reader = shared(conn, resource, "reader")
        assert reader is not None and reader > token
        assert check(holder, resource, token) is False
        assert one(holder, "SELECT lease_renew(%s, %s)", (resource, token)) is False
    assert holders(conn, resource) == {"reader": (reader, "shared", None)}


def test_a_waiting_claim_is_owed_a_lease_it_held_when_that_lease_ends(conn, name):
    # The claim queues for every resource it names, its own included: when its own lease ends
    # while it waits, a call without wait does not get that resource ahead of it.
    a, b = name + "own", name + "other"
    mine = acquire(conn, a, "c", ttl="400 ms")
    other = acquire(conn, b, "x")
    c = Background(lambda k: k.execute(
        "SELECT resource, token FROM lease_acquire_all(ARRAY[%s, %s], 'c', '1 min', wait => '60 s')", (a, b)).fetchall())
    wait_until_waiting(conn, c, "the claim to wait")
    wait_for(lambda: not holders(conn, a), what="the claimer's own lease to expire")
    assert acquire(conn, a, "n") is None
    assert release(conn, b, other) is True
    rows = c.result(timeout=PROMPTLY)
    assert [resource for resource, _ in rows] == [a, b] and rows[0][1] > mine


def test_a_readers_renewal_under_repeatable_read_ignores_other_readers_changes(conn, name):
    resource = name + "rr"
    first = shared(conn, resource, "r1")
    second = shared(conn, resource, "r2")
    with connect(autocommit=False) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert one(reader, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 2  # snapshot taken
        assert one(conn, "SELECT lease_renew(%s, %s, '20 min')", (resource, second)) is True
        assert shared(conn, resource, "r3") is not None
        assert one(reader, "SELECT lease_renew(%s, %s, '30 min')", (resource, first)) is True
        assert one(reader, "SELECT lease_release(%s, %s)", (resource, first)) is True
        reader.commit()
    assert sorted(holders(conn, resource)) == ["r2", "r3"]
