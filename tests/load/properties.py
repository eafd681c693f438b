"""The checker: proves five properties from the record of a load run and the database, and
counts what it checked. Pure functions over a `Run`; used by checker.py and selftest.py.

Operations whose outcome is unknown (the connection was lost during COMMIT) only widen what is
allowed: a validity interval is built from what certainly happened (committed changes, and
calls that found the lease valid), cut short by anything that may have changed or ended it (a
re-acquire with a shorter ttl shortens a lease; a release or the end of the holder's session
ends it)."""

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from workload import CONNECTION_LOST, UNEXPECTED

PROPERTIES = {
    "exclusive": "1. at no moment do two tokens for one resource both hold a valid lease",
    "fencing": "2. accepted fenced writes carry non-decreasing tokens, none superseded",
    "tokens": "3. tokens strictly increase per resource and across the restart, never reused",
    "durable": "4. committed unexpired leases survive the restart and stay valid until they expire",
    "errors": "5. no session got an unexpected error class; the server never crashed by itself",
}
MAX_SHOWN = 20


@dataclass
class Run:
    """The record of a run and what the database held afterwards."""
    ops: list
    terminations: list
    restarts: list
    writes: list          # (resource, seq, token, at) from lease_load.writes
    protected: dict       # resource -> (token, writes) from lease_load.protected
    final_leases: dict    # resource -> token from lease.leases at the end
    failures: list        # the harness's own failures (a session that could not reconnect...)
    log_problems: list    # server log lines showing a crash we did not cause
    pids: dict = field(default_factory=dict)   # connection serial number -> backend pid


@dataclass
class Result:
    checked: int = 0
    parts: dict = field(default_factory=dict)   # what was checked: kind of item -> count
    violations: list = field(default_factory=list)

    def count(self, part, items=1):
        self.checked += items
        self.parts[part] = self.parts.get(part, 0) + items

    def fail(self, message):
        self.violations.append(message)


@dataclass
class Grant:
    """One token: the lease it stands for, and the part of its validity that is certain."""
    resource: str
    token: int
    holder: str
    session: int
    conn: int
    session_bound: bool
    acquired_at: datetime | None = None
    confirmed: bool = False
    known_until: datetime | None = None   # the lease certainly lasted at least until here ...
    cut: datetime | None = None           # ... unless it ended (release, session end) by here
    granted_by: object = None             # the operation that first returned the token

    @property
    def valid_until(self):
        if self.known_until is None:
            return None
        return min(self.known_until, self.cut) if self.cut is not None else self.known_until


def latest(a, b):
    return b if a is None or (b is not None and b > a) else a


def earliest(a, b):
    return b if a is None or (b is not None and b < a) else a


def found_valid(op):
    """True if the call itself showed that op.token held op.resource (between t0 and t1)."""
    if op.kind == "renew" or op.kind == "release":
        return op.result is True
    if op.kind == "reacquire":
        return op.result is not None and op.result == op.token
    if op.kind == "write":
        return op.result is not None
    return False


def refused(op):
    """True if the call answered that op.token does not hold op.resource."""
    if op.error_class is not None:
        return op.sqlstate == "55000"
    if op.kind in ("renew", "release"):
        return op.result is False
    if op.kind == "reacquire":
        return op.result != op.token
    if op.kind == "write":
        return op.result is None
    return False


def last_alive(ops):
    """Per connection: the latest server clock it returned (its backend was alive then)."""
    alive = {}
    for op in ops:
        alive[op.conn] = latest(alive.get(op.conn), latest(op.t0, op.t1))
    return alive


def build_grants(run):
    """Every token a client was given, with what the record and the database prove about it."""
    grants = {}
    for op in run.ops:
        if op.kind in ("acquire", "reacquire") and op.result is not None and op.result not in grants:
            grants[op.result] = Grant(op.resource, op.result, op.holder, op.session, op.conn, op.session_bound,
                                      granted_by=op)
    confirm(run, grants)
    for ops in by_session(run.ops).values():
        expiry = Expiry(grants)
        for op in ops:
            expiry.step(op)
        for token, until in expiry.floors().items():
            grants[token].known_until = latest(grants[token].known_until, until)
    alive = last_alive(run.ops)
    for grant in grants.values():
        if grant.session_bound:
            grant.cut = earliest(grant.cut, alive.get(grant.conn))
    return grants


