"""A randomized, stateful model test of the lease contract (the 0.4.0 contract of issue 13).

A reference model of the contract, written here in plain Python, runs side by side with real
client sessions. Each history drives four sessions on four fresh resources, interleaved at
statement level, single-threaded and deterministic for a given seed:

- s0 is the superuser `postgres`; s1 and s3 are the LOGIN role `lease_model_a`; s2 is
  `lease_model_b`, a plain (INHERIT) member of `lease_model_a` that was also granted EXECUTE on
  `lease_force_release`. So s2 may renew, release and check the leases of s1 and s3 but not the
  other way round, nobody but s0 is a member of the superuser's leases, s1 and s3 get 42501 from
  `lease_force_release`, and `lease_info` hides the token from non-members.
- Every call: `lease_acquire` (long and 1 ms ttls, without and with a 10 ms wait, session-bound
  or not), `lease_acquire_any` (several candidates, duplicates, max_count, session_bound,
  snapshot_consistent), `lease_renew`, `lease_release`, `lease_check`, `lease_assert`,
  `lease_force_release`, `lease_info`, and rejected arguments; with current, stale, foreign and
  random tokens.
- Autocommit calls and explicit transactions at READ COMMITTED and REPEATABLE READ, with
  SAVEPOINT, ROLLBACK TO SAVEPOINT, RELEASE SAVEPOINT, COMMIT, ROLLBACK, and errors inside
  transactions and subtransactions.
- A table fenced by the `lease_fence` trigger: INSERT, UPDATE that sets the token, UPDATE that
  does not, UPDATE that moves a row to another resource, DELETE, with and without an earlier
  proof in the transaction (55000 or success, exactly).
- Session kills: `pg_terminate_backend` of a session holding session-bound leases (its leases
  must go), then a new connection in its place.
- Expiry: 1 ms ttls, waited out by polling the server clock (never a blind sleep).
- Every third history runs with a do-nothing trigger on `lease.leases`, which makes the calls
  take the SQL path instead of the direct heap path.

The driver never issues a call that the contract says would block: the model tracks, per open
transaction and savepoint level, which lock mode (CHANGE, EXTEND, FENCE) it holds on which
resource, and which table rows it has written. Calls that never block but find a busy lock
(`lease_acquire` with or without wait, `lease_acquire_any`) are issued and must answer NULL or
skip. Each answer (value or SQLSTATE) is compared with the model after every step, and at the
end of each history the live leases in `lease.leases` and the fenced table's rows are compared
with the model's committed state. The model cannot predict token numbers: a grant's token must be
larger than every token seen before, a re-acquire must return the held token, and tokens are
remembered for later calls. Expired leases that the expiry worker may remove are waited for
before the next step, so every history is deterministic.

Where the contract leaves a choice, the model assumes (see Model.eval_*):
- Under REPEATABLE READ, check, assert and the fence trigger decide on the lease as last
  committed and never raise 40001; renew, release and force_release decide on it too (false,
  42501), but one that would renew, release or revoke a lease that another transaction changed
  since the snapshot raises 40001 (its statement cannot see the lease it would write);
  lease_info, a plain SQL function, reads the transaction's snapshot.
- lease_acquire_any is "an acquire": under REPEATABLE READ a candidate it would grant or extend
  whose lease changed since the snapshot raises 40001 (with snapshot_consistent it is skipped);
  the caller's own live lease is extended while other transactions only fence it, as with
  lease_acquire; it raises 55006 as lease_acquire does.
- A lease that another transaction granted and released after the snapshot may or may not
  count as changed (both answers are accepted).
- An expired lease that no transaction locks is removed by the expiry worker within 10 s (the
  driver waits for that, so the model knows whether its row exists); one that a transaction
  locks stays until that transaction ends.

On a mismatch the history is shrunk (a prefix, then deleting chunks and single steps, each
candidate replayed on fresh resources and connections) and the test fails printing the seed and
the shortest failing history as (session, SQL, expected, got).

Settings (environment):
    LEASE_MODEL_SEED        seed of the run (default 1306)
    LEASE_MODEL_HISTORIES   histories to run (default 40: a few seconds when all agree)
    LEASE_MODEL_STEPS       random steps per history (default 60)
    LEASE_MODEL_SHRINK_SECONDS  time allowed for shrinking all failures (default 40)
    LEASE_MODEL_MAX_FAILURES    distinct kinds of mismatch to shrink and report (default 3)

The long run:
    LEASE_MODEL_HISTORIES=500 pytest tests/client/test_model.py
(add -s to see how many answers of each case of the contract the run checked; after a failure,
LEASE_MODEL_COVERAGE=1 shows them too).
"""

import collections
import datetime
import json
import os
import random
import time

import psycopg
import pytest

from conftest import DATABASE, PORT, connect

SEED = int(os.environ.get("LEASE_MODEL_SEED", "1306"))
HISTORIES = int(os.environ.get("LEASE_MODEL_HISTORIES", "40"))
STEPS = int(os.environ.get("LEASE_MODEL_STEPS", "60"))
SHRINK_SECONDS = float(os.environ.get("LEASE_MODEL_SHRINK_SECONDS", "40"))
MAX_FAILURES = int(os.environ.get("LEASE_MODEL_MAX_FAILURES", "3"))

SUPERUSER = "postgres"
ROLE_A = "lease_model_a"
ROLE_B = "lease_model_b"  # a member of ROLE_A, granted EXECUTE on lease_force_release
SESSION_ROLES = (SUPERUSER, ROLE_A, ROLE_B, ROLE_A)
TABLE = "lease_model_rows"
NOOP = "lease_model_noop"  # the do-nothing trigger (and its function) that forces the SQL path
PREFIX = "model:"
RESOURCES = 4
HOLDERS = ("h1", "h2")
LONG, SHORT = "1 hour", "1 ms"
WAIT = "10 ms"
LEASE_LOCK_SPACE = 0x4C45  # pg_locks.objsubid of the resources' barrier locks
LIFELINE_LOCK_SPACE = 0x4C4C  # pg_locks.objsubid of the lifelines' locks
POLL_TIMEOUT = 5.0
SWEEP_TIMEOUT = 10.0
KEEP_MARGIN_US = 200_000  # a "short" keep_for ends this long after the release (then waited out)
LONG_DELTA = datetime.timedelta(hours=1)
SHORT_DELTA = datetime.timedelta(milliseconds=1)
# data stored with a lease (none is JSON null: psycopg reads that as None, like SQL NULL); the
# last one is exactly 512 bytes of compact JSON, the limit
DATA_VALUES = ({"job": 1}, {"job": 2, "tags": ["a", "b"]}, ["x", 3], "text", 42, {"nested": {"k": None}},
               "x" * 510)
BIG_DATA = "x" * 511  # 513 bytes of compact JSON: 22023

CHANGE, EXTEND, FENCE = "CHANGE", "EXTEND", "FENCE"
USE, END = "USE", "END"  # lifeline lock modes: renew and attach; close and a lapsed lifeline's takeover


def json_text(value):
    return None if value is None else json.dumps(value, separators=(",", ":"))


def is_member(role, owner):
    """Whether `role` is a member of `owner` (superusers are members of every role)."""
    return role == SUPERUSER or role == owner or (role == ROLE_B and owner == ROLE_A)


def may_force_release(role):
    return role in (SUPERUSER, ROLE_B)


# --------------------------------------------------------------------------------------------
# The reference model
# --------------------------------------------------------------------------------------------


class Lease:
    """One version of a lease row. Versions are never changed, except that time expires them.
    `lifeline`: the lifeline it is attached to (it then lives exactly as long as that); `kept`:
    released with keep_for (nobody holds it, nobody may acquire it until it expires; `keep_us`
    is its keep_for); `since`, `since_ub`: server clock read just before and after the call that
    granted it (bounds of acquired_at)."""

    __slots__ = ("holder", "owner", "token", "bound", "expired", "lifeline", "data", "kept", "keep_us",
                 "since", "since_ub")

    def __init__(self, holder, owner, token, bound, lifeline=None, data=None, kept=False, keep_us=None,
                 since=None, since_ub=None):
        self.holder, self.owner, self.token, self.bound = holder, owner, token, bound
        self.lifeline, self.data, self.kept, self.keep_us = lifeline, data, kept, keep_us
        self.since, self.since_ub = since, since_ub
        self.expired = False

    def copy(self, **changes):
        fields = {name: getattr(self, name) for name in self.__slots__ if name != "expired"}
        fields.update(changes)
        return Lease(**fields)


