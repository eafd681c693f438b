"""High availability under Patroni: one etcd member and two PostgreSQL 15 nodes (synchronous
replication), each preloading the extension. Four clients hold and fence leases while the primary
is killed twice: first its PostgreSQL alone (its Patroni fails over and brings it back as a
replica, with pg_rewind if its WAL went past the new timeline's start), then the whole node,
Patroni included (the leader key has to expire; the node's Patroni is started again and rejoins
with pg_rewind). The `history` fixture runs that scenario once and keeps
what the clients and the test saw; each test below checks one property of it."""

import datetime
import json
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest

import cluster as ha

CLIENTS = 4
RESOURCES = [f"ha:{n}" for n in range(6)]
TTL = datetime.timedelta(seconds=2)  # the clients' usual lease
SHORT_TTL = datetime.timedelta(milliseconds=300)  # a lease the client lets lapse
WAIT = datetime.timedelta(milliseconds=100)  # how long an acquire queues for a held resource
# Generous for a slow machine shared with builds; a failover takes ~2 s (PostgreSQL killed) or
# ~ttl (node killed) on an idle one.
PATRONI_DEADLINE = 150.0
DEADLINE = 60.0
GRANTS_PER_TERM = 20  # grants by the clients on each primary before it is killed
LOG_DIR = os.environ.get("LEASE_TEST_LOG_DIR")


def now():
    """The wall clock, which is also the servers' (they all run on this machine)."""
    return datetime.datetime.now(datetime.timezone.utc)


def dsn(port):
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def say(text):
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


@dataclass
class Grant:
    client: str
    resource: str
    token: int
    clock: datetime.datetime  # server clock just after the grant
    sent: float  # time.monotonic() when the acquire was sent
    port: int


@dataclass
class Write:
    client: str
    resource: str
    token: int
    outcome: str  # accepted, refused (55000 from the fence) or unknown (connection lost)
    number: int = 0  # the row's write count, for an accepted write


@dataclass
class Lapse:
    """Calls with a token after the server clock passed every expiry its lease could have."""

    client: str
    resource: str
    token: int
    check: object  # lease_check's answer
    renew: object  # lease_renew's answer
    write: str  # the fenced write's outcome
    across_failover: bool


@dataclass
class Held:
    resource: str
    token: int
    expiry_bound: datetime.datetime  # no later than this, the lease is over (server clock)


class Lost(Exception):
    """The connection to the primary is gone (or it is no primary any more)."""


def call(function):
    """Runs `function`, turning the ways a failover shows into Lost."""
    try:
        return function()
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as error:
        raise Lost(str(error).strip()) from error