def confirm(run, grants):
    """A grant certainly committed if its COMMIT returned, if another transaction saw its lease
    (lease_info, or a call that found the token valid), or if the database holds its token.
    Also sets when it was granted, and cuts it at a release that may have committed."""
    db_tokens = {token for _, _, token, _ in run.writes} | set(run.final_leases.values())
    for restart in run.restarts:
        db_tokens |= {token for token, _ in restart.snapshot.values()}
    for op in run.ops:
        if op.info is not None and op.info.token in grants:
            grant = grants[op.info.token]
            grant.acquired_at = grant.acquired_at or op.info.acquired_at
            grant.confirmed = grant.confirmed or op is not grant.granted_by
        if op.kind in ("acquire", "reacquire") and op.result is not None and op.outcome == "committed":
            grants[op.result].confirmed = True
        if op.token in grants and found_valid(op):
            grant = grants[op.token]
            grant.confirmed = True
            grant.known_until = latest(grant.known_until, op.t0)
        if op.kind == "release" and op.token in grants and op.result is True and op.outcome != "aborted":
            grants[op.token].cut = earliest(grants[op.token].cut, op.t1)
    for token in db_tokens & grants.keys():
        grants[token].confirmed = True


def by_session(ops):
    sessions = defaultdict(list)
    for op in ops:
        sessions[op.session].append(op)
    return sessions


def effect(op, grant):
    """What a call of the holder's session did to the grant's lease: 'known' (a committed change
    whose new expiry it read), 'possible' (a change that may have committed), 'ends' (a release
    that may have committed), or None."""
    if op.session != grant.session or not op.sent or op.outcome == "aborted":
        return None
    if op.kind == "release" and op.token == grant.token:
        return "ends" if op.result is not False else None
    changed = (op.kind == "renew" and op.token == grant.token and op.result is True
               or op.kind in ("acquire", "reacquire") and op.holder == grant.holder and op.result == grant.token)
    if not changed:
        return None
    certain = op.outcome == "committed" or op is grant.granted_by and grant.confirmed
    return "known" if certain and op.info is not None and op.info.token == grant.token else "possible"


class Expiry:
    """Follows one session's calls in order. `current[token]` is the expiry that the last
    certain change of the lease set, while no call since may have changed or ended it; `floor`
    keeps, for each token, how long its lease certainly lasted given the changes seen so far."""

    def __init__(self, grants):
        self.grants = grants
        self.current = {}
        self.floor = {}

    def step(self, op):
        for token in {op.token, op.result} & self.grants.keys():
            kind = effect(op, self.grants[token])
            if kind is None:
                continue
            previous = self.current.pop(token, None)
            if previous is not None:  # it lasted until this call, or until that expiry if earlier
                self.floor[token] = latest(self.floor.get(token), min(previous, op.t0))
            if kind == "known":
                self.current[token] = op.info.expires_at

    def floors(self):
        return {token: latest(self.floor.get(token), self.current.get(token))
                for token in self.floor.keys() | self.current.keys()}


def check_exclusive(run, grants):
    result = Result()
    by_resource = defaultdict(list)
    for grant in grants.values():
        if grant.confirmed and grant.acquired_at is not None and grant.valid_until is not None:
            by_resource[grant.resource].append(grant)
    for resource, items in by_resource.items():
        items.sort(key=lambda g: g.acquired_at)
        longest = None
        for grant in items:
            result.count("grants")
            if longest is not None and grant.acquired_at < longest.valid_until:
                result.fail(f"{resource}: token {grant.token} granted at {grant.acquired_at} while token "
                            f"{longest.token} was valid until at least {longest.valid_until}")
            if longest is None or grant.valid_until > longest.valid_until:
                longest = grant
    return result