class Lifeline:
    """One version of a lifeline row: `short` is its own ttl (what a renewal without a ttl uses),
    `bound` the session it is bound to; time expires a version."""

    __slots__ = ("id", "owner", "bound", "short", "expired")

    def __init__(self, lid, owner, bound, short):
        self.id, self.owner, self.bound, self.short = lid, owner, bound, short
        self.expired = False


class Tx:
    """An open transaction (or the implicit one of an autocommit statement) of one session."""

    def __init__(self, isolation, snapshot, explicit):
        self.isolation = isolation  # "rc" or "rr"
        self.snapshot = snapshot  # the model's commit sequence number when the snapshot was taken
        self.explicit = explicit
        self.leases = {}  # resource -> Lease or None: this transaction's own writes
        self.locks = {}  # resource -> set of lock modes held
        self.proofs = set()  # resources proven (for the lease_fence trigger)
        self.rows = {}  # row key -> (resource, token) or None: own writes to the fenced table
        self.row_locks = set()  # row keys written (locked) by this transaction
        self.lifelines = {}  # lifeline id -> Lifeline or None: this transaction's own writes
        self.lifeline_locks = {}  # lifeline id -> set of lock modes held (USE, END)
        self.savepoints = []  # [name, saved state]
        self.aborted = False
        self.savepoint_names = 0

    def save(self):
        return {"leases": dict(self.leases), "locks": {r: set(m) for r, m in self.locks.items()},
                "proofs": set(self.proofs), "rows": dict(self.rows), "row_locks": set(self.row_locks),
                "lifelines": dict(self.lifelines),
                "lifeline_locks": {i: set(m) for i, m in self.lifeline_locks.items()}}

    def restore(self, saved):
        self.leases = dict(saved["leases"])
        self.locks = {r: set(m) for r, m in saved["locks"].items()}
        self.proofs = set(saved["proofs"])
        self.rows = dict(saved["rows"])
        self.row_locks = set(saved["row_locks"])
        self.lifelines = dict(saved["lifelines"])
        self.lifeline_locks = {i: set(m) for i, m in saved["lifeline_locks"].items()}

    def lock(self, resource, mode):
        self.locks.setdefault(resource, set()).add(mode)

    def lock_lifeline(self, lid, mode):
        self.lifeline_locks.setdefault(lid, set()).add(mode)


class SessionModel:
    def __init__(self, slot, role):
        self.slot, self.role = slot, role
        self.incarnation = 0
        self.tx = None

    @property
    def key(self):
        return (self.slot, self.incarnation)


class Alt:
    """One answer the contract allows, and what it does to the model when it is the answer."""

    __slots__ = ("pattern", "apply", "why")

    def __init__(self, pattern, apply=None, why=None):
        self.pattern, self.apply, self.why = pattern, apply, why  # why: the contract's case (coverage)


def snapshot_value(history, snapshot):
    value = None
    for seq, version in history:
        if seq <= snapshot:
            value = version
    return value


