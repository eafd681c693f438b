"""The load: client sessions, each on its own connection, doing random lease operations (acquire,
re-acquire, renew, release, fenced writes, stale writes, pauses longer than the ttl) on a small set
of resources, and recording every operation with the server clock read in the same transaction.
Used by checker.py; not run on its own."""

import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

# How an error is classified: the connection is gone (the fault injector did it), a SQLSTATE the
# API documents for this call, or anything else (a violation of property 5).
CONNECTION_LOST = "connection lost"
EXPECTED = "expected"
UNEXPECTED = "unexpected"

SHORT_TTL = (0.1, 0.3)
LONG_TTL = (5.0, 20.0)
MAX_HOLDINGS = 3
RECONNECT_DEADLINE = 90.0
LOCK_TIMEOUT = "400ms"

READ_INFO = (
    "SELECT clock_timestamp(), i.token, i.holder, i.acquired_at, i.expires_at "
    "FROM (SELECT 1) AS one LEFT JOIN lease_info(%s) AS i ON true"
)
FENCED_WRITE = """
WITH w AS (UPDATE lease_load.protected SET token = %(token)s, writes = writes + 1
           WHERE resource = %(resource)s {fence} RETURNING writes)
INSERT INTO lease_load.writes (resource, seq, token, at, session)
SELECT %(resource)s, writes, %(token)s, clock_timestamp(), %(session)s FROM w RETURNING seq
"""
UNCHECKED_WRITE = FENCED_WRITE.format(fence="")
# The fence, and a deliberately broken one for proving that the checker notices: a check that
# reads the lease (in the transaction's snapshot) but keeps nobody out until commit.
FENCE = "lease_check(%(resource)s, %(token)s)"
NO_FENCE = "EXISTS (SELECT 1 FROM lease_info(%(resource)s) WHERE token = %(token)s)"


@dataclass
class Info:
    """lease_info(resource) as read in the operation's transaction, after the call."""
    token: int
    holder: str
    acquired_at: datetime
    expires_at: datetime


@dataclass
class Op:
    """One operation as a client saw it. `outcome` is 'committed' (COMMIT returned), 'aborted'
    (it certainly did not commit) or 'unknown' (the connection was lost during COMMIT)."""
    session: int
    conn: int
    gen: int
    kind: str
    resource: str = ""
    token: int | None = None
    holder: str = ""
    ttl: float | None = None
    variant: str = ""
    session_bound: bool = False
    sent: bool = False
    result: object = None
    t0: datetime | None = None
    t1: datetime | None = None
    info: Info | None = None
    outcome: str = ""
    sqlstate: str | None = None
    error: str = ""
    error_class: str | None = None


@dataclass
class Holding:
    resource: str
    token: int
    ttl: float
    session_bound: bool
    conn: int


class Rollback(Exception):
    """Raised by an operation's body to end its transaction with ROLLBACK."""


class Gate:
    """Sessions open connections only through the gate. Closing it waits until no connection
    attempt is in flight, so that after a restart nobody reaches the new server before the
    gate opens again; `generation` counts the restarts a connection was opened after."""

    def __init__(self):
        self._cond = threading.Condition()
        self._open = True
        self._connecting = 0
        self.generation = 0

    def connect(self, open_connection, stopping):
        with self._cond:
            while not self._open:
                if stopping.is_set():
                    return None, self.generation
                self._cond.wait(0.1)
            self._connecting += 1
            generation = self.generation
        try:
            return open_connection(), generation
        finally:
            with self._cond:
                self._connecting -= 1
                self._cond.notify_all()

    def close(self):
        with self._cond:
            self._open = False
            while self._connecting:
                self._cond.wait()

    def open(self):
        with self._cond:
            self.generation += 1
            self._open = True
            self._cond.notify_all()


@dataclass
class Load:
    """What the sessions share: settings, the gate, the record, and failures of the harness."""
    dsn: str
    short_resources: list
    long_resources: list
    seed: int
    fence: str = FENCE
    gate: Gate = field(default_factory=Gate)
    stopping: threading.Event = field(default_factory=threading.Event)
    ops: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    pids: dict = field(default_factory=dict)   # connection serial number -> its backend's pid
    conn_serial: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_conn(self):
        with self.lock:
            self.conn_serial += 1
            return self.conn_serial


class LostConnection:
    """Stands for a connection that never opened, when classifying errors of connecting."""
    broken = True


conn_was_lost = LostConnection()


def classify(error, conn, allowed):
    state = getattr(error, "sqlstate", None)
    if state in allowed:
        return EXPECTED
    if state == "57P01" or (state or "").startswith("08"):
        return CONNECTION_LOST
    if state is None and isinstance(error, psycopg.OperationalError) and conn.broken:
        return CONNECTION_LOST
    return UNEXPECTED