def check_fencing(run, grants):
    result = Result()
    log = defaultdict(list)
    for resource, seq, token, at in run.writes:
        log[resource].append((seq, token, at))
    for resource, (final_token, count) in run.protected.items():
        rows = sorted(log.get(resource, []))
        result.count("resources")
        if [seq for seq, _, _ in rows] != list(range(1, count + 1)):
            result.fail(f"{resource}: {count} writes counted but log sequence {[s for s, _, _ in rows][:10]}...")
        for (seq_a, token_a, _), (seq_b, token_b, _) in zip(rows, rows[1:]):
            if token_b < token_a:
                result.fail(f"{resource}: write {seq_b} with token {token_b} accepted after write {seq_a} with {token_a}")
        if rows and rows[-1][1] != final_token:
            result.fail(f"{resource}: protected row has token {final_token}, last logged write {rows[-1][1]}")
    check_writes_against_grants(run, grants, result)
    logged = {(resource, seq): token for resource, seq, token, _ in run.writes}
    for op in run.ops:
        if op.kind == "write" and op.outcome == "committed" and op.result is not None:
            result.count("committed writes")
            if logged.get((op.resource, op.result)) != op.token:
                result.fail(f"{op.resource}: committed write {op.result} with token {op.token} not in the log")
    return result


def check_writes_against_grants(run, grants, result):
    """A write fenced by token t: t was granted for that resource before the write, and no
    larger token of the resource was granted before the write's transaction ended."""
    timeline = defaultdict(list)
    for grant in grants.values():
        if grant.confirmed and grant.acquired_at is not None:
            timeline[grant.resource].append((grant.acquired_at, grant.token))
    prefix_max = {}
    for resource, items in timeline.items():
        items.sort()
        highest, running = [], 0
        for _, token in items:
            running = max(running, token)
            highest.append(running)
        prefix_max[resource] = ([at for at, _ in items], highest)
    for resource, seq, token, at in run.writes:
        result.count("logged writes")
        grant = grants.get(token)
        if grant is None or grant.resource != resource:
            result.fail(f"{resource}: write {seq} accepted with token {token}, never granted for it")
            continue
        if grant.acquired_at is not None and at < grant.acquired_at:
            result.fail(f"{resource}: write {seq} with token {token} at {at}, before its grant at {grant.acquired_at}")
        times, highest = prefix_max.get(resource, ([], []))
        index = bisect.bisect_right(times, at)
        if index and highest[index - 1] > token:
            result.fail(f"{resource}: write {seq} accepted at {at} with token {token}, superseded by "
                        f"token {highest[index - 1]} granted before it")


def check_tokens(run, grants):
    result = Result()
    identity = {}
    for op in run.ops:
        seen = []
        if op.kind in ("acquire", "reacquire") and op.result is not None:
            seen.append((op.result, op.resource, op.holder, None))
            if op.info is not None and op.info.token != op.result:
                result.fail(f"{op.resource}: acquire returned {op.result} but its own transaction sees {op.info.token}")
        if op.info is not None:
            seen.append((op.info.token, op.resource, op.info.holder, op.info.acquired_at))
        for token, resource, holder, acquired_at in seen:
            known = identity.setdefault(token, [resource, holder, acquired_at])
            known[2] = known[2] or acquired_at
            if (known[0], known[1]) != (resource, holder) or acquired_at not in (None, known[2]):
                result.fail(f"token {token} stands for {known} and for {(resource, holder, acquired_at)}")
    result.count("tokens", len(identity))
    for grant in grants.values():
        if grant.confirmed and grant.granted_by.outcome == "aborted":
            result.fail(f"{grant.resource}: token {grant.token} took effect though its acquire was rolled back")
    by_resource = defaultdict(list)
    for grant in grants.values():
        if grant.confirmed and grant.acquired_at is not None:
            by_resource[grant.resource].append(grant)
    for resource, items in by_resource.items():
        items.sort(key=lambda g: g.acquired_at)
        for earlier, later in zip(items, items[1:]):
            result.count("grant pairs")
            if later.token <= earlier.token:
                result.fail(f"{resource}: token {later.token} granted at {later.acquired_at} after token "
                            f"{earlier.token} at {earlier.acquired_at}")
    check_tokens_across_restarts(run, result)
    return result