class Model:
    """The contract (README: SQL API, Fencing, Waiting, Guarantees) over resources 0..RESOURCES-1 and their fenced rows."""

    def __init__(self):
        self.sessions = [SessionModel(slot, role) for slot, role in enumerate(SESSION_ROLES)]
        self.seq = 0
        self.committed = {n: None for n in range(RESOURCES)}
        self.history = {n: [(0, None)] for n in range(RESOURCES)}
        self.last_write = dict.fromkeys(range(RESOURCES), 0)  # any committed write of the row
        self.last_change = dict.fromkeys(range(RESOURCES), 0)  # a committed write that changed it
        # the fenced table: one row per resource to start with, token 1
        self.rows = {n: (n, 1) for n in range(RESOURCES)}
        self.row_history = {n: [(0, (n, 1))] for n in range(RESOURCES)}
        self.row_last_write = {}
        self.next_row = RESOURCES
        self.seen = {n: [] for n in range(RESOURCES)}
        self.max_token = 0
        self.short_leases = []  # (resource, Lease) given a 1 ms ttl by the last statement

    # -- what a transaction sees -------------------------------------------------------------

    def others(self, slot, n):
        """Lock modes that other sessions' open transactions hold on resource n."""
        modes = set()
        for s in self.sessions:
            if s.slot != slot and s.tx is not None:
                modes |= s.tx.locks.get(n, set())
        return modes

    def locked_by_anyone(self, n):
        return any(s.tx is not None and s.tx.locks.get(n) for s in self.sessions)

    def view(self, tx, n):
        """The lease as last committed, or as this transaction changed it."""
        if tx is not None and n in tx.leases:
            return tx.leases[n]
        return self.committed[n]

    def snapshot_view(self, tx, n):
        """The lease as a plain SQL statement of the transaction sees it (lease_info)."""
        if tx is not None and n in tx.leases:
            return tx.leases[n]
        if tx is not None and tx.isolation == "rr":
            return snapshot_value(self.history[n], tx.snapshot)
        return self.committed[n]

    def holds(self, tx, n, token):
        lease = self.view(tx, n)
        if lease is not None and not lease.expired and lease.token == token:
            return lease
        return None

    def changed(self, tx, n):
        """Whether another transaction changed the lease since a REPEATABLE READ transaction's
        snapshot: "yes", "no", or "maybe" (rows were written but the lease ended as it was, e.g.
        granted and released in one transaction: the contract does not say)."""
        if tx is None or tx.isolation != "rr":
            return "no"
        if self.last_change[n] > tx.snapshot:
            return "yes"
        if self.last_write[n] > tx.snapshot:
            return "maybe"
        return "no"

    def row_view(self, tx, k):
        if tx is not None and k in tx.rows:
            return tx.rows[k]
        if tx is not None and tx.isolation == "rr":
            return snapshot_value(self.row_history.get(k, [(0, None)]), tx.snapshot)
        return self.rows.get(k)

    def row_changed(self, tx, k):
        return (tx is not None and tx.isolation == "rr" and k not in tx.rows
                and self.row_last_write.get(k, 0) > tx.snapshot)

    def row_locked_by_others(self, slot, k):
        return any(s.slot != slot and s.tx is not None and k in s.tx.row_locks for s in self.sessions)

    def has_bound(self, slot):
        key = self.sessions[slot].key
        return any(lease is not None and lease.bound == key for lease in self.committed.values())

    # -- what may be issued ------------------------------------------------------------------

    def blocked(self, s, step):
        """Whether the call could wait for another open transaction (it is then not issued)."""
        kind = step[0]
        tx = s.tx
        if kind in ("acquire", "acquire_any", "info", "bad"):
            return False
        if kind in ("renew", "release", "check", "assert", "force"):
            others = self.others(s.slot, step[2])
            if kind == "renew":
                return bool(others & {CHANGE, EXTEND})
            if kind == "release":
                return bool(others)
            if kind == "force":
                return may_force_release(s.role) and bool(others)
            return CHANGE in others
        proofs = tx.proofs if tx is not None else set()
        if kind == "insert":
            return step[3] is not None and CHANGE in self.others(s.slot, step[3])
        k = step[2]
        if self.row_locked_by_others(s.slot, k):
            return True
        row = self.row_view(tx, k)
        if row is None or self.row_changed(tx, k):
            return False
        n = row[0]
        unproven_old_blocked = n not in proofs and CHANGE in self.others(s.slot, n)
        if kind in ("update", "delete"):
            return unproven_old_blocked
        if kind == "update_token":
            return CHANGE in self.others(s.slot, n)
        if kind == "move":
            return (step[3] is not None and CHANGE in self.others(s.slot, step[3])) or unproven_old_blocked
        raise AssertionError(kind)

    def can_kill(self, slot):
        """A session may be killed when the worker can remove its session-bound leases at once:
        no other open transaction holds a lock on any of them."""
        key = self.sessions[slot].key
        for n, lease in self.committed.items():
            if lease is not None and lease.bound == key and self.others(slot, n):
                return False
        return True

    # -- tokens --------------------------------------------------------------------------------

    def note_token(self, n, token):
        self.seen[n].append(token)
        self.max_token = max(self.max_token, token)

    def resolve(self, s, spec):
        kind = spec[0]
        if kind == "null":
            return None
        if kind == "rand":
            return spec[1]
        n = spec[1]
        if kind == "cur":
            lease = self.view(s.tx, n)
            if lease is not None:
                return lease.token
            return self.seen[n][-1] if self.seen[n] else 1
        if kind == "seen":
            return self.seen[n][spec[2] % len(self.seen[n])] if self.seen[n] else 1
        raise AssertionError(spec)

    # -- effects -------------------------------------------------------------------------------

    def _grant(self, s, tx, n, holder, token, short, session_bound):
        self.note_token(n, token)
        lease = Lease(holder, s.role, token, s.key if session_bound else None)
        tx.leases[n] = lease
        tx.lock(n, CHANGE)
        tx.proofs.add(n)
        if short:
            self.short_leases.append((n, lease))

    def _extend(self, s, tx, n, current, short, bind):
        lease = Lease(current.holder, current.owner, current.token, s.key if bind else current.bound)
        tx.leases[n] = lease
        tx.lock(n, EXTEND)
        tx.proofs.add(n)
        if short:
            self.short_leases.append((n, lease))

    # -- the calls -----------------------------------------------------------------------------

    def eval_acquire(self, s, tx, n, holder, short, session_bound):
        others = self.others(s.slot, n)
        current = self.view(tx, n)
        live = current is not None and not current.expired
        own = live and current.holder == holder and current.owner == s.role
        # The lock is busy: NULL at once, except the holder's own re-acquire while others only fence.
        if others & {CHANGE, EXTEND} or (others and not own):
            return [Alt(("value", None), why="busy lock")]
        if live and not own:
            return [Alt(("value", None), why="held by another")]
        alts = []
        bad_binding = own and session_bound and current.bound not in (None, s.key)
        changed = self.changed(tx, n)
        if bad_binding:
            alts.append(Alt(("error", "55006"), why="bound to another session"))
        if changed != "no":
            alts.append(Alt(("error", "40001"), why="changed since snapshot"))
        if not bad_binding and changed != "yes":
            if own:
                why = "re-acquire while others fence" if others else "re-acquire"
                if session_bound and current.bound is None:
                    why += ", binds"
                alts.append(Alt(("value", current.token),
                                lambda _v: self._extend(s, tx, n, current, short, session_bound), why))
            else:
                why = "takeover of an expired row" if current is not None else "grant"
                alts.append(Alt(("new",),
                                lambda token: self._grant(s, tx, n, holder, token, short, session_bound), why))
        return alts

    def eval_acquire_any(self, s, tx, candidates, holder, short, max_count, session_bound, consistent):
        order = []
        for n in candidates:
            if n not in order:
                order.append(n)
        alts = []

        def finish(taken, whys):
            def apply(rows):
                for (n, pattern, current), (_, token) in zip(taken, rows):
                    if pattern == "new":
                        self._grant(s, tx, n, holder, token, short, session_bound)
                    else:
                        self._extend(s, tx, n, current, short, session_bound)
            why = ", ".join(sorted(set(whys))) or "no candidate"
            alts.append(Alt(("rows", [(n, pattern) for n, pattern, _ in taken]), apply, why))

        def walk(i, taken, whys):
            if len(taken) == max_count or i == len(order):
                return finish(taken, whys)
            n = order[i]
            others = self.others(s.slot, n)
            current = self.view(tx, n)
            live = current is not None and not current.expired
            own = live and current.holder == holder and current.owner == s.role
            if live and not own:
                return walk(i + 1, taken, whys + ["skip held"])
            changed = self.changed(tx, n)
            if consistent:
                # only resources with no lease row, unchanged since the snapshot, lock free
                if current is not None:
                    return walk(i + 1, taken, whys + ["consistent: skip row"])
                if others:
                    return walk(i + 1, taken, whys + ["consistent: skip busy"])
                if changed == "yes":
                    return walk(i + 1, taken, whys + ["consistent: skip changed"])
                if changed == "maybe":
                    walk(i + 1, taken, whys + ["consistent: skip changed"])
                return walk(i + 1, taken + [(n, "new", None)], whys + ["consistent: grant"])
            if own:
                if others & {CHANGE, EXTEND}:
                    return walk(i + 1, taken, whys + ["skip busy own"])
                bad_binding = session_bound and current.bound not in (None, s.key)
                if bad_binding:
                    alts.append(Alt(("error", "55006"), why="bound to another session"))
                if changed != "no":
                    alts.append(Alt(("error", "40001"), why="changed since snapshot"))
                if not bad_binding and changed != "yes":
                    walk(i + 1, taken + [(n, current.token, current)],
                         whys + ["re-acquire while others fence" if others else "re-acquire"])
                return None
            if others:
                return walk(i + 1, taken, whys + ["skip busy"])
            if changed != "no":
                alts.append(Alt(("error", "40001"), why="changed since snapshot"))
            if changed != "yes":
                walk(i + 1, taken + [(n, "new", None)], whys + ["takeover" if current is not None else "grant"])
            return None

        walk(0, [], [])
        unique = []
        for alt in alts:
            if all(alt.pattern != other.pattern for other in unique):
                unique.append(alt)
        return unique

    def eval_renew(self, s, tx, n, token, short):
        lease = self.holds(tx, n, token)
        if lease is None:
            return [Alt(("value", False), why="not held")]
        if not is_member(s.role, lease.owner):
            return [Alt(("error", "42501"), why="not a member")]
        why = "held, others fence" if self.others(s.slot, n) else "held"
        return self._unless_changed(tx, n, Alt(("value", True), lambda _v: self._extend(s, tx, n, lease, short, False), why))

    def _unless_changed(self, tx, n, alt):
        """The answer `alt`, or 40001 if the lease changed since a REPEATABLE READ snapshot."""
        changed = self.changed(tx, n)
        alts = [Alt(("error", "40001"), why="changed since snapshot")] if changed != "no" else []
        return alts + ([alt] if changed != "yes" else [])

    def eval_release(self, s, tx, n, token):
        lease = self.holds(tx, n, token)
        if lease is None:
            return [Alt(("value", False), why="not held")]
        if not is_member(s.role, lease.owner):
            return [Alt(("error", "42501"), why="not a member")]

        def apply(_v):
            tx.leases[n] = None
            tx.lock(n, CHANGE)
            tx.proofs.add(n)
        return self._unless_changed(tx, n, Alt(("value", True), apply, "held"))

    def _fence(self, tx, n):
        tx.lock(n, FENCE)
        tx.proofs.add(n)

    def eval_check(self, s, tx, n, token):
        lease = self.holds(tx, n, token)
        if lease is not None and is_member(s.role, lease.owner):
            why = "held, others fence or extend" if self.others(s.slot, n) else "held"
            return [Alt(("value", True), lambda _v: self._fence(tx, n), why)]
        return [Alt(("value", False), why="not held" if lease is None else "held, not a member")]

    def eval_assert(self, s, tx, n, token):
        lease = self.holds(tx, n, token)
        if lease is None:
            return [Alt(("error", "55000"), why="not held")]
        if not is_member(s.role, lease.owner):
            return [Alt(("error", "42501"), why="held, not a member")]
        return [Alt(("void",), lambda _v: self._fence(tx, n), "held")]

    def eval_force(self, s, tx, n):
        if not may_force_release(s.role):
            return [Alt(("error", "42501"), why="not granted")]
        lease = self.view(tx, n)
        if lease is None or lease.expired:
            return [Alt(("value", False), why="expired row" if lease is not None else "no lease")]

        def apply(_v):
            tx.leases[n] = None
            tx.lock(n, CHANGE)
        return self._unless_changed(tx, n, Alt(("value", True), apply, "live lease"))

    def eval_info(self, s, tx, n):
        lease = self.snapshot_view(tx, n)
        if lease is None or lease.expired:
            return [Alt(("info", None), why="free or expired")]
        member = is_member(s.role, lease.owner)
        token = lease.token if member else None
        why = ("member" if member else "not a member") + (
            ", snapshot differs" if lease is not self.view(tx, n) else "")
        return [Alt(("info", (lease.holder, token, lease.owner)), why=why)]

    def eval_insert(self, s, tx, k, n, token):
        lease = self.holds(tx, n, token) if token is not None and n is not None else None
        if lease is None or not is_member(s.role, lease.owner):
            why = ("NULL resource" if n is None else "NULL token" if token is None
                   else "not held" if lease is None else "held, not a member")
            return [Alt(("error", "55000"), why=why)]

        def apply(_v):
            tx.rows[k] = (n, token)
            tx.row_locks.add(k)
            self._fence(tx, n)
        return [Alt(("count", 1), apply, "held")]

    def eval_row_change(self, s, tx, kind, k, target=None, token=None):
        """UPDATE without the token column ("update"), with it ("update_token"), moving the row
        to resource `target` with it ("move"), or DELETE ("delete")."""
        row = self.row_view(tx, k)
        if row is None:
            return [Alt(("count", 0), why="no row visible")]
        if self.row_changed(tx, k):
            return [Alt(("error", "40001"), why="row changed since snapshot")]
        n = row[0]
        if kind in ("update", "delete"):
            if n not in tx.proofs:
                holds_row = self.holds(tx, n, row[1]) is not None
                return [Alt(("error", "55000"), why="unproven" + (" (row token holds)" if holds_row else ""))]

            def apply(_v):
                tx.rows[k] = row if kind == "update" else None
                tx.row_locks.add(k)
            return [Alt(("count", 1), apply, "proven")]
        if kind == "update_token":
            target = n
        lease = self.holds(tx, target, token) if token is not None and target is not None else None
        # A token holds one resource only: a moved row's old resource must be proven.
        if lease is None or not is_member(s.role, lease.owner) or (target != n and n not in tx.proofs):
            why = ("NULL resource" if target is None else "NULL token" if token is None
                   else "not held" if lease is None
                   else "held, not a member" if not is_member(s.role, lease.owner) else "old resource unproven")
            return [Alt(("error", "55000"), why=why)]

        def apply(_v):
            tx.rows[k] = (target, token)
            tx.row_locks.add(k)
            self._fence(tx, target)
        return [Alt(("count", 1), apply, "held" + (", moved" if target != n else ""))]

    # -- transactions --------------------------------------------------------------------------

    def begin(self, s, isolation):
        s.tx = Tx(isolation, self.seq, True)

    def commit(self, s):
        tx = s.tx
        s.tx = None
        if tx.aborted or not (tx.leases or tx.rows):
            return
        self.seq += 1
        for n, version in tx.leases.items():
            before = self.committed[n]
            self.committed[n] = version
            self.history[n].append((self.seq, version))
            self.last_write[n] = self.seq
            if not (before is None and version is None):
                self.last_change[n] = self.seq
        for k, row in tx.rows.items():
            self.rows[k] = row
            self.row_history.setdefault(k, [(0, None)]).append((self.seq, row))
            self.row_last_write[k] = self.seq

    def rollback(self, s):
        s.tx = None

    def on_error(self, s):
        """An error ends an autocommit statement; in a transaction block it aborts the innermost
        (sub)transaction at once, which gives back the locks it took."""
        tx = s.tx
        if not tx.explicit:
            s.tx = None
            return
        tx.aborted = True
        if tx.savepoints:
            _, locks, _, _, row_locks = tx.savepoints[-1][1]
            tx.locks = {r: set(m) for r, m in locks.items()}
            tx.row_locks = set(row_locks)
        else:
            tx.locks = {}
            tx.row_locks = set()

    def savepoint(self, s):
        tx = s.tx
        tx.savepoint_names += 1
        name = f"sp{tx.savepoint_names}"
        tx.savepoints.append([name, tx.save()])
        return name

    def rollback_to(self, s, index):
        tx = s.tx
        index %= len(tx.savepoints)
        name, saved = tx.savepoints[index]
        del tx.savepoints[index + 1:]
        tx.restore(saved)
        tx.aborted = False
        return name

    def release_savepoint(self, s, index):
        tx = s.tx
        index %= len(tx.savepoints)
        name = tx.savepoints[index][0]
        del tx.savepoints[index:]
        return name

    def removed(self, resources):
        """Committed leases removed by someone else (the expiry worker)."""
        if not resources:
            return
        self.seq += 1
        for n in resources:
            self.committed[n] = None
            self.history[n].append((self.seq, None))
            self.last_write[n] = self.last_change[n] = self.seq

    def sweepable(self):
        return [n for n, lease in self.committed.items()
                if lease is not None and lease.expired and not self.locked_by_anyone(n)]

    def kill(self, slot):
        s = self.sessions[slot]
        s.tx = None
        self.removed([n for n, lease in self.committed.items() if lease is not None and lease.bound == s.key])
        s.incarnation += 1

    # -- answers ------------------------------------------------------------------------------

    def matches(self, pattern, actual):
        kind = pattern[0]
        if kind == "error":
            return actual[0] == "error" and actual[1] == pattern[1]
        if actual[0] != "ok":
            return False
        value = actual[1]
        if kind == "value":
            return type(value) is type(pattern[1]) and value == pattern[1]
        if kind == "new":
            return is_token(value) and value > self.max_token
        if kind == "rows":
            if not isinstance(value, list) or len(value) != len(pattern[1]):
                return False
            running = self.max_token
            for (n, token), (expected_n, expected_token) in zip(value, pattern[1]):
                if n != expected_n or not is_token(token):
                    return False
                if expected_token == "new":
                    if token <= running:
                        return False
                    running = token
                elif token != expected_token:
                    return False
            return True
        if kind in ("info", "count"):
            return value == pattern[1]
        if kind == "void":
            return True
        raise AssertionError(pattern)