class Session(threading.Thread):
    """One client: a loop of random operations on its own connection, reconnecting after the
    fault injector ends it. Its holder name changes with every connection."""

    def __init__(self, index, load):
        super().__init__(name=f"session-{index}", daemon=True)
        self.index = index
        self.load = load
        self.rng = random.Random(load.seed * 1000 + index)
        self.lock_timeout = index % 4 == 3
        self.conn = None
        self.conn_id = 0
        self.gen = 0
        self.holdings = {}
        self.past = []

    @property
    def holder(self):
        return f"s{self.index}c{self.conn_id}"

    def run(self):
        try:
            while not self.load.stopping.is_set():
                if self.conn is None and not self.reconnect():
                    break
                self.step()
        except Exception:  # a bug in the harness must not pass silently
            self.load.failures.append(f"session {self.index}: {traceback.format_exc()}")
        finally:
            if self.conn is not None:
                self.conn.close()

    # --- connections -------------------------------------------------------------------------

    def open_connection(self):
        conn = psycopg.connect(self.load.dsn, autocommit=True, connect_timeout=10,
                               application_name=f"lease-load-s{self.index}")
        if self.lock_timeout:
            try:
                conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            except psycopg.Error:
                conn.close()
                raise
        return conn

    def reconnect(self):
        """Opens a new connection (retrying while the server restarts); forgets session-bound
        leases, which ended with the old session. False if stopping or it failed."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        for resource, holding in list(self.holdings.items()):
            if holding.session_bound:
                self.forget(resource)
        deadline = time.monotonic() + RECONNECT_DEADLINE
        while not self.load.stopping.is_set():
            try:
                conn, gen = self.load.gate.connect(self.open_connection, self.load.stopping)
                if conn is None:
                    return False
                self.conn, self.gen, self.conn_id = conn, gen, self.load.next_conn()
                self.load.pids[self.conn_id] = conn.info.backend_pid
                return True
            except psycopg.OperationalError as error:
                if classify(error, conn_was_lost, {"57P03"}) == UNEXPECTED:
                    self.load.failures.append(f"session {self.index} could not connect: {error}")
                if time.monotonic() > deadline:
                    self.load.failures.append(f"session {self.index} could not reconnect: {error}")
                    return False
                time.sleep(0.05)
        return False

    def clock(self):
        return self.conn.execute("SELECT clock_timestamp()").fetchone()[0]

    def read_info(self, op):
        row = self.conn.execute(READ_INFO, (op.resource,)).fetchone()
        op.t1 = row[0]
        op.info = Info(*row[1:]) if row[1] is not None else None

    # --- one operation -------------------------------------------------------------------------

    def new_op(self, kind, resource, token=None, **fields):
        return Op(self.index, self.conn_id, self.gen, kind, resource, token, self.holder, **fields)

    def transact(self, op, body, allowed=(), isolation=""):
        """Runs body(op) between BEGIN and COMMIT, reading the server clock first; records the
        operation and its outcome, and handles errors."""
        allowed = set(allowed) | ({"55P03"} if self.lock_timeout else set())
        try:
            self.conn.execute(f"BEGIN {isolation}")
            op.t0 = self.clock()
            try:
                body(op)
            except Rollback:
                self.conn.execute("ROLLBACK")
                op.outcome = "aborted"
            else:
                op.outcome = "unknown"
                self.conn.execute("COMMIT")
                op.outcome = "committed"
        except psycopg.Error as error:
            self.failed(op, error, allowed)
        with self.load.lock:
            self.load.ops.append(op)
        return op

    def failed(self, op, error, allowed):
        op.sqlstate = getattr(error, "sqlstate", None)
        op.error = (str(error).splitlines() or [type(error).__name__])[0]
        op.error_class = classify(error, self.conn, allowed)
        lost = op.error_class == CONNECTION_LOST or self.conn.broken
        if not (op.outcome == "unknown" and lost):
            op.outcome = "aborted"
        if lost:
            self.conn.close()
            self.conn = None
            return
        try:  # the transaction is aborted: end it, and read the clock after the refusal
            self.conn.execute("ROLLBACK")
            op.t1 = op.t1 or self.clock()
        except psycopg.Error:
            self.conn.close()
            self.conn = None

    # --- choosing what to do --------------------------------------------------------------------

    def step(self):
        rng = self.rng
        roll = rng.random()
        held = list(self.holdings.values())
        if roll < 0.04:
            self.pause()
        elif roll < 0.08 and self.past:
            resource, token = rng.choice(self.past)
            self.write(resource, token, "stale")
        elif held and roll < 0.75:
            holding = rng.choice(held)
            action = rng.choices(["renew", "write", "release", "reacquire"], weights=[3, 4, 2, 1])[0]
            if action == "renew":
                self.renew(holding)
            elif action == "write":
                variant = rng.choice(["check", "check", "assert", "slow", "rr"])
                self.write(holding.resource, holding.token, variant, holding.ttl)
            elif action == "release":
                self.release(holding)
            elif holding.conn == self.conn_id:
                self.acquire(holding.resource, holding.ttl, None, holding.session_bound, "reacquire")
        elif len(held) < MAX_HOLDINGS:
            self.acquire_new()
        else:
            self.renew(rng.choice(held))

    def acquire_new(self):
        rng = self.rng
        long = rng.random() < 0.15
        pool = self.load.long_resources if long else self.load.short_resources
        free = [r for r in pool if r not in self.holdings]
        if not free:
            return
        ttl = rng.uniform(*(LONG_TTL if long else SHORT_TTL))
        wait = rng.choice([None, None, 0.0, 0.05, 0.2])
        self.acquire(rng.choice(free), ttl, wait, rng.random() < 0.2, "acquire")

    def pause(self):
        """A stop-the-world holder: sleeps longer than a short ttl holding its leases."""
        op = self.new_op("pause", "")
        with self.load.lock:
            self.load.ops.append(op)
        self.load.stopping.wait(self.rng.uniform(1.2, 2.0) * SHORT_TTL[1])

    # --- the operations --------------------------------------------------------------------------

    def acquire(self, resource, ttl, wait, session_bound, kind):
        token = self.holdings[resource].token if kind == "reacquire" else None
        variant = ("wait" if wait else "no wait") + (", session-bound" if session_bound else "")
        op = self.new_op(kind, resource, token, ttl=ttl, session_bound=session_bound, variant=variant)
        wait_interval = timedelta(seconds=wait) if wait is not None else None

        def body(op):
            op.sent = True
            op.result = self.conn.execute(
                "SELECT lease_acquire(%s, %s, %s, %s, %s)",
                (resource, self.holder, timedelta(seconds=ttl), wait_interval, session_bound),
            ).fetchone()[0]
            self.read_info(op)

        self.transact(op, body)
        if op.result is not None and op.outcome != "aborted":
            self.holdings[resource] = Holding(resource, op.result, ttl, session_bound, self.conn_id)
        elif kind == "reacquire" and op.error_class is None:
            self.forget(resource)

    def renew(self, holding):
        op = self.new_op("renew", holding.resource, holding.token, ttl=holding.ttl,
                         session_bound=holding.session_bound)

        def body(op):
            op.sent = True
            op.result = self.conn.execute(
                "SELECT lease_renew(%s, %s, %s)", (op.resource, op.token, timedelta(seconds=holding.ttl))
            ).fetchone()[0]
            self.read_info(op)

        self.transact(op, body)
        if op.result is False:
            self.forget(holding.resource)

    def release(self, holding):
        op = self.new_op("release", holding.resource, holding.token, session_bound=holding.session_bound)

        def body(op):
            op.sent = True
            op.result = self.conn.execute(
                "SELECT lease_release(%s, %s)", (op.resource, op.token)
            ).fetchone()[0]
            self.read_info(op)

        self.transact(op, body)
        self.forget(holding.resource)

    def write(self, resource, token, variant, ttl=SHORT_TTL[1]):
        """A fenced write to lease_load.protected plus its log row, in one transaction."""
        op = self.new_op("write", resource, token, variant=variant)
        params = {"resource": resource, "token": token, "session": self.index}
        checked_write = FENCED_WRITE.format(fence=f"AND {self.load.fence}")

        def write_row(statement):
            row = self.conn.execute(statement, params).fetchone()
            op.result = row[0] if row else None

        def body(op):
            op.sent = True
            if variant == "assert" and self.load.fence == FENCE:
                self.conn.execute("SELECT lease_assert(%s, %s)", (resource, token))
                write_row(UNCHECKED_WRITE)
            elif variant in ("slow", "assert"):  # slow: pauses inside the fence, past the lease's expiry
                if not self.conn.execute(f"SELECT {self.load.fence}", params).fetchone()[0]:
                    op.t1 = self.clock()
                    raise Rollback
                if variant == "slow":
                    time.sleep(self.rng.uniform(1.2, 2.0) * min(ttl, SHORT_TTL[1]))
                write_row(UNCHECKED_WRITE)
            elif variant == "rr":  # the snapshot is older than the check: it must not matter
                time.sleep(self.rng.uniform(0.0, 1.5) * min(ttl, SHORT_TTL[1]))
                write_row(checked_write)
            else:
                write_row(checked_write)
            self.read_info(op)

        allowed = {"assert": {"55000"}, "rr": {"40001"}}.get(variant, set())
        self.transact(op, body, allowed, "ISOLATION LEVEL REPEATABLE READ" if variant == "rr" else "")
        refused = op.error_class is None and op.result is None or op.sqlstate == "55000"
        if refused and self.holdings.get(resource) and self.holdings[resource].token == token:
            self.forget(resource)

    def forget(self, resource):
        holding = self.holdings.pop(resource, None)
        if holding is not None:
            self.past = (self.past + [(resource, holding.token)])[-10:]