class Client(threading.Thread):
    """Takes a random resource, fences one to three writes with its token, then releases it
    (after a renewal, half the time) or, one time in four, lets it lapse and checks that the
    token then passes neither check nor renew nor the fence. After losing its connection it
    does what the README asks of a client: reconnects to whichever node accepts writes,
    treats the lease it held as lost, and acquires under a new holder name; it also checks
    that the lost lease's token, once lapsed, passes nothing on the new primary."""

    def __init__(self, number, conninfo):
        super().__init__(name=f"client{number}", daemon=True)
        self.conninfo = conninfo
        self.random = random.Random(number)
        self.generation = 0
        self.holder = None
        self.conn = None
        self.held = None
        self.lock = threading.Lock()
        self.pausing = False
        self.idle = False
        self.stopping = threading.Event()
        self.grants, self.writes, self.lapses, self.errors, self.losses = [], [], [], [], []

    # Pausing: between two steps, never inside one.
    def pause(self):
        with self.lock:
            self.pausing = True

    def resume(self):
        with self.lock:
            self.pausing = False

    def is_idle(self):
        with self.lock:
            return self.pausing and self.idle

    def run(self):
        while not self.stopping.is_set():
            with self.lock:
                self.idle = self.pausing
            if self.idle:
                self.stopping.wait(0.01)
                continue
            try:
                self.step()
            except Lost as lost:
                self.lose(lost)
            except Exception as error:
                if self.conn is None or not (self.conn.broken or self.conn.closed):
                    self.errors.append(repr(error))  # reported by test_clients_saw_no_unexpected_error
                self.lose(error)
        if self.conn is not None:
            self.conn.close()

    def lose(self, error):
        self.losses.append((time.monotonic(), str(error)[:200]))
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.held is not None:
            # A renewal in flight may have committed: its lease lasts at most TTL from now.
            self.held.expiry_bound = max(self.held.expiry_bound, now() + TTL)

    def connection(self):
        while self.conn is None:
            try:
                self.conn = psycopg.connect(self.conninfo, autocommit=True)
            except psycopg.OperationalError:
                if self.stopping.wait(0.05):
                    raise Lost("stopping")
                continue
            self.generation += 1
            self.holder = f"{self.name}.{self.generation}"
        return self.conn

    def step(self):
        conn = self.connection()
        if self.held is not None:
            held = self.held
            self.lapse(conn, held, across_failover=True)
            self.held = None
        resource = self.random.choice(RESOURCES)
        let_lapse = self.random.random() < 0.25
        ttl = SHORT_TTL if let_lapse else TTL
        sent = time.monotonic()
        token, clock = call(lambda: conn.execute(
            "SELECT lease_acquire(%s, %s, %s, wait => %s), clock_timestamp()", (resource, self.holder, ttl, WAIT)
        ).fetchone())
        if token is None:
            return
        self.grants.append(Grant(self.name, resource, token, clock, sent, conn.info.port))
        # The grant's expiry was set before this clock reading.
        self.held = Held(resource, token, clock + ttl)
        for _ in range(self.random.randint(1, 3)):
            self.write(conn, resource, token)
        if let_lapse:
            self.lapse(conn, self.held, across_failover=False)
        else:
            if self.random.random() < 0.5:
                renewed, clock = call(lambda: conn.execute(
                    "SELECT lease_renew(%s, %s, %s), clock_timestamp()", (resource, token, TTL)).fetchone())
                if renewed:
                    self.held.expiry_bound = clock + TTL
            call(lambda: conn.execute("SELECT lease_release(%s, %s)", (resource, token)))
        self.held = None

    def write(self, conn, resource, token):
        """A fenced write: the lease_fence trigger lets it through only while `token` holds
        `resource`; the log row is written in the same transaction."""
        try:
            with conn.transaction():
                number = one(conn, "UPDATE ha_fenced SET token = %s, writes = writes + 1 WHERE resource = %s "
                             "RETURNING writes", (token, resource))
                conn.execute("INSERT INTO ha_fenced_log (resource, number, token, client) VALUES (%s, %s, %s, %s)",
                             (resource, number, token, self.name))
        except psycopg.errors.ObjectNotInPrerequisiteState:
            self.writes.append(Write(self.name, resource, token, "refused"))
            return "refused"
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as error:
            self.writes.append(Write(self.name, resource, token, "unknown"))
            raise Lost(str(error).strip()) from error
        self.writes.append(Write(self.name, resource, token, "accepted", number))
        return "accepted"

    def lapse(self, conn, held, across_failover):
        call(lambda: wait_until_clock_passes(conn, held.expiry_bound))
        check = call(lambda: one(conn, "SELECT lease_check(%s, %s)", (held.resource, held.token)))
        renew = call(lambda: one(conn, "SELECT lease_renew(%s, %s, %s)", (held.resource, held.token, TTL)))
        write = self.write(conn, held.resource, held.token)
        self.lapses.append(Lapse(self.name, held.resource, held.token, check, renew, write, across_failover))


def eventually(condition, timeout=DEADLINE):
    """Whether `condition` became true within `timeout` seconds (for what a test then checks)."""
    try:
        return ha.wait_for(condition, timeout, "")
    except AssertionError:
        return False


def wait_until_clock_passes(conn, moment):
    ha.wait_for(lambda: one(conn, "SELECT clock_timestamp() > %s", (moment,)), DEADLINE,
                f"the server clock to pass {moment}")


@dataclass
class Segment:
    """What one LISTEN connection received."""

    port: int
    events: list = field(default_factory=list)


class Listener(threading.Thread):
    """LISTENs on lease_events on whichever node accepts writes, reconnecting after a failover."""

    def __init__(self, conninfo):
        super().__init__(name="listener", daemon=True)
        self.conninfo = conninfo
        self.segments = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute("LISTEN lease_events")
                    segment = Segment(conn.info.port)
                    self.segments.append(segment)
                    while not self.stopping.is_set():
                        for notify in conn.notifies(timeout=0.2):
                            segment.events.append(json.loads(notify.payload))
            except psycopg.OperationalError:
                self.stopping.wait(0.05)

    def on(self, port):
        """The segment currently listening on `port`, once there is one."""
        return ha.wait_for(lambda: self.segments and self.segments[-1].port == port and self.segments[-1],
                           DEADLINE, f"the listener on port {port}")