def is_token(value):
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Describing answers
# --------------------------------------------------------------------------------------------


def literal(value):
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(literal(v) for v in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"


def render(sql, params):
    return sql.replace("%s", "{}").format(*[literal(p) for p in params])


def value_text(value):
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def pattern_kind(pattern):
    kind = pattern[0]
    if kind == "error":
        return f"error {pattern[1]}"
    if kind == "value":
        value = pattern[1]
        return "token" if is_token(value) else value_text(value)
    if kind == "new":
        return "token"
    if kind == "rows":
        return f"{len(pattern[1])} rows"
    if kind == "info":
        if pattern[1] is None:
            return "no row"
        return "row" if pattern[1][1] is not None else "row, token NULL"
    if kind == "count":
        return f"{pattern[1]} rows changed"
    return "ok"


def actual_kind(actual, fetch):
    if actual[0] == "error":
        return f"error {actual[1]}"
    value = actual[1]
    if fetch == "any":
        return f"{len(value)} rows" if isinstance(value, list) else "?"
    if fetch == "info":
        if value is None:
            return "no row"
        if isinstance(value, tuple):
            return "row" if value[1] is not None else "row, token NULL"
        return f"{len(value)} rows"
    if fetch == "count":
        return f"{value} rows changed"
    if fetch == "void":
        return "ok"
    return "token" if is_token(value) else value_text(value)


class Record:
    """One executed step: who, what SQL, what the contract allows, what the server said."""

    def __init__(self, index, slot, role, sql, expected, got, ok, signature, why=None):
        self.index, self.slot, self.role = index, slot, role
        self.sql, self.expected, self.got, self.ok, self.signature = sql, expected, got, ok, signature
        self.why = why or signature[-1]

    def line(self, number):
        who = "observer" if self.slot is None else f"s{self.slot} ({self.role})"
        mark = "" if self.ok else "   <-- MISMATCH"
        return (f"{number:3d}. {who}: {self.sql}\n"
                f"       expected: {self.expected}\n"
                f"       got:      {self.got}{mark}")


class ServerGone(Exception):
    """The connection to the server was lost without the test asking for it (a restart)."""


def wait_until(condition, timeout=POLL_TIMEOUT):
    """Polls `condition` (a server-side check); False if it is still false after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


# --------------------------------------------------------------------------------------------
# One history against the server
# --------------------------------------------------------------------------------------------


class Context:
    """What every history of a run shares: the superuser observer connection, unique names."""

    def __init__(self, observer):
        self.observer = observer
        self.run = f"{os.getpid()}-{int(time.time()) % 1_000_000}"
        self.attempts = 0
        self.coverage = collections.Counter()
        self.statements = 0


class History:
    def __init__(self, ctx, label, path):
        ctx.attempts += 1
        self.ctx, self.label, self.path = ctx, label, path
        self.observer = ctx.observer
        self.tag = f"{ctx.run}.{label}.{ctx.attempts}"
        self.row_base = ctx.attempts * 10_000
        self.model = Model()
        self.records = []
        self.failure = None  # (input step index, signature)
        self.conns = [None] * len(SESSION_ROLES)
        self.pids = [None] * len(SESSION_ROLES)

    # -- names -----------------------------------------------------------------------------

    def name(self, n):
        return f"{PREFIX}{self.tag}:{n}"

    def number(self, resource):
        head = f"{PREFIX}{self.tag}:"
        if isinstance(resource, str) and resource.startswith(head) and resource[len(head):].isdigit():
            return int(resource[len(head):])
        return resource

    def names(self):
        return [self.name(n) for n in range(RESOURCES)]

    def row_id(self, k):
        return self.row_base + k

    def row_resource(self, n):
        """The fenced table's resource column for resource n (None: NULL)."""
        return None if n is None else f"{self.tag}:{n}"

    # -- set-up and clean-up ---------------------------------------------------------------

    def __enter__(self):
        obs = self.observer
        if self.path == "sql":
            obs.execute(f"CREATE TRIGGER {NOOP} AFTER INSERT OR UPDATE OR DELETE ON lease.leases "
                        f"FOR EACH ROW EXECUTE FUNCTION public.{NOOP}()")
        # the starting rows, inserted past the fence trigger
        obs.execute("SET session_replication_role = replica")
        for n in range(RESOURCES):
            obs.execute(f"INSERT INTO {TABLE} (id, res, tok) VALUES (%s, %s, 1)",
                        (self.row_id(n), f"{self.tag}:{n}"))
        obs.execute("RESET session_replication_role")
        for slot in range(len(SESSION_ROLES)):
            self.connect(slot)
        return self

    def __exit__(self, *exc):
        for conn in self.conns:
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
        obs = self.observer
        try:
            if self.path == "sql":
                obs.execute(f"DROP TRIGGER IF EXISTS {NOOP} ON lease.leases")
            remove_leases(obs, f"{PREFIX}{self.tag}:")
        except psycopg.OperationalError as error:
            if exc[0] is None:
                raise ServerGone(f"observer: {error}") from error
        return False

    def connect(self, slot):
        role = SESSION_ROLES[slot]
        conn = psycopg.connect(f"host=127.0.0.1 port={PORT} user={role} dbname={DATABASE}", autocommit=True)
        conn.execute(f"SET application_name = 'lease_model_s{slot}'")
        # a call the model wrongly thinks cannot block ends in 55P03 instead of hanging
        conn.execute("SET lock_timeout = '300ms'")
        conn.execute("SET statement_timeout = '10s'")
        self.conns[slot] = conn
        self.pids[slot] = conn.info.backend_pid

    # -- generating ------------------------------------------------------------------------

    def generate(self, rng, count):
        steps = []
        while len(steps) < count and self.failure is None:
            for _ in range(50):
                step = self.propose(rng)
                if self.applicable(step):
                    break
            else:
                continue
            steps.append(step)
            self.run_step(len(steps) - 1, step)
        # end every transaction still open
        for s in self.model.sessions:
            if self.failure is None and s.tx is not None:
                step = ("commit", s.slot) if not s.tx.aborted and rng.random() < 0.6 else ("rollback", s.slot)
                steps.append(step)
                self.run_step(len(steps) - 1, step)
        if self.failure is None:
            self.final_check(len(steps))
        return steps

    def replay(self, steps):
        for index, step in enumerate(steps):
            if self.applicable(step):
                self.run_step(index, step)
                if self.failure is not None:
                    return
        for s in self.model.sessions:
            if s.tx is not None:
                self.run_step(len(steps), ("rollback", s.slot))
                if self.failure is not None:
                    return
        self.final_check(len(steps))

    def propose(self, rng):
        model = self.model
        slot = rng.randrange(len(model.sessions))
        s = model.sessions[slot]
        tx = s.tx
        if tx is not None and tx.aborted:
            if tx.savepoints and rng.random() < 0.6:
                return ("rollback_to", slot, rng.randrange(6))
            return ("rollback", slot)
        x = rng.random()
        if x < (0.06 if model.has_bound(slot) else 0.004):
            return ("kill", slot)
        if tx is None:
            if x < 0.18:
                return ("begin", slot, "rc")
            if x < 0.30:
                return ("begin", slot, "rr")
        else:
            if x < 0.10:
                return ("commit", slot)
            if x < 0.15:
                return ("rollback", slot)
            if x < 0.22:
                return ("savepoint", slot)
            if x < 0.28 and tx.savepoints:
                return ("rollback_to", slot, rng.randrange(6))
            if x < 0.32 and tx.savepoints:
                return ("release_sp", slot, rng.randrange(6))
        return self.propose_call(rng, slot)

    def propose_call(self, rng, slot):
        model = self.model
        kinds = [("acquire", 30), ("acquire_any", 8), ("renew", 9), ("release", 9), ("check", 9),
                 ("assert", 5), ("force", 4), ("info", 6), ("insert", 3), ("update", 6),
                 ("update_token", 5), ("move", 2), ("delete", 4), ("bad", 2)]
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        n = rng.randrange(RESOURCES)
        holder = rng.choice(HOLDERS)
        ttl = SHORT if rng.random() < 0.07 else LONG

        def token_spec(n):
            x = rng.random()
            if x < 0.65:
                return ("cur", n)
            if x < 0.80:
                return ("seen", n, rng.randrange(100))
            if x < 0.90:
                return ("cur", rng.randrange(RESOURCES))
            return ("rand", rng.choice([1, rng.randrange(1, 1 << 40)]))

        if kind == "acquire":
            return ("acquire", slot, n, holder, ttl, WAIT if rng.random() < 0.25 else None, rng.random() < 0.25)
        if kind == "acquire_any":
            candidates = [rng.randrange(RESOURCES) for _ in range(rng.randint(1, 4))]
            return ("acquire_any", slot, candidates, holder, ttl, rng.randint(1, 3),
                    rng.random() < 0.2, rng.random() < 0.3)
        if kind == "renew":
            return ("renew", slot, n, token_spec(n), ttl)
        if kind in ("release", "check", "assert"):
            return (kind, slot, n, token_spec(n))
        if kind in ("force", "info"):
            return (kind, slot, n)
        if kind == "insert":
            k = model.next_row
            model.next_row += 1
            if rng.random() < 0.05:
                return ("insert", slot, k, None, token_spec(n))
            return ("insert", slot, k, n, ("null",) if rng.random() < 0.1 else token_spec(n))
        if kind == "bad":
            return ("bad", slot, rng.choice(BAD_CALLS), n)
        k = rng.randrange(model.next_row)
        row = model.row_view(model.sessions[slot].tx, k)
        row_n = row[0] if row is not None else n
        if kind in ("update", "delete"):
            return (kind, slot, k)
        spec = ("null",) if rng.random() < 0.05 else token_spec(n if kind == "move" else row_n)
        if kind == "update_token":
            return ("update_token", slot, k, spec)
        return ("move", slot, k, None if rng.random() < 0.1 else n, spec)

    def applicable(self, step):
        kind, slot = step[0], step[1]
        s = self.model.sessions[slot]
        tx = s.tx
        if kind == "begin":
            return tx is None
        if kind in ("commit", "rollback"):
            return tx is not None
        if kind == "savepoint":
            return tx is not None and not tx.aborted
        if kind == "rollback_to":
            return tx is not None and bool(tx.savepoints)
        if kind == "release_sp":
            return tx is not None and bool(tx.savepoints) and not tx.aborted
        if kind == "kill":
            return self.model.can_kill(slot)
        if tx is not None and tx.aborted:
            return False
        return not self.model.blocked(s, step)

    # -- running ---------------------------------------------------------------------------

    def run_step(self, index, step):
        record = getattr(self, "do_" + step[0])(index, self.model.sessions[step[1]], *step[2:])
        self.records.append(record)
        self.ctx.coverage[(record.signature[0], record.why if record.ok else "MISMATCH")] += 1
        if not record.ok:
            self.failure = (index, record.signature)
            return
        self.settle(index)

    def execute(self, slot, sql, params=(), fetch=None):
        conn = self.conns[slot]
        self.ctx.statements += 1
        try:
            cursor = conn.execute(sql, params)
            if fetch in ("one", "value"):
                return ("ok", cursor.fetchone()[0])
            if fetch in ("all", "any", "info"):
                return ("ok", [tuple(row) for row in cursor.fetchall()])
            if fetch == "count":
                return ("ok", cursor.rowcount)
            return ("ok", None)
        except psycopg.Error as error:
            state = error.sqlstate
            if state is None or conn.closed or state.startswith("08") or state in ("57P01", "57P02", "57P03"):
                raise ServerGone(f"s{slot}: {error}") from error
            message = str(error).splitlines()[0] if str(error) else ""
            return ("error", state, message)

    def got_text(self, actual, fetch):
        if actual[0] == "error":
            return f"error {actual[1]} ({actual[2]})"
        value = actual[1]
        if fetch == "any":
            return "[" + ", ".join(f"({r}, {t})" for r, t in value) + "]"
        if fetch == "info":
            return "no row" if value is None else str(value)
        if fetch == "count":
            return f"{value} rows changed"
        if fetch == "void":
            return "ok"
        return value_text(value)

    def expected_text(self, alts):
        texts = []
        for alt in alts:
            kind, pattern = alt.pattern[0], alt.pattern
            if kind == "error":
                texts.append(f"error {pattern[1]}")
            elif kind == "value":
                texts.append(value_text(pattern[1]))
            elif kind == "new":
                texts.append(f"a new token > {self.model.max_token}")
            elif kind == "rows":
                items = [f"({self.name(n)}, {'new token' if t == 'new' else t})" for n, t in pattern[1]]
                texts.append("[" + ", ".join(items) + "]")
            elif kind == "info":
                texts.append("no row" if pattern[1] is None else str(pattern[1]))
            elif kind == "count":
                texts.append(f"{pattern[1]} rows changed")
            else:
                texts.append("ok")
        return " or ".join(texts)

    def call(self, index, s, kind, sql, params, fetch, evaluate):
        """Runs one statement of session `s` and compares its answer with the model's."""
        model = self.model
        autocommit = s.tx is None
        if autocommit:
            s.tx = Tx("rc", model.seq, False)
        tx = s.tx
        alts = evaluate(tx)
        expected = self.expected_text(alts)
        model.short_leases = []
        actual = self.execute(s.slot, sql, params, "one" if fetch == "value" else fetch)
        if actual[0] == "ok" and fetch == "any":
            actual = ("ok", [(self.number(r), t) for r, t in actual[1]])
        elif actual[0] == "ok" and fetch == "info":
            rows = actual[1]
            actual = ("ok", None if not rows else rows[0] if len(rows) == 1 else rows)
        got = self.got_text(actual, fetch)
        chosen = next((alt for alt in alts if model.matches(alt.pattern, actual)), None)
        signature = (kind, " or ".join(sorted({pattern_kind(a.pattern) for a in alts})), actual_kind(actual, fetch))
        record = Record(index, s.slot, s.role, render(sql, params), expected, got, chosen is not None, signature,
                        chosen.why if chosen is not None and chosen.why else None)
        if record.ok:
            record.why = f"{record.why} [{tx.isolation if tx.explicit else 'autocommit'}]"
        if chosen is None:
            if autocommit:
                s.tx = None
            return record
        if actual[0] == "error":
            model.on_error(s)
        else:
            if chosen.apply is not None:
                chosen.apply(actual[1])
            if autocommit:
                model.commit(s)
        self.expire_short_leases(index)
        return record

    def expire_short_leases(self, index):
        """Waits until the server clock is past the expiry of each lease given a 1 ms ttl by the
        last statement, then marks it expired in the model."""
        model = self.model
        if not model.short_leases:
            return
        obs = self.observer
        after = obs.execute("SELECT clock_timestamp()").fetchone()[0]
        for n, lease in model.short_leases:
            if model.committed[n] is lease:
                def expired(n=n, lease=lease):
                    row = obs.execute("SELECT clock_timestamp() > expires_at FROM lease.leases "
                                      "WHERE resource = %s AND token = %s", (self.name(n), lease.token)).fetchone()
                    return row is None or row[0]
            else:  # not committed: invisible here, but expires_at <= the clock read after the call + ttl
                def expired():
                    return obs.execute("SELECT clock_timestamp() > %s + %s::interval", (after, SHORT)).fetchone()[0]
            if not wait_until(expired):
                raise AssertionError(f"{self.name(n)} did not expire")
            lease.expired = True
        model.short_leases = []

    def settle(self, index):
        """Waits for the expiry worker to remove expired committed leases that nobody locks, so
        that no removal happens behind the model's back."""
        model = self.model
        gone = model.sweepable()
        if not gone:
            return
        names = [self.name(n) for n in gone]
        obs = self.observer
        removed = wait_until(lambda: obs.execute(
            "SELECT count(*) FROM lease.leases WHERE resource = ANY(%s)", (names,)).fetchone()[0] == 0,
            timeout=SWEEP_TIMEOUT)
        if removed:
            removed = self.wait_worker_idle()
        if not removed:
            self.fail_observation(index, f"-- the expiry worker removes the expired {', '.join(names)}, "
                                  "which no transaction locks", f"removed within {SWEEP_TIMEOUT:.0f} s",
                                  "still there", ("sweep",))
            return
        model.removed(gone)

    def wait_worker_idle(self):
        """The worker takes a resource's lock to remove a lease; wait until it has let go (its
        commit makes the removal visible a moment before the lock is released)."""
        obs = self.observer
        return wait_until(lambda: obs.execute(
            "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid) "
            "WHERE a.backend_type = 'lease expirer' AND l.locktype = 'advisory' AND l.objsubid = %s",
            (LEASE_LOCK_SPACE,)).fetchone()[0] == 0)

    def fail_observation(self, index, sql, expected, got, signature):
        record = Record(index, None, None, sql, expected, got, False, signature)
        self.records.append(record)
        self.failure = (index, signature)

    # -- transaction control ---------------------------------------------------------------

    def control(self, index, s, sqls, signature_kind):
        got = "ok"
        ok = True
        for sql in sqls:
            actual = self.execute(s.slot, sql)
            if actual[0] == "error":
                got, ok = f"error {actual[1]} ({actual[2]})", False
                break
        return Record(index, s.slot, s.role, "; ".join(sqls), "ok", got, ok,
                      (signature_kind, "ok", got.split(" (")[0]))

    def do_begin(self, index, s, isolation):
        if isolation == "rr":  # SELECT 1 takes the transaction's snapshot now
            record = self.control(index, s, ["BEGIN ISOLATION LEVEL REPEATABLE READ", "SELECT 1"], "begin")
        else:
            record = self.control(index, s, ["BEGIN ISOLATION LEVEL READ COMMITTED"], "begin")
        self.model.begin(s, isolation)
        return record

    def do_commit(self, index, s):
        record = self.control(index, s, ["COMMIT"], "commit")
        self.model.commit(s)
        return record

    def do_rollback(self, index, s):
        record = self.control(index, s, ["ROLLBACK"], "rollback")
        self.model.rollback(s)
        return record

    def do_savepoint(self, index, s):
        return self.control(index, s, [f"SAVEPOINT {self.model.savepoint(s)}"], "savepoint")

    def do_rollback_to(self, index, s, which):
        return self.control(index, s, [f"ROLLBACK TO SAVEPOINT {self.model.rollback_to(s, which)}"], "rollback_to")

    def do_release_sp(self, index, s, which):
        return self.control(index, s, [f"RELEASE SAVEPOINT {self.model.release_savepoint(s, which)}"], "release_sp")

    def do_kill(self, index, s):
        slot, pid = s.slot, self.pids[s.slot]
        obs = self.observer
        sql = f"SELECT pg_terminate_backend({pid})  -- by the observer: s{slot} ends; then a new connection"
        bound = [self.name(n) for n, lease in self.model.committed.items()
                 if lease is not None and lease.bound == s.key]
        expected = "true, and then no lease bound to it" + (f" ({', '.join(bound)} removed)" if bound else "")
        terminated = obs.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        try:
            self.conns[slot].close()
        except psycopg.Error:
            pass
        self.conns[slot] = None
        ok = terminated is True and wait_until(lambda: obs.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == 0)
        left = None
        if ok:
            ok = wait_until(lambda: obs.execute(
                "SELECT count(*) FROM lease.leases WHERE session_pid = %s", (pid,)).fetchone()[0] == 0)
            if not ok:
                left = [r for (r,) in obs.execute(
                    "SELECT resource FROM lease.leases WHERE session_pid = %s", (pid,)).fetchall()]
        self.pids[slot] = None
        if ok:
            ok = self.wait_worker_idle()
        self.model.kill(slot)
        self.connect(slot)
        got = "true, and then no lease bound to it" if ok else (
            f"terminated={value_text(terminated)}, still bound after 5 s: {left}")
        return Record(index, None, None, sql, expected, got, ok, ("kill", "removed", "ok" if ok else "left"))

    # -- the calls ---------------------------------------------------------------------------

    def do_acquire(self, index, s, n, holder, ttl, wait, session_bound):
        def evaluate(tx):
            # With a wait the call first tries as without one; nothing changes while it waits.
            alts = self.model.eval_acquire(s, tx, n, holder, ttl == SHORT, session_bound)
            for alt in alts:
                alt.why = f"{alt.why}, waiting" if wait else alt.why
            return alts
        return self.call(index, s, "acquire", "SELECT lease_acquire(%s, %s, %s::interval, %s::interval, %s)",
                         (self.name(n), holder, ttl, wait, session_bound), "value", evaluate)

    def do_acquire_any(self, index, s, candidates, holder, ttl, max_count, session_bound, consistent):
        return self.call(index, s, "acquire_any",
                         "SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, %s, %s, %s)",
                         ([self.name(n) for n in candidates], holder, ttl, max_count, session_bound, consistent),
                         "any", lambda tx: self.model.eval_acquire_any(
                             s, tx, candidates, holder, ttl == SHORT, max_count, session_bound, consistent))

    def do_renew(self, index, s, n, spec, ttl):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "renew", "SELECT lease_renew(%s, %s, %s::interval)",
                         (self.name(n), token, ttl), "value",
                         lambda tx: self.model.eval_renew(s, tx, n, token, ttl == SHORT))

    def do_release(self, index, s, n, spec):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "release", "SELECT lease_release(%s, %s)", (self.name(n), token), "value",
                         lambda tx: self.model.eval_release(s, tx, n, token))

    def do_check(self, index, s, n, spec):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "check", "SELECT lease_check(%s, %s)", (self.name(n), token), "value",
                         lambda tx: self.model.eval_check(s, tx, n, token))

    def do_assert(self, index, s, n, spec):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "assert", "SELECT lease_assert(%s, %s)", (self.name(n), token), "void",
                         lambda tx: self.model.eval_assert(s, tx, n, token))

    def do_force(self, index, s, n):
        return self.call(index, s, "force", "SELECT lease_force_release(%s)", (self.name(n),), "value",
                         lambda tx: self.model.eval_force(s, tx, n))

    def do_info(self, index, s, n):
        return self.call(index, s, "info", "SELECT holder, token, owner::text FROM lease_info(%s)",
                         (self.name(n),), "info", lambda tx: self.model.eval_info(s, tx, n))

    def do_insert(self, index, s, k, n, spec):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "insert", f"INSERT INTO {TABLE} (id, res, tok) VALUES (%s, %s, %s)",
                         (self.row_id(k), self.row_resource(n), token), "count",
                         lambda tx: self.model.eval_insert(s, tx, k, n, token))

    def do_update(self, index, s, k):
        return self.call(index, s, "update", f"UPDATE {TABLE} SET val = val + 1 WHERE id = %s",
                         (self.row_id(k),), "count",
                         lambda tx: self.model.eval_row_change(s, tx, "update", k))

    def do_update_token(self, index, s, k, spec):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "update_token", f"UPDATE {TABLE} SET tok = %s, val = val + 1 WHERE id = %s",
                         (token, self.row_id(k)), "count",
                         lambda tx: self.model.eval_row_change(s, tx, "update_token", k, token=token))

    def do_move(self, index, s, k, n, spec):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "move", f"UPDATE {TABLE} SET res = %s, tok = %s WHERE id = %s",
                         (self.row_resource(n), token, self.row_id(k)), "count",
                         lambda tx: self.model.eval_row_change(s, tx, "move", k, target=n, token=token))

    def do_delete(self, index, s, k):
        return self.call(index, s, "delete", f"DELETE FROM {TABLE} WHERE id = %s", (self.row_id(k),), "count",
                         lambda tx: self.model.eval_row_change(s, tx, "delete", k))

    def do_bad(self, index, s, which, n):
        sql, params, state = {
            "token0": ("SELECT lease_renew(%s, %s, %s::interval)", (self.name(n), 0, LONG), "22023"),
            "null_holder": ("SELECT lease_acquire(%s, %s, %s::interval)", (self.name(n), None, LONG), "22004"),
            "ttl0": ("SELECT lease_acquire(%s, %s, %s::interval)", (self.name(n), "h1", "0 s"), "22023"),
            "negative_wait": ("SELECT lease_acquire(%s, %s, %s::interval, %s::interval)",
                              (self.name(n), "h1", LONG, "-1 s"), "22023"),
            "max_count0": ("SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, %s)",
                           ([self.name(n)], "h1", LONG, 0), "22023"),
            "null_token": ("SELECT lease_check(%s, %s)", (self.name(n), None), "22004"),
        }[which]
        return self.call(index, s, "bad", sql, params, "all", lambda tx: [Alt(("error", state))])

    # -- the end ---------------------------------------------------------------------------

    def final_check(self, index):
        """The committed state: live leases (with their session binding) and the fenced rows."""
        model, obs = self.model, self.observer
        expected = []
        for n, lease in model.committed.items():
            if lease is not None and not lease.expired:
                pid = None
                if lease.bound is not None:
                    slot, incarnation = lease.bound
                    pid = self.pids[slot] if model.sessions[slot].incarnation == incarnation else "a dead session"
                expected.append((self.name(n), lease.holder, lease.token, lease.owner, pid))
        actual = [tuple(row) for row in obs.execute(
            "SELECT resource, holder, token, owner::text, session_pid FROM lease.leases "
            "WHERE expires_at > clock_timestamp() AND resource = ANY(%s) ORDER BY resource",
            (self.names(),)).fetchall()]
        sql = ("SELECT resource, holder, token, owner::text, session_pid FROM lease.leases "
               "WHERE expires_at > clock_timestamp()  -- by the observer, this history's resources")
        if actual != expected:
            self.fail_observation(index, sql, str(expected), str(actual), ("final", "leases"))
            return
        self.records.append(Record(index, None, None, sql, str(expected), str(actual), True, ("final",)))
        expected_rows = sorted((self.row_id(k), f"{self.tag}:{row[0]}", row[1])
                               for k, row in model.rows.items() if row is not None)
        actual_rows = [tuple(row) for row in obs.execute(
            f"SELECT id, res, tok FROM {TABLE} WHERE id >= %s AND id < %s ORDER BY id",
            (self.row_base, self.row_base + 10_000)).fetchall()]
        sql = f"SELECT id, res, tok FROM {TABLE}  -- by the observer, this history's rows"
        if actual_rows != expected_rows:
            self.fail_observation(index, sql, str(expected_rows), str(actual_rows), ("final", "rows"))
            return
        self.records.append(Record(index, None, None, sql, str(expected_rows), str(actual_rows), True, ("final",)))