def check_tokens_across_restarts(run, result):
    """Every token first returned after a restart is larger than every token returned before."""
    returned = defaultdict(set)
    for op in run.ops:
        if op.kind in ("acquire", "reacquire") and op.result is not None:
            returned[op.gen].add(op.result)
    before = set()
    for gen in sorted(returned):
        highest = max(before, default=0)
        for token in sorted(returned[gen] - before) if before else []:
            result.count("tokens after a restart")
            if token <= highest:
                result.fail(f"token {token} granted after restart {gen} is not above {highest} from before it")
        before |= returned[gen]


def check_durable(run, grants):
    result = Result()
    for number, restart in enumerate(run.restarts):
        check_snapshot(run, grants, number, restart, result)
    check_no_lease_lost(run, grants, result)
    return result


def check_snapshot(run, grants, gen, restart, result):
    """Leases whose holder saw a committed change (and nothing since that may have changed or
    ended them) before the crash, expiring after the first look at the restarted server, are in
    the table then with the same token."""
    if restart.other_clients:
        result.fail(f"restart {gen + 1}: {restart.other_clients} clients connected before the snapshot")
    for ops in by_session(op for op in run.ops if op.gen <= gen).values():
        expiry = Expiry(grants)
        for op in ops:
            expiry.step(op)
        for token, until in expiry.current.items():
            grant = grants[token]
            if grant.session_bound or until <= restart.up:
                continue
            result.count("leases over a restart")
            found = restart.snapshot.get(grant.resource, (None, None))[0]
            if found != token:
                result.fail(f"restart {gen + 1}: {grant.resource} token {token} committed until {until}, "
                            f"after the restart ({restart.up}) the table has {found}")


def check_no_lease_lost(run, grants, result):
    """A call with a token whose lease was certainly still valid (its last certain change set an
    expiry after the call, and nothing since may have changed or ended it) must find it valid."""
    for ops in by_session(run.ops).values():
        expiry = Expiry(grants)
        for op in ops:
            until = expiry.current.get(op.token)
            if until is not None and op.t1 is not None and op.t1 < until and usable_by(grants[op.token], op):
                result.count("calls while valid")
                if refused(op):
                    result.fail(f"{op.resource}: {op.kind} ({op.variant}) with token {op.token} refused "
                                f"at {op.t1}, its lease was committed until {until}")
            expiry.step(op)


def usable_by(grant, op):
    if grant.session_bound and op.conn != grant.conn:
        return False
    return op.kind != "reacquire" or op.holder == grant.holder


def check_errors(run, grants):
    result = Result()
    result.count("calls", len(run.ops))
    for op in run.ops:
        if op.error_class == UNEXPECTED:
            result.fail(f"session {op.session} {op.kind} ({op.variant}) on {op.resource}: "
                        f"SQLSTATE {op.sqlstate}: {op.error}")
    terminated = {t.pid for t in run.terminations}
    for op in run.ops:
        if op.error_class == CONNECTION_LOST and run.pids:
            result.count("lost connections")
            if run.pids.get(op.conn) not in terminated and op.gen >= len(run.restarts):
                result.fail(f"session {op.session} lost its connection (backend {run.pids.get(op.conn)}) "
                            f"though nobody terminated it: {op.error}")
    for failure in run.failures:
        result.fail(failure)
    for line in run.log_problems:
        result.fail(f"server log: {line}")
    return result


def check(run):
    """All five properties: name -> Result."""
    grants = build_grants(run)
    checks = {"exclusive": check_exclusive, "fencing": check_fencing, "tokens": check_tokens,
              "durable": check_durable, "errors": check_errors}
    return {name: function(run, grants) for name, function in checks.items()}