@dataclass
class Term:
    """A primary's term, as seen at its end (clients paused, every event published)."""

    node: str
    port: int
    last_seq: int
    published: int
    dropped: int
    segment: Segment


@dataclass
class Failover:
    how: str
    killed: str
    promoted: str
    kill_time: float  # time.monotonic() when the kill was signalled
    dead_time: float  # ... and when everything killed was gone
    promoted_seen: float
    worker_pid: object = None
    probe_events: list = field(default_factory=list)
    bound_ended: bool = False
    expired_session_end: object = None
    timeline: object = None
    rejoin: str = ""


@dataclass
class History:
    clients: list = field(default_factory=list)
    terms: list = field(default_factory=list)
    failovers: list = field(default_factory=list)
    replica_answers: dict = field(default_factory=dict)  # node -> {call: SQLSTATE}
    own_grants: list = field(default_factory=list)  # the test's carried leases
    own_lapses: list = field(default_factory=list)
    log_rows: list = field(default_factory=list)
    fenced_rows: list = field(default_factory=list)
    replica_log_rows: list = field(default_factory=list)

    def grants(self):
        return [g for c in self.clients for g in c.grants] + self.own_grants

    def lapses(self):
        return [x for c in self.clients for x in c.lapses] + self.own_lapses


def replica_answers(node):
    """The SQLSTATE of each API call that changes or fences a lease, on a replica."""
    answers = {}
    with psycopg.connect(dsn(node.port), autocommit=True) as conn:
        assert one(conn, "SELECT pg_is_in_recovery()") is True
        token = one(conn, "SELECT coalesce(max(token), 1) FROM lease.leases")
        calls = {
            "acquire": "SELECT lease_acquire('ha:replica', 'h')",
            "renew": f"SELECT lease_renew('ha:replica', {token})",
            "release": f"SELECT lease_release('ha:replica', {token})",
            "check": f"SELECT lease_check('ha:replica', {token})",
            "assert": f"SELECT lease_assert('ha:replica', {token})",
        }
        for name, sql in calls.items():
            try:
                conn.execute(sql)
                answers[name] = "no error"
            except psycopg.Error as error:
                answers[name] = error.sqlstate
    return answers


def grants_on(clients, port, since):
    return sum(1 for c in clients for g in c.grants if g.port == port and g.sent > since)


def wait_for_term(clients, node, since):
    """Until the clients made GRANTS_PER_TERM grants on `node` since `since`, each some."""
    ha.wait_for(lambda: grants_on(clients, node.port, since) >= GRANTS_PER_TERM and all(
        any(g.port == node.port and g.sent > since for g in c.grants) for c in clients
    ), DEADLINE, f"grants on {node.name}")


def end_term(history, clients, listener, node):
    """Pauses the clients, waits until every event of the term is published and received,
    records the term's counters, and lets the clients go on."""
    for client in clients:
        client.pause()
    try:
        ha.wait_for(lambda: all(c.is_idle() for c in clients), DEADLINE, "the clients to pause")
        segment = listener.on(node.port)
        with psycopg.connect(dsn(node.port), autocommit=True) as conn:
            ha.wait_for(lambda: one(conn, "SELECT pending FROM lease_event_stats()") == 0, DEADLINE,
                        "the events to be published")
            last_seq, published, dropped = conn.execute(
                "SELECT last_seq, published, dropped FROM lease_event_stats()").fetchone()
        ha.wait_for(lambda: max((e.get("seq", 0) for e in list(segment.events)), default=0) >= last_seq,
                    DEADLINE, f"the listener to receive event {last_seq}")
        history.terms.append(Term(node.name, node.port, last_seq, published, dropped, segment))
        say(f"term on {node.name} ends: {last_seq} events numbered, {dropped} dropped")
    finally:
        for client in clients:
            client.resume()