BAD_CALLS = ("token0", "null_holder", "ttl0", "negative_wait", "max_count0", "null_token")


def remove_leases(obs, prefix):
    """Leaves no lease of ours behind: force-releases the live ones and waits for the expiry
    worker to remove the expired ones (sweeping them itself if the worker does not)."""
    def ours():
        return obs.execute("SELECT count(*) FROM lease.leases WHERE starts_with(resource, %s)",
                           (prefix,)).fetchone()[0]

    def force_release_live():
        live = obs.execute("SELECT resource FROM lease.leases WHERE starts_with(resource, %s) "
                           "AND expires_at > clock_timestamp()", (prefix,)).fetchall()
        for (resource,) in live:
            obs.execute("SELECT lease_force_release(%s)", (resource,))

    force_release_live()
    if not wait_until(lambda: ours() == 0):
        obs.execute("SELECT lease_sweep()")
        force_release_live()
    assert ours() == 0, f"leases with the prefix {prefix!r} are left behind"


# --------------------------------------------------------------------------------------------
# Shrinking
# --------------------------------------------------------------------------------------------


def replay(ctx, label, path, steps):
    with History(ctx, label, path) as history:
        history.replay(steps)
    return history


def shrink(ctx, label, path, steps, signature, deadline):
    """The shortest list of steps found whose replay fails with the same kind of mismatch:
    deleting chunks of steps, then single steps, then making steps simpler, until none helps."""
    def failing_prefix(candidate):
        history = replay(ctx, label, path, candidate)
        if history.failure is None or history.failure[1] != signature:
            return None
        return candidate[:history.failure[0] + 1]

    current = failing_prefix(steps)
    if current is None:  # does not fail again the same way
        return None
    while time.monotonic() < deadline:
        before = current
        granularity = 2
        while len(current) > 1 and time.monotonic() < deadline:
            chunk = max(1, (len(current) + granularity - 1) // granularity)
            reduced = False
            for start in range(0, len(current), chunk):
                if time.monotonic() >= deadline:
                    break
                smaller = failing_prefix(current[:start] + current[start + chunk:])
                if smaller is not None:
                    current = smaller
                    granularity = max(granularity - 1, 2)
                    reduced = True
                    break
            if not reduced:
                if chunk == 1:
                    break
                granularity = min(len(current), granularity * 2)
        index = 0
        while index < len(current) and time.monotonic() < deadline:
            for simpler in simpler_steps(current[index]):
                smaller = failing_prefix(current[:index] + [simpler] + current[index + 1:])
                if smaller is not None:
                    current = smaller
                    break
            else:
                index += 1
        if current == before:
            break
    final = replay(ctx, label, path, current)
    if final.failure is None or final.failure[1] != signature:
        return None
    return current, final


def simpler_steps(step):
    """Variants of a step with fewer or plainer arguments, simplest first."""
    kind = step[0]
    if kind == "acquire":
        _, slot, n, holder, ttl, wait, session_bound = step
        if wait is not None:
            yield ("acquire", slot, n, holder, ttl, None, session_bound)
        if session_bound:
            yield ("acquire", slot, n, holder, ttl, wait, False)
    elif kind == "acquire_any":
        _, slot, candidates, holder, ttl, max_count, session_bound, consistent = step
        for i in range(len(candidates)):
            if len(candidates) > 1:
                yield ("acquire_any", slot, candidates[:i] + candidates[i + 1:], holder, ttl, max_count,
                       session_bound, consistent)
        if max_count > 1:
            yield ("acquire_any", slot, candidates, holder, ttl, 1, session_bound, consistent)
        if session_bound:
            yield ("acquire_any", slot, candidates, holder, ttl, max_count, False, consistent)
        if consistent:
            yield ("acquire_any", slot, candidates, holder, ttl, max_count, session_bound, False)


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def drop_objects(conn):
    conn.execute(f"DROP TRIGGER IF EXISTS {NOOP} ON lease.leases")
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"DROP FUNCTION IF EXISTS public.{NOOP}()")
    for role in (ROLE_B, ROLE_A):
        if conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0]:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def observer():
    conn = connect()
    remove_leases(conn, PREFIX)
    drop_objects(conn)
    conn.execute(f"CREATE ROLE {ROLE_A} LOGIN")
    conn.execute(f"CREATE ROLE {ROLE_B} LOGIN IN ROLE {ROLE_A}")
    conn.execute(f"GRANT EXECUTE ON FUNCTION lease_force_release(text) TO {ROLE_B}")
    conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, res text, tok bigint, val integer NOT NULL DEFAULT 0)")
    conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE} TO {ROLE_A}, {ROLE_B}")
    conn.execute(f"CREATE TRIGGER {TABLE}_fence BEFORE INSERT OR UPDATE OR DELETE ON {TABLE} "
                 f"FOR EACH ROW EXECUTE FUNCTION lease_fence('res', 'tok', '{PREFIX}')")
    conn.execute(f"CREATE FUNCTION public.{NOOP}() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$")
    yield conn
    if not conn.closed:
        remove_leases(conn, PREFIX)
        drop_objects(conn)
        conn.close()