def before_failover(history, primary, replica, number):
    """Leaves two leases on the primary that must outlive it: a session-bound one (1 hour) whose
    session dies with the primary, and a plain one the test holds across the failover. Returns
    the session's connection (it dies with the primary) and the plain lease."""
    bound_conn = psycopg.connect(dsn(primary.port), autocommit=True)
    bound = f"ha:bound:{number}"
    assert one(bound_conn, "SELECT lease_acquire(%s, 'bound', '1 hour', session_bound => true)", (bound,))
    with psycopg.connect(dsn(primary.port), autocommit=True) as conn:
        resource = f"ha:carried:{number}"
        sent = time.monotonic()
        token, clock = conn.execute("SELECT lease_acquire(%s, 'carried', %s), clock_timestamp()",
                                    (resource, TTL)).fetchone()
        history.own_grants.append(Grant("test", resource, token, clock, sent, primary.port))
        lsn = one(conn, "SELECT pg_current_wal_lsn()")
    with psycopg.connect(dsn(replica.port), autocommit=True) as conn:
        ha.wait_for(lambda: one(conn, "SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)), DEADLINE, "replay")
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource IN (%s, %s)", (bound, resource)) == 2
    return bound_conn, bound, Held(resource, token, clock + TTL)


def after_failover(history, failover, listener, node, bound, carried):
    """On the new primary: the expiry worker runs, expires a lease and announces it; the
    session-bound lease of the dead primary's session is gone; the lease the test held across
    the failover passes neither check nor renew once lapsed."""
    with psycopg.connect(dsn(node.port), autocommit=True) as conn:
        # The timeline is the first 8 hex digits of the current WAL file's name.
        failover.timeline = one(
            conn, "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")
        failover.worker_pid = eventually(lambda: one(
            conn, "SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'lease expirer' AND datname = 'postgres'"
        )) or None
        segment = listener.on(node.port)
        probe = f"ha:probe:{len(history.failovers)}"
        token = one(conn, "SELECT lease_acquire(%s, 'probe', '500 ms')", (probe,))
        eventually(lambda: any(e["resource"] == probe and e["event"] == "expired" for e in list(segment.events)))
        failover.probe_events = [(e["event"], e.get("reason"), e["token"] == token, "seq" in e)
                                 for e in list(segment.events) if e["resource"] == probe]
        failover.bound_ended = eventually(
            lambda: one(conn, "SELECT count(*) = 0 FROM lease.leases WHERE resource = %s", (bound,)))
        failover.expired_session_end = one(conn, "SELECT expired_session_end FROM lease.stats")
        wait_until_clock_passes(conn, carried.expiry_bound)
        check = one(conn, "SELECT lease_check(%s, %s)", (carried.resource, carried.token))
        renew = one(conn, "SELECT lease_renew(%s, %s, %s)", (carried.resource, carried.token, TTL))
        history.own_lapses.append(Lapse("test", carried.resource, carried.token, check, renew, "not tried", True))


def fail_over(history, cluster, clients, listener, old, how):
    """Kills the primary `old` (its PostgreSQL, or the whole node), waits for the other node to
    be promoted, checks it, and brings `old` back as a replica."""
    number = len(history.failovers)
    replica = next(n for n in cluster.nodes if n is not old)
    bound_conn, bound, carried = before_failover(history, old, replica, number)
    # Under load: the clients have been running since the end of the term.
    start = time.monotonic()
    ha.wait_for(lambda: grants_on(clients, old.port, start) >= 5, DEADLINE, "more grants before the kill")
    kill_time = old.kill_postgres() if how == "postgres" else old.kill()
    # Every grant asked for before this moment went to the old primary (the other node is
    # promoted only after it died), every one asked for after it to the new primary.
    dead_time = time.monotonic()
    say(f"killed {'the PostgreSQL of' if how == 'postgres' else 'the whole node'} {old.name}")
    new = ha.wait_for(lambda: next((n for n in cluster.nodes if n is not old and n.is_primary()), None),
                      PATRONI_DEADLINE, "a new primary")
    failover = Failover(how, old.name, new.name, kill_time, dead_time, time.monotonic())
    history.failovers.append(failover)
    say(f"{new.name} promoted {failover.promoted_seen - kill_time:.1f} s after the kill")
    bound_conn.close()
    after_failover(history, failover, listener, new, bound, carried)
    if how != "postgres":
        old.start()  # the node is back: its Patroni starts again
    cluster.wait_for_replica(old, PATRONI_DEADLINE)
    log = old.log_text()
    failover.rejoin = "pg_rewind" if "running pg_rewind from" in log else "without pg_rewind"
    assert "reinitializ" not in log and log.count("replica has been created using basebackup") <= 1, \
        f"{old.name} was rebuilt instead of rejoining"
    say(f"{old.name} is back as a replica ({failover.rejoin})")
    history.replica_answers[f"{old.name} after failover {number + 1}"] = replica_answers(old)
    return new


@pytest.fixture(scope="module")
def cluster():
    running = ha.Cluster(size=2, synchronous=True)
    try:
        running.start(timeout=PATRONI_DEADLINE)
        yield running
    finally:
        running.stop()
        if LOG_DIR:
            target = os.path.join(LOG_DIR, "ha")
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(target)
            logs = {"etcd.log": ha.as_root("cat", os.path.join(running.dir, "etcd.log"), check=False).stdout}
            logs.update({f"{n.name}-patroni.log": n.log_text() for n in running.nodes})
            for name, text in logs.items():
                with open(os.path.join(target, name), "w") as f:
                    f.write(text)


@pytest.fixture(scope="module")
def history(cluster):
    history = History()
    first, second = cluster.nodes
    assert cluster.primary() is first
    with psycopg.connect(dsn(first.port), autocommit=True) as conn:
        conn.execute("CREATE TABLE ha_fenced (resource text PRIMARY KEY, token bigint NOT NULL, "
                     "writes bigint NOT NULL)")
        conn.execute("INSERT INTO ha_fenced SELECT r, 0, 0 FROM unnest(%s::text[]) AS r", (RESOURCES,))
        conn.execute("CREATE TRIGGER ha_fence BEFORE UPDATE OR DELETE ON ha_fenced "
                     "FOR EACH ROW EXECUTE FUNCTION lease_fence('resource', 'token')")
        conn.execute("CREATE TABLE ha_fenced_log (resource text, number bigint, token bigint NOT NULL, "
                     "client text NOT NULL, PRIMARY KEY (resource, number))")
        # The first lease change asks the launcher for this database's worker; until it runs,
        # events go out directly, without seq.
        one(conn, "SELECT lease_release('ha:setup', lease_acquire('ha:setup', 'setup'))")
        ha.wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease expirer'"),
                    DEADLINE, "the expiry worker")
    history.replica_answers["node2 before failover 1"] = replica_answers(second)
    conninfo = cluster.connection_string()
    listener = Listener(conninfo)
    listener.start()
    listener.on(first.port)
    clients = [Client(n, conninfo) for n in range(CLIENTS)]
    history.clients = clients
    for client in clients:
        client.start()
    try:
        # node1's term, then its PostgreSQL dies (its Patroni lives and fails over).
        wait_for_term(clients, first, 0)
        end_term(history, clients, listener, first)
        fail_over(history, cluster, clients, listener, first, "postgres")
        # node2's term, then the whole node dies, Patroni first.
        wait_for_term(clients, second, history.failovers[-1].dead_time)
        end_term(history, clients, listener, second)
        fail_over(history, cluster, clients, listener, second, "node")
        # node1's second term.
        wait_for_term(clients, first, history.failovers[-1].dead_time)
        end_term(history, clients, listener, first)
    finally:
        for client in clients:
            client.stopping.set()
        listener.stopping.set()
        for thread in clients + [listener]:
            thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in clients + [listener]), "a client did not stop"
    with psycopg.connect(dsn(first.port), autocommit=True) as conn:
        history.log_rows = conn.execute(
            "SELECT resource, number, token FROM ha_fenced_log ORDER BY resource, number").fetchall()
        history.fenced_rows = conn.execute("SELECT resource, token, writes FROM ha_fenced ORDER BY resource").fetchall()
        lsn = one(conn, "SELECT pg_current_wal_lsn()")
    with psycopg.connect(dsn(second.port), autocommit=True) as conn:
        ha.wait_for(lambda: one(conn, "SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)), DEADLINE, "replay")
        history.replica_log_rows = conn.execute(
            "SELECT resource, number, token FROM ha_fenced_log ORDER BY resource, number").fetchall()
    writes = [w for c in clients for w in c.writes]
    lapses = history.lapses()
    say(f"{len(history.grants())} grants, {sum(w.outcome == 'accepted' for w in writes)} fenced writes accepted and "
        f"{sum(w.outcome == 'refused' for w in writes)} refused, {len(lapses)} lapsed tokens tried "
        f"({sum(x.across_failover for x in lapses)} across a failover)")
    for f in history.failovers:
        firsts = [min((g.sent for g in c.grants if g.sent > f.dead_time), default=None) for c in clients]
        first_grant = min(t for t in firsts if t is not None) - f.kill_time
        say(f"failover ({f.how} killed): {f.promoted} promoted {f.promoted_seen - f.kill_time:.1f} s after the kill, "
            f"first client grant {first_grant:.1f} s after it; {f.killed} rejoined {f.rejoin}")
    return history


def test_clients_saw_no_unexpected_error(history):
    assert [e for c in history.clients for e in c.errors] == []
    # Each client lost its primary at each failover, and carried on.
    for client in history.clients:
        for number, failover in enumerate(history.failovers):
            assert any(g.sent > failover.dead_time for g in client.grants), (client.name, number)


def test_tokens_only_grow_per_resource(history):
    grants = history.grants()
    tokens = [g.token for g in grants]
    assert len(set(tokens)) == len(tokens), "a token was handed out twice"
    by_resource = {}
    for grant in sorted(grants, key=lambda g: g.clock):
        by_resource.setdefault(grant.resource, []).append(grant.token)
    for resource, tokens in by_resource.items():
        assert tokens == sorted(tokens), resource
    assert sum(len(t) for t in by_resource.values()) >= 3 * GRANTS_PER_TERM


def test_every_grant_after_a_failover_exceeds_every_grant_before_it(history):
    grants = history.grants()
    kills = [f.dead_time for f in history.failovers]
    assert len(kills) == 2
    for kill in kills:
        before = [g.token for g in grants if g.sent < kill]
        after = [g.token for g in grants if g.sent > kill]
        assert before and after
        assert min(after) > max(before)
    # Each term's tokens carry its timeline: (timeline - 1) << 48 | n.
    for grant in grants:
        term = sum(1 for kill in kills if grant.sent > kill)
        assert grant.token >> 48 == term, grant
    assert [f.timeline for f in history.failovers] == [2, 3]


def test_no_fenced_row_goes_back_to_an_older_token(history):
    by_resource = {}
    for resource, number, token in history.log_rows:
        by_resource.setdefault(resource, []).append((number, token))
    assert set(by_resource) == set(RESOURCES)
    fenced = {resource: (token, writes) for resource, token, writes in history.fenced_rows}
    for resource, writes in by_resource.items():
        numbers = [number for number, _ in writes]
        tokens = [token for _, token in writes]
        assert numbers == list(range(1, len(writes) + 1)), resource
        assert tokens == sorted(tokens), resource
        assert fenced[resource] == (tokens[-1], len(writes)), resource
    # Synchronous replication: every write a client saw committed is in the final table, as the
    # client saw it, and the replica has the same.
    accepted = {(w.resource, w.number, w.token) for c in history.clients for w in c.writes if w.outcome == "accepted"}
    assert accepted <= set(history.log_rows)
    assert len(accepted) >= 3 * GRANTS_PER_TERM
    assert history.replica_log_rows == history.log_rows


def test_a_lapsed_token_passes_neither_check_nor_renew(history):
    lapses = history.lapses()
    assert [x for x in lapses if x.check is not False or x.renew is not False] == []
    assert [x for x in lapses if x.write not in ("refused", "not tried")] == []
    assert sum(1 for x in lapses if not x.across_failover) >= 3
    # The lease the test held across each failover (and those the clients held then, if any).
    assert sum(1 for x in history.own_lapses if x.across_failover) == 2


def test_the_worker_expires_and_announces_on_each_new_primary(history):
    assert [(f.killed, f.promoted) for f in history.failovers] == [("node1", "node2"), ("node2", "node1")]
    for failover in history.failovers:
        assert failover.worker_pid is not None
        # announced by the worker (with seq), once, for the probe's token
        assert failover.probe_events[-1:] == [("expired", "ttl", True, True)]
        assert [e[0] for e in failover.probe_events] == ["acquired", "expired"]
        # the session-bound lease (1 hour) of the dead primary's session ended on the new primary
        assert failover.bound_ended
        assert failover.expired_session_end == 1


def test_the_api_refuses_on_each_replica(history):
    assert list(history.replica_answers) == [
        "node2 before failover 1", "node1 after failover 1", "node2 after failover 2"]
    for node, answers in history.replica_answers.items():
        assert answers == {call: "25006" for call in ("acquire", "renew", "release", "check", "assert")}, node


def test_event_sequence_has_no_gap_within_a_term(history):
    assert [t.node for t in history.terms] == ["node1", "node2", "node1"]
    for term in history.terms:
        assert term.dropped == 0
        # numbered from 1 by this primary's worker: everything numbered was published
        assert term.published == term.last_seq > 0
        seqs = [e["seq"] for e in term.segment.events if "seq" in e]
        assert seqs, term.node
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"a gap in the events of {term.node}"
        assert seqs[-1] >= term.last_seq