def test_model(observer):
    ctx = Context(observer)
    started = time.monotonic()
    failures = {}  # signature -> (history, path, steps, records)
    for number in range(HISTORIES):
        path = "sql" if number % 3 == 2 else "direct"
        rng = random.Random(f"{SEED}:{number}")
        try:
            with History(ctx, number, path) as history:
                steps = history.generate(rng, STEPS)
        except (ServerGone, psycopg.OperationalError) as gone:
            pytest.fail(f"lost the connection to the server (restarted?): {gone}; rerun the test")
        if history.failure is not None and history.failure[1] not in failures and len(failures) < MAX_FAILURES:
            failures[history.failure[1]] = (number, path, steps, history.records)
    elapsed = time.monotonic() - started
    print(f"\nmodel: seed {SEED}, {HISTORIES} histories of {STEPS} steps, {ctx.statements} statements "
          f"in {elapsed:.1f} s, {len(failures)} kind(s) of mismatch")
    if not failures or os.environ.get("LEASE_MODEL_COVERAGE"):
        print("answers by the contract's case:")
        for (kind, why), count in sorted(ctx.coverage.items()):
            print(f"  {kind}: {why}: {count}")
    if not failures:
        return

    reports = []
    end = time.monotonic() + SHRINK_SECONDS
    for position, (signature, (number, path, steps, records)) in enumerate(failures.items()):
        shrunk = None
        deadline = time.monotonic() + (end - time.monotonic()) / (len(failures) - position)
        try:
            shrunk = shrink(ctx, number, path, steps, signature, deadline)
        except (ServerGone, psycopg.OperationalError) as gone:
            reports.append(f"(shrinking stopped: lost the connection to the server: {gone})")
            break
        if shrunk is not None:
            shown, note = shrunk[1].records, f"shrunk from {len(steps)} to {len(shrunk[0])} steps"
        else:
            shown, note = records, "not shrunk (the shortened history did not fail the same way)"
        lines = [f"LEASE_MODEL_SEED={SEED}: history {number} ({path} path), mismatch {signature}, {note}:"]
        lines += [record.line(i + 1) for i, record in enumerate(shown)]
        reports.append("\n".join(lines))
    sessions = ", ".join(f"s{slot} = {role}" for slot, role in enumerate(SESSION_ROLES))
    report = (f"{len(failures)} kind(s) of mismatch with the lease contract ({sessions}; "
              f"{ROLE_B} is a member of {ROLE_A} and may lease_force_release):\n\n" + "\n\n".join(reports))
    pytest.fail(report, pytrace=False)
