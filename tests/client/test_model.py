"""A randomized, stateful model test of the lease contract (the 0.4.0 contract of issue 13, the
lifelines, minimum holds and data of 0.5.0, the shared leases, permits and all-or-nothing
claims of 0.6.0, and the release of many leases in one call of 0.7.0).

A reference model of the contract, written here in plain Python, runs side by side with real
client sessions. Each history drives four sessions on four fresh resources, interleaved at
statement level, single-threaded and deterministic for a given seed:

- s0 is the superuser `postgres`; s1 and s3 are the LOGIN role `lease_model_a`; s2 is
  `lease_model_b`, a plain (INHERIT) member of `lease_model_a` that was also granted EXECUTE on
  `lease_force_release`. So s2 may renew, release and check the leases of s1 and s3 but not the
  other way round, nobody but s0 is a member of the superuser's leases, s1 and s3 get 42501 from
  `lease_force_release`, everyone but s0 gets 42501 from `lease_set_capacity`, and `lease_info`
  hides the token from non-members.
- Every call: `lease_acquire` (long and 1 ms ttls, without and with a 10 ms wait, session-bound
  or not; exclusive, shared, or a permit), `lease_acquire_any` (several candidates, duplicates,
  max_count, session_bound, snapshot_consistent; in each mode), `lease_acquire_all` (several
  resources, duplicates, with and without a wait), `lease_renew`, `lease_release`,
  `lease_release_each` (1 to 4 resources, each with a current, stale, foreign or random token,
  sometimes a name listed again with the same or another token; arrays of different lengths),
  `lease_check`, `lease_assert`, `lease_force_release`, `lease_set_capacity`, `lease_info`, and
  rejected arguments; with current, stale, foreign and random tokens of every mode.
- Autocommit calls and explicit transactions at READ COMMITTED and REPEATABLE READ, with
  SAVEPOINT, ROLLBACK TO SAVEPOINT, RELEASE SAVEPOINT, COMMIT, ROLLBACK, and errors inside
  transactions and subtransactions.
- A table fenced by the `lease_fence` trigger: INSERT, UPDATE that sets the token, UPDATE that
  does not, UPDATE that moves a row to another resource, DELETE, with and without an earlier
  proof in the transaction (55000 or success, exactly), with exclusive, shared and permit tokens.
- Session kills: `pg_terminate_backend` of a session holding session-bound leases (its leases
  must go), then a new connection in its place.
- Expiry: 1 ms ttls, waited out by polling the server clock (never a blind sleep).
- Lifelines (0.5.0): `lease_lifeline_open` (1 hour, 1 ms or NULL ttl, session-bound or not),
  `lease_lifeline_renew` (own, 1 hour or 1 ms ttl: a lapse, waited out on the server clock),
  `lease_lifeline_close`; leases attached by `lease_acquire`, `lease_acquire_any` and
  `lease_acquire_all`, re-acquired onto another lifeline or off it; live, lapsed, closed,
  rolled-back and unknown ids; session kills of session-bound lifelines. The lifeline locks are
  modelled (ATTACH: an attach; RENEW: a renewal; END: a close; the takeover of a lapsed
  lifeline's lease tries its lock against renewals and ends), so the driver never issues a call
  that would wait for them, and the worker's removal of a lapsed lifeline's leases (and then of
  the lifeline) is waited for.
- Minimum holds: `lease_release(resource, token, keep_for)` with NULL, 0, at most the time
  since the acquire (a plain release), a moment more than that (kept, then waited out) and an
  hour (kept for the rest of the history); keep_for is worked out from server clock reads
  around the acquire. Data: at acquire (replaced or kept on a re-acquire), `lease_set_data`,
  up to the 512-byte limit; `lease_info`'s lifeline, data and released_at columns, and the
  keep_for (expires_at - acquired_at) of a kept lease or the ttl of a lease with its own.
- Shared leases and permits (0.6.0): any number of shared holders, each with its own token,
  expiry, renewal, release (keep_for included), fence, binding, lifeline and data, never
  together with an exclusive holder or a permit; a holder's re-acquire in its own mode returns
  its token, in the other mode NULL. Permits: `capacity => N` (declares the resource's capacity
  on its first permit request, then governed by the declared one whatever a call states) and
  `mode => 'permit'` (55000 with none declared); `lease_set_capacity` raising, lowering
  (permits granted before stay live) and removing it; at most the capacity of live permits.
  `lease_info` returns one row per holder with mode and capacity; `lease_force_release` revokes
  every live holder; `lease_fence` passes only exclusive tokens, and only an exclusive lease's
  call proves a resource. The final check compares every lease row (slot and mode too) and
  `lease.capacities`.
- Many releases in one call (0.7.0): `lease_release_each(resources, tokens)` is the sequence of
  `lease_release(resource, token)` calls of its pairs, in the order given, in one statement: it
  answers exactly the resources released, in order (a pair listed again finds nothing the second
  time), with each release's effects; an error of any of them (42501, 40001) raises and releases
  nothing. It is issued only when none of its releases would wait. Arrays of different lengths
  (22023), NULL arrays and elements (22004), a token of 0 and a blank name (22023) are rejected
  before anything is looked up, with held tokens among the others, and change nothing.
- Every third history runs with a do-nothing trigger on `lease.leases`, which makes the calls
  take the SQL path instead of the direct heap path.

The driver never issues a call that the contract says would block: the model tracks, per open
transaction and savepoint level, which lock it holds in which mode: each resource's lock (the
exclusive lease's row: CHANGE = ExclusiveLock, EXTEND = ShareUpdateExclusiveLock, FENCE =
RowExclusiveLock, JOIN = ShareLock, taken by a shared or permit grant), each shared lease's or
permit's slot lock (CHANGE, EXTEND, FENCE), each resource's kind lock (ShareLock for a shared
grant, RowExclusiveLock for a permit grant, ExclusiveLock for a permit grant that declares the
capacity or counts permits above a lowered one, and for `lease_set_capacity`), the lock under
which a shared or permit grant removes an ended exclusive lease, and which table rows and
capacities it has written; conflicts are PostgreSQL's. A change of a shared lease's or permit's
row (a release, a close of its lifeline, a removal by the worker) takes the resource's lock in
JOIN mode and the kind lock of its kind before its slot's; a grant first removes the ended rows
it relies on (an exclusive grant: every shared lease and permit; a shared or permit grant: the
exclusive lease, rows of the other kind or above the capacity), each under its lock, tried.
Calls that never block but find a busy lock (`lease_acquire` with or without wait,
`lease_acquire_any`, `lease_acquire_all`) are issued and must answer NULL, skip, or no rows;
renewals, releases, fences, revocations and capacity changes wait, and are issued only when
nothing conflicting is held (a call with a token that does not hold, or that the caller may not
use, never waits). The model predicts the slot of each shared lease and permit (the lowest one
with no live row whose lock is free, a permit's at most the capacity), and the final check
compares it. Each answer (value or SQLSTATE) is compared with the model after every step, and at
the end of each history the live leases in `lease.leases`, the capacities and the fenced table's
rows are compared with the model's committed state. The model cannot predict token numbers: a
grant's token must be larger than every token seen before, a re-acquire must return the held
token, and tokens are remembered for later calls. Expired leases (and lapsed lifelines) that the
expiry worker may remove are waited for before the next step, so every history is deterministic.

Where the contract leaves a choice, the model assumes (see Model.eval_*):
- Under REPEATABLE READ, check, assert and the fence trigger decide on the lease as last
  committed and never raise 40001; renew, release, set_data and force_release decide on it too
  (false, 42501), but one that would renew, release or revoke a lease that another transaction
  changed since the snapshot raises 40001 (its statement cannot see the lease it would write):
  for renew, release and set_data, a change of that lease's row only; a revocation, a grant and a
  re-acquire may raise it for a write of any of the resource's rows. lease_info, a plain SQL
  function, reads the transaction's snapshot.
- lease_acquire_any is "an acquire": under REPEATABLE READ a candidate it would grant or extend
  whose lease changed since the snapshot raises 40001 (with snapshot_consistent it is skipped);
  the caller's own live lease is extended while other transactions only fence it, as with
  lease_acquire; it raises 55006 as lease_acquire does. A grant of a resource any of whose rows
  changed since the snapshot raises 40001; a claim of permits skips a resource with no declared
  capacity when it states none.
- A lease that another transaction granted and released after the snapshot may or may not
  count as changed (both answers are accepted).
- An expired lease that no transaction locks is removed by the expiry worker within 10 s (the
  driver waits for that, so the model knows whether its row exists); one that a transaction
  locks stays until that transaction ends. So is a lease whose lifeline lapsed, unless a
  transaction holds a lock on that lifeline too.
- Lifelines are decided on their latest state (own writes first); lease_info reads them through
  its snapshot. Under REPEATABLE READ a renewal or close of a lifeline another transaction
  opened or renewed since the snapshot raises 40001 (one opened since may also be 55000), and a
  close that would release a lease changed since the snapshot raises 40001.
- lease_renew of an attached lease answers true while held, changes nothing and keeps the
  resource from other renewals (EXTEND); a re-acquire keeps the lease's session binding.
- lease_force_release of a kept lease may revoke it (true) or leave it (false) when nothing
  else is live; with other live holders it goes with them.
- A shared lease or permit kept after a release (keep_for) still counts as a holder of its mode
  (it keeps exclusive requests out, and a kept permit counts against the capacity), but is
  nobody's: its holder asking again gets a new lease of its own.
- Capacities are decided on the latest declared one (own writes first), also under REPEATABLE
  READ; lease_info reads it through its snapshot. lease_set_capacity under REPEATABLE READ of a
  capacity another transaction wrote since the snapshot may raise 40001. A permit request declares
  its capacity with its grant, or with the holder's re-acquire; a refused one declares nothing
  (and one made while another open transaction's declaration stands answers NULL).
- lease_acquire_all with a wait answers as without one (nothing changes while it waits), except
  that its attempts after the first take the caller's own leases first, so it may raise what a
  re-acquire of one of those raises (55006, 40001) where the first attempt found another
  resource held.

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
import itertools
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
# Calls the driver never issues, besides those that would block (see Model.blocked):
#   - a lifeline renewal while another open transaction renewed the same lifeline: it waits for
#     it (the lifeline's row), as a renewal of one lease waits for another renewal of it;
#   - under REPEATABLE READ, lease_lifeline_close of a lifeline opened or renewed, or with a lease
#     attached or changed, since the snapshot: 40001, which the model does not predict.

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
# pg_locks.objsubid of the locks the expiry worker takes: the resources' barrier locks, the slot
# locks of shared leases and permits, the lifelines' membership and renewal locks
WORKER_LOCK_SPACES = (0x4C45, 0x4C4F, 0x4C4C, 0x4C52)
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

EXCLUSIVE, SHARED, PERMIT = "exclusive", "shared", "permit"
CAPACITIES = (1, 2, 3, 3)  # a permit request's capacity (3: more room for lowering it)
# (shared, permit) shares of the acquires of each resource; the rest are exclusive
MODE_LEAN = ((0.1, 0.05), (0.3, 0.15), (0.45, 0.3), (0.05, 0.85))

# Lock modes: of a resource's lock (its exclusive lease) and of a slot's (a shared lease's or a
# permit's row): CHANGE, EXTEND, FENCE, and JOIN (the resource's lock only: held by a transaction
# granted a shared lease or a permit); of a resource's kind lock: KIND_SHARED (a shared grant),
# KIND_PERMIT (a permit grant), KIND_ALONE (a permit grant that declares the capacity or counts
# permits above a lowered one, and lease_set_capacity).
CHANGE, EXTEND, FENCE, JOIN = "CHANGE", "EXTEND", "FENCE", "JOIN"
KIND_SHARED, KIND_PERMIT, KIND_ALONE = "KIND SHARE", "KIND ROW EXCLUSIVE", "KIND EXCLUSIVE"
# lifeline lock modes: an attach (its membership lock, shared), a renewal (its renewal lock,
# shared), a close (both, exclusively); a takeover of a lapsed lifeline's lease tries the renewal
# lock exclusively and gives it back at once
ATTACH, RENEW, END = "ATTACH", "RENEW", "END"
PG_MODES = {CHANGE: "Exclusive", EXTEND: "ShareUpdateExclusive", FENCE: "RowExclusive", JOIN: "Share",
            KIND_SHARED: "Share", KIND_PERMIT: "RowExclusive", KIND_ALONE: "Exclusive"}
# PostgreSQL's conflict table, for the modes above
PG_CONFLICTS = {
    "Share": {"RowExclusive", "ShareUpdateExclusive", "ShareRowExclusive", "Exclusive", "AccessExclusive"},
    "RowExclusive": {"Share", "ShareRowExclusive", "Exclusive", "AccessExclusive"},
    "ShareUpdateExclusive": {"ShareUpdateExclusive", "Share", "ShareRowExclusive", "Exclusive", "AccessExclusive"},
    "Exclusive": {"RowShare", "RowExclusive", "ShareUpdateExclusive", "Share", "ShareRowExclusive", "Exclusive",
                  "AccessExclusive"},
}


def conflicts(mode, held):
    """Whether a lock in `mode` conflicts with any of the modes `held` (by other transactions)."""
    wanted = PG_CONFLICTS[PG_MODES[mode]]
    return any(PG_MODES[other] in wanted for other in held)


def row_lock(n, slot):
    """The lock of the row at `slot` of resource n: the resource's own lock for its exclusive
    lease (slot 0), a slot lock of its own for a shared lease or a permit."""
    return n if slot == 0 else (n, slot)


def kind_lock(n):
    return ("kind", n)


def removal_lock(n):
    """The lock under which a shared or permit grant removes the resource's ended exclusive lease."""
    return ("removal", n)


def change_locks(n, lease):
    """The locks (lock, mode) a change of the lease's row takes (a release, a close of its
    lifeline, a removal by the worker): the resource's lock for an exclusive lease; for a shared
    lease or a permit, the resource's lock in JOIN mode and its kind lock as its grant takes
    them, then its slot's lock."""
    if lease.slot == 0:
        return [(n, CHANGE)]
    return [(n, JOIN), (kind_lock(n), KIND_SHARED if lease.mode == SHARED else KIND_PERMIT),
            ((n, lease.slot), CHANGE)]


def effective_mode(mode, capacity):
    """What a call asks for: mode as written (None: the default, exclusive) and capacity."""
    if mode == SHARED:
        return SHARED
    return PERMIT if mode == PERMIT or capacity is not None else EXCLUSIVE


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
    `mode`: exclusive (at `slot` 0), shared or permit (at a slot of its own, 1 and up);
    `lifeline`: the lifeline it is attached to (it then lives exactly as long as that); `kept`:
    released with keep_for (nobody holds it, nobody may acquire it until it expires; `keep_us`
    is its keep_for); `since`, `since_ub`: server clock read just before and after the call that
    granted it (bounds of acquired_at)."""

    __slots__ = ("holder", "owner", "token", "bound", "expired", "lifeline", "data", "kept", "keep_us",
                 "since", "since_ub", "mode", "slot")

    def __init__(self, holder, owner, token, bound, lifeline=None, data=None, kept=False, keep_us=None,
                 since=None, since_ub=None, mode=EXCLUSIVE, slot=0):
        self.holder, self.owner, self.token, self.bound = holder, owner, token, bound
        self.lifeline, self.data, self.kept, self.keep_us = lifeline, data, kept, keep_us
        self.since, self.since_ub = since, since_ub
        self.mode, self.slot = mode, slot
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
        self.leases = {}  # (resource, slot) -> Lease or None: this transaction's own writes
        self.locks = {}  # lock (row_lock, kind_lock) -> set of lock modes held
        self.proofs = set()  # resources proven (for the lease_fence trigger)
        self.rows = {}  # row key -> (resource, token) or None: own writes to the fenced table
        self.row_locks = set()  # row keys written (locked) by this transaction
        self.lifelines = {}  # lifeline id -> Lifeline or None: this transaction's own writes
        self.lifeline_locks = {}  # lifeline id -> set of lock modes held (ATTACH, RENEW, END)
        self.capacities = {}  # resource -> capacity or None: own writes to lease.capacities
        self.savepoints = []  # [name, saved state]
        self.aborted = False
        self.savepoint_names = 0

    def save(self):
        return {"leases": dict(self.leases), "locks": {r: set(m) for r, m in self.locks.items()},
                "proofs": set(self.proofs), "rows": dict(self.rows), "row_locks": set(self.row_locks),
                "lifelines": dict(self.lifelines),
                "lifeline_locks": {i: set(m) for i, m in self.lifeline_locks.items()},
                "capacities": dict(self.capacities)}

    def restore(self, saved):
        self.leases = dict(saved["leases"])
        self.locks = {r: set(m) for r, m in saved["locks"].items()}
        self.proofs = set(saved["proofs"])
        self.rows = dict(saved["rows"])
        self.row_locks = set(saved["row_locks"])
        self.lifelines = dict(saved["lifelines"])
        self.lifeline_locks = {i: set(m) for i, m in saved["lifeline_locks"].items()}
        self.capacities = dict(saved["capacities"])

    def lock(self, key, mode):
        self.locks.setdefault(key, set()).add(mode)

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


def unique(alts):
    """The alternatives with distinct patterns (the first of each)."""
    kept = []
    for alt in alts:
        if all(alt.pattern != other.pattern for other in kept):
            kept.append(alt)
    return kept


def follow(outcome, n, taken, effects, whys, alts, go_on):
    """One attempt's outcome in a claim's walk over its resources: an error is an alternative of
    its own; a grant (a new lease, or the caller's own kept) goes on to the next resource with
    `go_on(taken, effects, whys)`. False for "none" (nothing had): the claim decides what that
    means."""
    kind = outcome[0]
    if kind == "none":
        return False
    if kind == "error":
        alts.append(Alt(("error", outcome[1]), why=outcome[2]))
    elif kind == "new":
        go_on(taken + [(n, "new")], effects + [("new", outcome[2])], whys + [outcome[1]])
    else:
        go_on(taken + [(n, outcome[1])], effects + [("same", outcome[3])], whys + [outcome[2]])
    return True


def mode_note(lease):
    return "" if lease.mode == EXCLUSIVE else f", {lease.mode}"


# An attempt's outcome (Model._attempt): ("none", why, effect or None): NULL or skipped (effect:
# what the attempt leaves behind all the same); ("error", sqlstate, why); ("new", why,
# apply(token)): a grant; ("same", token, why, apply()): the caller's own lease extended.


class Model:
    """The contract (README: SQL API, Fencing, Waiting, Shared leases, semaphores and claims,
    Guarantees) over resources 0..RESOURCES-1, their capacities and their fenced rows."""

    def __init__(self):
        self.sessions = [SessionModel(slot, role) for slot, role in enumerate(SESSION_ROLES)]
        self.seq = 0
        self.committed = {n: {} for n in range(RESOURCES)}  # resource -> {slot: Lease}
        self.history = {n: [(0, {})] for n in range(RESOURCES)}
        self.last_write = dict.fromkeys(range(RESOURCES), 0)  # any committed write of its rows
        self.last_change = dict.fromkeys(range(RESOURCES), 0)  # a committed write that changed a row
        self.row_change = {}  # (resource, slot) -> the last commit that changed that row
        self.row_write = {}  # (resource, slot) -> the last commit that wrote that row
        # declared capacities as last committed, their history, the last commit that wrote and
        # that changed each
        self.capacity = dict.fromkeys(range(RESOURCES))
        self.capacity_history = {n: [(0, None)] for n in range(RESOURCES)}
        self.capacity_last_write = dict.fromkeys(range(RESOURCES), 0)
        self.capacity_last_change = dict.fromkeys(range(RESOURCES), 0)
        # the fenced table: one row per resource to start with, token 1
        self.table_rows = {n: (n, 1) for n in range(RESOURCES)}
        self.row_history = {n: [(0, (n, 1))] for n in range(RESOURCES)}
        self.row_last_write = {}
        self.next_row = RESOURCES
        self.seen = {n: [] for n in range(RESOURCES)}
        self.max_token = 0
        # what the last statement made that ends in a moment: ("lease", n, Lease, bound) or
        # ("lifeline", id, Lifeline, bound); bound: a server time by which it surely ended (None:
        # the clock after the statement + 1 ms)
        self.short_leases = []
        # lifelines: committed versions, their history, the last commit that wrote each and the
        # one that created it; ids in the order they were opened (rolled back ones too)
        self.lifelines = {}
        self.lifeline_history = {}
        self.lifeline_last_change = {}
        self.lifeline_created = {}
        self.lifeline_ids = []
        self.t_before = self.t_after = None  # server clock around the current (timed) statement
        self.timing_problem = None

    # -- what a transaction sees -------------------------------------------------------------

    def others(self, slot, key):
        """Lock modes that other sessions' open transactions hold on the lock `key` (slot None:
        every session's, as the expiry worker sees them)."""
        modes = set()
        for s in self.sessions:
            if s.slot != slot and s.tx is not None:
                modes |= s.tx.locks.get(key, set())
        return modes

    def locked_by_anyone(self, key):
        return any(s.tx is not None and s.tx.locks.get(key) for s in self.sessions)

    def conflicting(self, slot, locks):
        """Whether any of `locks` ((lock, mode) pairs) conflicts with another session's."""
        return any(conflicts(mode, self.others(slot, key)) for key, mode in locks)

    def take(self, tx, locks):
        for key, mode in locks:
            tx.lock(key, mode)

    def lifeline_others(self, slot, lid):
        """Lock modes that other sessions' open transactions hold on lifeline lid."""
        modes = set()
        for s in self.sessions:
            if s.slot != slot and s.tx is not None:
                modes |= s.tx.lifeline_locks.get(lid, set())
        return modes

    def lapse_busy(self, slot, lid):
        """Whether another transaction keeps the lapse of lifeline lid from being confirmed (its
        renewal lock is held: a renewal or a close in progress)."""
        return bool(self.lifeline_others(slot, lid) & {RENEW, END})

    def lifeline_locked_by_anyone(self, lid):
        return any(s.tx is not None and s.tx.lifeline_locks.get(lid) for s in self.sessions)

    def dead(self, key):
        return key is not None and self.sessions[key[0]].incarnation != key[1]

    def lifeline_view(self, tx, lid):
        """The lifeline as last committed, or as this transaction changed it (lifelines are
        always decided on the latest state)."""
        if tx is not None and lid in tx.lifelines:
            return tx.lifelines[lid]
        return self.lifelines.get(lid)

    def lifeline_snapshot_view(self, tx, lid):
        if tx is not None and lid in tx.lifelines:
            return tx.lifelines[lid]
        if tx is not None and tx.isolation == "rr":
            return snapshot_value(self.lifeline_history.get(lid, [(0, None)]), tx.snapshot)
        return self.lifelines.get(lid)

    def lifeline_live(self, lifeline, snapshot=False):
        """Whether the lifeline lives; a snapshot (lease_info under REPEATABLE READ) still shows
        the row of one whose session ended since."""
        return lifeline is not None and not lifeline.expired and (snapshot or not self.dead(lifeline.bound))

    def lease_live(self, tx, lease, snapshot=False):
        """Whether the lease row is live: held, or kept after a release with keep_for. An attached
        lease lives exactly as long as its lifeline."""
        if lease is None or lease.expired:
            return False
        if lease.lifeline is None:
            return True
        if snapshot:
            lifeline = self.lifeline_snapshot_view(tx, lease.lifeline)
            return self.lifeline_live(lifeline, lifeline is not self.lifeline_view(tx, lease.lifeline))
        return self.lifeline_live(self.lifeline_view(tx, lease.lifeline))

    def lifeline_changed(self, tx, lid):
        """Under REPEATABLE READ: "created" if another transaction opened the lifeline after the
        snapshot, "renewed" if it wrote it after the snapshot, else "no"."""
        if tx is None or tx.isolation != "rr" or lid in tx.lifelines:
            return "no"
        if self.lifeline_created.get(lid, 0) > tx.snapshot:
            return "created"
        if self.lifeline_last_change.get(lid, 0) > tx.snapshot:
            return "renewed"
        return "no"

    def lifeline_refusal(self, s, tx, lid):
        """The answer to a call on lifeline lid that cannot use it (55000, 42501), or None."""
        lifeline = self.lifeline_view(tx, lid)
        if not self.lifeline_live(lifeline):
            why = ("unknown lifeline" if lid not in self.lifeline_ids
                   else "lifeline closed or rolled back" if lifeline is None
                   else "lifeline lapsed")
            return [Alt(("error", "55000"), why=why)]
        if not is_member(s.role, lifeline.owner):
            return [Alt(("error", "42501"), why="not a member of the lifeline's owner")]
        return None

    def rows(self, tx, n):
        """The rows of resource n ({slot: Lease}) as last committed, or as this transaction
        changed them."""
        rows = self.committed[n]
        if tx is None or not tx.leases:
            return rows
        rows = dict(rows)
        for (m, slot), lease in tx.leases.items():
            if m == n:
                if lease is None:
                    rows.pop(slot, None)
                else:
                    rows[slot] = lease
        return rows

    def snapshot_rows(self, tx, n):
        """The rows as a plain SQL statement of the transaction sees them (lease_info)."""
        if tx is not None and tx.isolation == "rr":
            rows = dict(snapshot_value(self.history[n], tx.snapshot) or {})
        else:
            rows = dict(self.committed[n])
        if tx is not None:
            for (m, slot), lease in tx.leases.items():
                if m == n:
                    if lease is None:
                        rows.pop(slot, None)
                    else:
                        rows[slot] = lease
        return rows

    def holds(self, tx, n, token):
        """The lease that `token` holds on n (live, not kept), if it does."""
        for lease in self.rows(tx, n).values():
            if lease.token == token:
                return lease if self.lease_live(tx, lease) and not lease.kept else None
        return None

    def changed(self, tx, n, slot=None, row_only=False):
        """Whether another transaction changed the lease since a REPEATABLE READ transaction's
        snapshot: "yes", "no", or "maybe" (rows were written but the lease ended as it was, e.g.
        granted and released in one transaction, or another row of the resource was written: the
        contract does not say). `slot`: the lease at that slot (None: any of the resource's);
        `row_only`: only writes of that row count (a call with a token)."""
        if tx is None or tx.isolation != "rr":
            return "no"
        last = self.last_change[n] if slot is None else self.row_change.get((n, slot), 0)
        if last > tx.snapshot:
            return "yes"
        written = self.row_write.get((n, slot), 0) if row_only else self.last_write[n]
        if written > tx.snapshot:
            return "maybe"
        return "no"

    def capacity_latest(self, tx, n):
        """The capacity declared for n as last committed, or as this transaction set it."""
        if tx is not None and n in tx.capacities:
            return tx.capacities[n]
        return self.capacity[n]

    def capacity_snapshot(self, tx, n):
        """The capacity as a plain SQL statement of the transaction reads it (lease_info)."""
        if tx is not None and n in tx.capacities:
            return tx.capacities[n]
        if tx is not None and tx.isolation == "rr":
            return snapshot_value(self.capacity_history[n], tx.snapshot)
        return self.capacity[n]

    def capacity_changed(self, tx, n):
        """As `changed`, for the capacity of n (a write of another transaction since the snapshot)."""
        if tx is None or tx.isolation != "rr" or n in tx.capacities:
            return "no"
        if self.capacity_last_change[n] > tx.snapshot:
            return "yes"
        if self.capacity_last_write[n] > tx.snapshot:
            return "maybe"
        return "no"

    def declaring(self, slot, n):
        """Whether another open transaction wrote the capacity of n."""
        return any(o.slot != slot and o.tx is not None and n in o.tx.capacities for o in self.sessions)

    def row_view(self, tx, k):
        if tx is not None and k in tx.rows:
            return tx.rows[k]
        if tx is not None and tx.isolation == "rr":
            return snapshot_value(self.row_history.get(k, [(0, None)]), tx.snapshot)
        return self.table_rows.get(k)

    def row_changed(self, tx, k):
        return (tx is not None and tx.isolation == "rr" and k not in tx.rows
                and self.row_last_write.get(k, 0) > tx.snapshot)

    def row_locked_by_others(self, slot, k):
        return any(s.slot != slot and s.tx is not None and k in s.tx.row_locks for s in self.sessions)

    def has_bound(self, slot):
        key = self.sessions[slot].key
        return (any(lease.bound == key for rows in self.committed.values() for lease in rows.values())
                or any(line is not None and line.bound == key for line in self.lifelines.values()))

    def attached_to(self, tx, lid):
        """Rows (resource, slot) whose lease (as this transaction sees it) is attached to lifeline lid."""
        return [(n, slot) for n in range(RESOURCES) for slot, lease in self.rows(tx, n).items()
                if lease.lifeline == lid]

    def resolve_lifeline(self, s, spec):
        if spec is None:
            return None
        if spec[0] == "line":
            return self.lifeline_ids[spec[1] % len(self.lifeline_ids)] if self.lifeline_ids else 1
        return spec[1]

    def note_lifeline(self, lid):
        self.lifeline_ids.append(lid)
        self.max_token = max(self.max_token, lid)

    # -- what may be issued ------------------------------------------------------------------

    def waits_for_row(self, s, tx, n, token, mode):
        """Whether a call with `token` on n that locks its row in `mode` would wait: only a call
        that can succeed (the token holds, the caller is a member of its owner) queues."""
        lease = self.holds(tx, n, token)
        if lease is None or not is_member(s.role, lease.owner):
            return False
        if mode == CHANGE:
            return self.conflicting(s.slot, change_locks(n, lease))
        return conflicts(mode, self.others(s.slot, row_lock(n, lease.slot)))

    def blocked(self, s, step):
        """Whether the call could wait for another open transaction (it is then not issued)."""
        kind = step[0]
        tx = s.tx
        if kind in ("info", "bad", "lifeline_open"):
            return False
        if kind in ("acquire", "acquire_any", "acquire_all", "lifeline_renew"):
            # attaching and renewing take a lifeline's lock shared: they wait for (or find busy) its end
            spec = {"acquire": 7, "acquire_any": 8, "acquire_all": 7, "lifeline_renew": 2}[kind]
            lid = self.resolve_lifeline(s, step[spec])
            if (kind == "lifeline_renew"
                    and any(o.slot != s.slot and o.tx is not None and lid in o.tx.lifelines for o in self.sessions)):
                return True
            return lid is not None and END in self.lifeline_others(s.slot, lid)
        if kind == "set_capacity":
            # the kind lock, exclusively (after the permit grants in progress), then the row
            n = step[2]
            return s.role == SUPERUSER and (bool(self.others(s.slot, kind_lock(n))) or self.declaring(s.slot, n))
        if kind == "lifeline_close":
            # the lifeline's lock exclusively, then each attached lease's row for a change
            lid = self.resolve_lifeline(s, step[2])
            if tx is not None and tx.isolation == "rr" and (
                    self.lifeline_changed(tx, lid) != "no"
                    or any(self.changed(tx, n) != "no" for n in range(RESOURCES))):
                return True
            if self.lifeline_others(s.slot, lid):
                return True
            rows = {(n, slot): lease for view in (None, tx) for n, slot in self.attached_to(view, lid)
                    for lease in [self.rows(view, n)[slot]]}
            return any(self.conflicting(s.slot, change_locks(n, lease)) for (n, _), lease in rows.items())
        if kind == "release_each":
            # arrays of different lengths are refused before anything is looked up; else each
            # release as lease_release's, in order (a pair listed again then holds nothing)
            _, _, pairs, lengths = step
            return not lengths and any(self.waits_for_row(s, tx, n, self.resolve(s, spec), CHANGE)
                                       for n, spec in pairs)
        if kind in ("renew", "release", "check", "assert", "set_data"):
            mode = {"renew": EXTEND, "set_data": EXTEND, "release": CHANGE, "check": FENCE, "assert": FENCE}[kind]
            return self.waits_for_row(s, tx, step[2], self.resolve(s, step[3]), mode)
        if kind == "force":
            # the resource's lock, then each live row's, for a change; nothing when nothing is live
            n = step[2]
            live = [lease for lease in self.rows(tx, n).values() if self.lease_live(tx, lease)]
            return may_force_release(s.role) and bool(live) and (
                bool(self.others(s.slot, n))
                or any(self.others(s.slot, (n, lease.slot)) for lease in live if lease.slot))
        proofs = tx.proofs if tx is not None else set()
        if kind == "insert":
            return step[3] is not None and self.waits_for_row(s, tx, step[3], self.resolve(s, step[4]), FENCE)
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
            return self.waits_for_row(s, tx, n, self.resolve(s, step[3]), FENCE)
        if kind == "move":
            return ((step[3] is not None and self.waits_for_row(s, tx, step[3], self.resolve(s, step[4]), FENCE))
                    or unproven_old_blocked)
        raise AssertionError(kind)

    def can_kill(self, slot):
        """A session may be killed when the worker can remove its session-bound leases at once:
        no other open transaction holds a lock on any of them."""
        key = self.sessions[slot].key
        for n, rows in self.committed.items():
            for lease in rows.values():
                if lease.bound == key and self.conflicting(slot, change_locks(n, lease)):
                    return False
        for lid, line in self.lifelines.items():
            if line is not None and line.bound == key:
                if self.lifeline_others(slot, lid):
                    return False
                if any(self.conflicting(slot, change_locks(n, self.committed[n][at]))
                       for n, at in self.attached_to(None, lid)):
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
        if kind == "cur":  # one of the resource's rows, in slot order
            rows = self.rows(s.tx, n)
            if rows:
                slots = sorted(rows)
                return rows[slots[spec[2] % len(slots)]].token
            return self.seen[n][-1] if self.seen[n] else 1
        if kind == "seen":
            return self.seen[n][spec[2] % len(self.seen[n])] if self.seen[n] else 1
        raise AssertionError(spec)

    # -- effects -------------------------------------------------------------------------------

    def _pending(self, n, lease, bound=None):
        self.short_leases.append(("lease", n, lease, bound))

    def _grant(self, s, tx, n, holder, token, short, session_bound, lifeline=None, data=None, ended_line=None,
               mode=EXCLUSIVE, slot=0):
        self.note_token(n, token)
        lease = Lease(holder, s.role, token, s.key if session_bound else None, lifeline, data,
                      since=self.t_before, since_ub=self.t_after, mode=mode, slot=slot)
        tx.leases[(n, slot)] = lease
        tx.lock(row_lock(n, slot), CHANGE)
        if mode == EXCLUSIVE:  # only an exclusive lease's call proves the resource
            tx.proofs.add(n)
        if lifeline is not None:
            tx.lock_lifeline(lifeline, ATTACH)
        if short and lifeline is None:
            self._pending(n, lease)

    def _extend(self, s, tx, n, current, short, bind, lifeline=None, data=None):
        """A renewal or the holder's re-acquire: the lease follows the call (its own ttl, or the
        lifeline given); data is replaced if given."""
        lease = current.copy(bound=s.key if bind else current.bound, lifeline=lifeline,
                             data=current.data if data is None else data)
        tx.leases[(n, current.slot)] = lease
        tx.lock(row_lock(n, current.slot), EXTEND)
        if current.mode == EXCLUSIVE:
            tx.proofs.add(n)
        if lifeline is not None:
            tx.lock_lifeline(lifeline, ATTACH)
        if short and lifeline is None:
            self._pending(n, lease)

    # -- one attempt at one resource -----------------------------------------------------------

    def _attempt(self, s, tx, n, holder, short, session_bound, lifeline, data, mode, capacity, consistent=False):
        """What one attempt of an acquire at resource n may give (a list of outcomes, see above)."""
        if mode == EXCLUSIVE:
            return self._attempt_exclusive(s, tx, n, holder, short, session_bound, lifeline, data, consistent)
        # a permit goes by the capacity declared last (also under REPEATABLE READ)
        cap = self.capacity_latest(tx, n) if mode == PERMIT else None
        return self._attempt_join(s, tx, n, holder, short, session_bound, lifeline, data, mode, capacity,
                                  consistent, cap)

    def _attempt_exclusive(self, s, tx, n, holder, short, session_bound, lifeline, data, consistent=False):
        rows = self.rows(tx, n)
        current = rows.get(0)
        others = self.others(s.slot, n)
        live = self.lease_live(tx, current)
        own = live and not current.kept and current.holder == holder and current.owner == s.role
        sharing = any(slot and self.lease_live(tx, lease) for slot, lease in rows.items())
        extra = (", attaches" if lifeline is not None else "") + (", data" if data is not None else "")

        def grant(why, ended_line=None, removed=()):
            def apply(token):
                for slot in removed:  # ended shared leases or permits, removed under their slots' locks
                    tx.leases[(n, slot)] = None
                    tx.lock((n, slot), CHANGE)
                self._grant(s, tx, n, holder, token, short, session_bound, lifeline, data, ended_line)
            return ("new", why + extra, apply)

        if consistent:
            # only a resource with no lease row at all, unchanged since the snapshot, lock free
            if rows:
                return [("none", "consistent: skip " + ("held" if live or sharing else "row"), None)]
            if others:
                return [("none", "consistent: skip busy", None)]
            changed = self.changed(tx, n)
            if changed == "yes":
                return [("none", "consistent: skip changed", None)]
            skip = [("none", "consistent: skip changed", None)] if changed == "maybe" else []
            return skip + [grant("consistent: grant")]
        if sharing:
            return [("none", "held shared or by permits", None)]
        # The lock is busy: NULL at once, except the holder's own re-acquire while others only fence.
        if others and not (own and not conflicts(EXTEND, others)):
            return [("none", "busy lock", None)]
        if live and current.kept:
            return [("none", "kept after a release", None)]
        if live and not own:
            return [("none", "held by another", None)]
        if own:
            bad_binding = session_bound and current.bound not in (None, s.key)
            changed = self.changed(tx, n, 0)
            outcomes = []
            if bad_binding:
                outcomes.append(("error", "55006", "bound to another session"))
            if changed != "no":
                outcomes.append(("error", "40001", "changed since snapshot"))
            if not bad_binding and changed != "yes":
                why = "re-acquire while others fence" if others else "re-acquire"
                if session_bound and current.bound is None:
                    why += ", binds"
                if current.lifeline is not None:
                    why += ", was attached"
                outcomes.append(("same", current.token, why + extra,
                                 lambda: self._extend(s, tx, n, current, short, session_bound, lifeline, data)))
            return outcomes
        # A lease whose lifeline lapsed is taken over only under the lifeline's lock, tried.
        ended_line = current.lifeline if current is not None else None
        if ended_line is not None and self.lapse_busy(s.slot, ended_line):
            return [("none", "lapsed lifeline being renewed or closed by another transaction", None)]
        # The ended shared leases or permits still there go first, each under its slot's lock (tried:
        # NULL when one is busy, and those removed before it stay removed).
        changed = self.changed(tx, n)
        outcomes = [("error", "40001", "changed since snapshot")] if changed != "no" else []
        removed = []
        for slot in sorted(rows):
            line = rows[slot].lifeline
            if slot and (self.others(s.slot, (n, slot)) or (line is not None and self.lapse_busy(s.slot, line))):
                why = "ended shared lease or permit locked by another transaction"
                if not removed:
                    return [("none", why, None)]

                def remove(gone=tuple(removed)):
                    for at in gone:
                        tx.leases[(n, at)] = None
                        tx.lock((n, at), CHANGE)
                return outcomes + ([("none", why + ", others removed", remove)] if changed != "yes" else [])
            if slot:
                removed.append(slot)
        if changed != "yes":
            why = ("takeover of a lapsed lifeline's lease" if ended_line is not None
                   else "takeover of an expired row" if current is not None else "grant")
            if removed:
                why += ", removes ended shared leases or permits"
            outcomes.append(grant(why, ended_line, tuple(removed)))
        return outcomes

    def _attempt_join(self, s, tx, n, holder, short, session_bound, lifeline, data, mode, capacity, consistent,
                      cap):
        """A shared lease's or a permit's attempt: the resource's lock in JOIN mode and its kind
        lock (both tried), then the decision; `cap`: the capacity it goes by (None: none declared)."""
        extra = (", attaches" if lifeline is not None else "") + (", data" if data is not None else "")
        if conflicts(JOIN, self.others(s.slot, n)):
            return [("none", f"{mode}: busy resource lock", None)]
        kind = KIND_SHARED if mode == SHARED else KIND_ALONE if cap is None else KIND_PERMIT
        kind_others = self.others(s.slot, kind_lock(n))
        if conflicts(kind, kind_others):
            return [("none", f"{mode}: busy kind lock", None)]
        declare = None
        if mode == PERMIT and cap is None:
            # the first permit request: its capacity, declared with the grant (a refused one
            # declares nothing)
            if capacity is None:  # (a single acquire was told 55000 before; a claim skips it)
                return [("none", "permit: no declared capacity", None)]
            if self.declaring(s.slot, n):
                return [("none", "permit: another open transaction declared the capacity", None)]
            cap = capacity

            def declare_capacity():
                tx.capacities[n] = capacity
            declare = declare_capacity
        note = ", declares" if declare else ""

        def none(why):
            return ("none", f"{mode}: {why}", None)
        rows = self.rows(tx, n)
        current = rows.get(0)
        # a row that ended with its lifeline counts as ended once the lapse is confirmed under the
        # lifeline's lock (tried)
        if any(lease.lifeline is not None and not self.lease_live(tx, lease)
               and self.lapse_busy(s.slot, lease.lifeline) for lease in rows.values()):
            return [none("lease of a lapsed lifeline being renewed or closed by another transaction")]
        if self.lease_live(tx, current):
            return [none("exclusive lease " + ("kept" if current.kept else "held"))]
        live = sorted((lease for lease in rows.values() if self.lease_live(tx, lease)), key=lambda lease: lease.slot)
        if consistent and rows:
            return [none("consistent: skip row")]
        if any(lease.mode != mode for lease in live):
            return [none("held in the other mode")]
        mine = next((lease for lease in live
                     if not lease.kept and lease.holder == holder and lease.owner == s.role), None)
        if mine is None and cap is not None and len(live) >= cap:
            return [none(f"capacity {cap} reached ({len(live)} live" + (", kept" if any(
                lease.kept for lease in live) else "") + ")")]
        if mine is not None:
            if conflicts(EXTEND, self.others(s.slot, (n, mine.slot))):
                return [none("own lease busy")]
            bad_binding = session_bound and mine.bound not in (None, s.key)
            changed = self.changed(tx, n, mine.slot)
            outcomes = []
            if bad_binding:
                outcomes.append(("error", "55006", "bound to another session"))
            if changed != "no":
                outcomes.append(("error", "40001", "changed since snapshot"))
            if not bad_binding and changed != "yes":
                def extend():
                    if declare:
                        declare()
                    self._extend(s, tx, n, mine, short, session_bound, lifeline, data)
                why = f"{mode} re-acquire" + (", binds" if session_bound and mine.bound is None else "") + (
                    ", was attached" if mine.lifeline is not None else "") + (
                    f", {len(live) - 1} others" if len(live) > 1 else "")
                outcomes.append(("same", mine.token, why + note + extra, extend))
            return outcomes
        # Permits above a lowered capacity still live: counted alone (the kind lock exclusively, tried).
        alone = kind == KIND_ALONE
        above = cap is not None and any(lease.slot > cap for lease in live)
        if above and not alone:
            if conflicts(KIND_ALONE, kind_others):
                return [none("busy: permits above a lowered capacity are counted alone")]
            alone = True
        # The rows the grant relies on having ended (the exclusive lease, rows of the other kind or
        # above the capacity) are removed first, each under its lock (tried: NULL when one is
        # busy, and those removed before it stay removed).
        removed = []
        outcome = None
        for slot in sorted(rows):
            lease = rows[slot]
            if self.lease_live(tx, lease) or not (slot == 0 or lease.mode != mode or (cap is not None and slot > cap)):
                continue
            if self.others(s.slot, removal_lock(n) if slot == 0 else (n, slot)):
                outcome = ("none", f"{mode}: an ended lease to remove is locked by another transaction" + (
                    ", others removed" if removed else ""), None)
                break
            removed.append(slot)

        def remove(gone=tuple(removed)):
            for at in gone:
                tx.leases[(n, at)] = None
                tx.lock(removal_lock(n) if at == 0 else (n, at), CHANGE)
        if outcome is None:
            # the lowest slot without a live row whose lock is free (a permit's at most the capacity)
            for slot in itertools.count(1) if mode == SHARED else range(1, cap + 1):
                lease = None if slot in removed else rows.get(slot)
                if self.lease_live(tx, lease) or self.others(s.slot, (n, slot)):
                    continue
                ended_line = lease.lifeline if lease is not None else None
                if ended_line is not None and self.lapse_busy(s.slot, ended_line):
                    continue

                def apply(token, slot=slot, ended_line=ended_line):
                    remove()
                    if declare:
                        declare()
                    self._grant(s, tx, n, holder, token, short, session_bound, lifeline, data, ended_line, mode,
                                slot)
                    tx.lock(n, JOIN)
                    tx.lock(kind_lock(n), kind)
                    if alone:
                        tx.lock(kind_lock(n), KIND_ALONE)
                why = f"{mode} " + ("takeover of a lapsed lifeline's slot" if ended_line is not None
                                    else "takeover of an expired slot" if lease is not None else "grant") + (
                    f", {len(live)} others" if live else "") + (", above a lowered capacity" if above else "") + (
                    ", removes ended leases" if removed else "") + (
                    ", a lower slot busy" if slot > 1 and any(
                        rows.get(other) is None or not self.lease_live(tx, rows.get(other)) for other in range(1, slot))
                    else "")
                outcome = ("new", ("consistent: " if consistent else "") + why + note + extra, apply)
                break
            else:
                outcome = ("none", f"{mode}: no free slot" + (", ended leases removed" if removed else ""), None)
        if outcome[0] == "none":
            if not removed:
                return [outcome]
            outcome = ("none", outcome[1], remove)
        # a write (a removal, the grant) under REPEATABLE READ: 40001 if the resource changed since
        # the snapshot (a snapshot_consistent claim skips it instead)
        changed = self.changed(tx, n)
        if consistent:
            skip = [none("consistent: skip changed")] if changed != "no" else []
            return skip + ([outcome] if changed != "yes" else [])
        errors = [("error", "40001", "changed since snapshot")] if changed != "no" else []
        return errors + ([outcome] if changed != "yes" else [])

    # -- the calls -----------------------------------------------------------------------------

    def undeclared(self, tx, n):
        """For `mode => 'permit'` without a capacity: 55000 when none is declared, or None."""
        if self.capacity_latest(tx, n) is None:
            return [Alt(("error", "55000"), why="no declared capacity")]
        return None

    def eval_acquire(self, s, tx, n, holder, short, session_bound, lifeline=None, data=None, mode=EXCLUSIVE,
                     capacity=None, wait=False):
        # A permit without a stated capacity needs a declared one (checked first).
        if mode == PERMIT and capacity is None:
            refused = self.undeclared(tx, n)
            if refused:
                return refused
        # A lifeline is checked (under its lock for use) before anything else.
        if lifeline is not None:
            refused = self.lifeline_refusal(s, tx, lifeline)
            if refused:
                return refused
        alts = []
        for outcome in self._attempt(s, tx, n, holder, short, session_bound, lifeline, data, mode, capacity):
            kind = outcome[0]
            if kind == "none":
                # a waiting call's attempts run in subtransactions, rolled back unless granted
                effect = None if wait else outcome[2]
                alts.append(Alt(("value", None), effect and (lambda _v, effect=effect: effect()), outcome[1]))
            elif kind == "error":
                alts.append(Alt(("error", outcome[1]), why=outcome[2]))
            elif kind == "new":
                alts.append(Alt(("new",), outcome[2], outcome[1]))
            else:
                alts.append(Alt(("value", outcome[1]), lambda _v, extend=outcome[3]: extend(), outcome[2]))
        return unique(alts)

    def eval_acquire_any(self, s, tx, candidates, holder, short, max_count, session_bound, consistent,
                         lifeline=None, data=None, mode=EXCLUSIVE, capacity=None):
        if lifeline is not None:
            refused = self.lifeline_refusal(s, tx, lifeline)
            if refused:
                return refused
        order = []
        for n in candidates:
            if n not in order:
                order.append(n)
        alts = []

        def finish(taken, effects, whys):
            def apply(rows):
                if lifeline is not None:  # taken for use once, for the whole claim
                    tx.lock_lifeline(lifeline, ATTACH)
                tokens = iter(token for _, token in rows)
                for kind, effect in effects:
                    if kind == "new":
                        effect(next(tokens))
                    elif kind == "same":
                        next(tokens)
                        effect()
                    elif effect is not None:
                        effect()
            why = ", ".join(sorted(set(whys))) or "no candidate"
            if lifeline is not None:
                why += "; attaches"
            alts.append(Alt(("rows", taken), apply, why))

        def walk(i, taken, effects, whys):
            if len(taken) == max_count or i == len(order):
                return finish(taken, effects, whys)
            n = order[i]
            for outcome in self._attempt(s, tx, n, holder, short, session_bound, lifeline, data, mode, capacity,
                                         consistent):
                if not follow(outcome, n, taken, effects, whys, alts, lambda *step: walk(i + 1, *step)):
                    walk(i + 1, taken, effects + [("none", outcome[2])], whys + ["skip: " + outcome[1]])

        walk(0, [], [], [])
        return unique(alts)

    def eval_acquire_all(self, s, tx, resources, holder, short, session_bound, lifeline=None, data=None,
                         wait=False):
        """Every listed resource (an exclusive lease each, duplicates once) or none: one attempt at
        each in order in a subtransaction, rolled back unless all were had. A waiting claim
        tries again after the first attempt, the caller's own live leases first."""
        if lifeline is not None:
            refused = self.lifeline_refusal(s, tx, lifeline)
            if refused:
                return refused
        order = []
        for n in resources:
            if n not in order:
                order.append(n)

        def claim(order):
            alts = []

            def walk(i, taken, effects, whys):
                if i == len(order):
                    def apply(rows):
                        if lifeline is not None:
                            tx.lock_lifeline(lifeline, ATTACH)
                        for (kind, effect), (_, token) in zip(effects, rows):
                            if kind == "new":
                                effect(token)
                            else:
                                effect()
                    why = "all: " + ", ".join(sorted(set(whys))) + ("; attaches" if lifeline is not None else "")
                    alts.append(Alt(("rows", taken), apply, why))
                    return
                n = order[i]
                for outcome in self._attempt_exclusive(s, tx, n, holder, short, session_bound, lifeline, data):
                    if not follow(outcome, n, taken, effects, whys, alts, lambda *step: walk(i + 1, *step)):
                        alts.append(Alt(("rows", []), why="none: " + outcome[1]))

            walk(0, [], [], [])
            return alts

        alts = claim(order)
        if wait and any(alt.pattern == ("rows", []) for alt in alts):
            # its later attempts take the caller's own live leases first: what those raise
            own = [n for n in order if (lease := self.rows(tx, n).get(0)) is not None and self.lease_live(tx, lease)
                   and not lease.kept and lease.holder == holder and lease.owner == s.role]
            again = own + [n for n in order if n not in own]
            if again != order:
                alts += [alt for alt in claim(again) if alt.pattern[0] == "error"]
        return unique(alts)

    def eval_renew(self, s, tx, n, token, short):
        lease = self.holds(tx, n, token)
        if lease is None:
            return [Alt(("value", False), why="not held")]
        if not is_member(s.role, lease.owner):
            return [Alt(("error", "42501"), why="not a member")]
        why = ("held, others fence" if self.others(s.slot, row_lock(n, lease.slot)) else "held") + mode_note(lease)
        if lease.lifeline is not None:
            # an attached lease lives as long as its lifeline: true, and nothing changes
            def apply(_v):
                tx.lock(row_lock(n, lease.slot), EXTEND)
                if lease.mode == EXCLUSIVE:
                    tx.proofs.add(n)
            return self._unless_changed(tx, n, Alt(("value", True), apply, why + ", attached"), lease.slot,
                                        row_only=True)
        return self._unless_changed(tx, n, Alt(("value", True), lambda _v: self._extend(s, tx, n, lease, short, False),
                                               why), lease.slot, row_only=True)

    def _unless_changed(self, tx, n, alt, slot=None, changed=None, row_only=False):
        """The answer `alt`, or 40001 if the lease changed since a REPEATABLE READ snapshot."""
        changed = self.changed(tx, n, slot, row_only) if changed is None else changed
        alts = [Alt(("error", "40001"), why="changed since snapshot")] if changed != "no" else []
        return alts + ([alt] if changed != "yes" else [])

    def eval_release(self, s, tx, n, token, keep=None, keep_us=None):
        """keep: None (no keep_for), "null", "zero", "elapsed" (at most the time since the
        acquire), "short" (kept a moment, then waited out) or "long" (kept for an hour)."""
        lease = self.holds(tx, n, token)
        if lease is None:
            return [Alt(("value", False), why="not held")]
        if not is_member(s.role, lease.owner):
            return [Alt(("error", "42501"), why="not a member")]
        kept = keep in ("short", "long")
        why = "held" + mode_note(lease) + (f", keep_for {keep}" if keep is not None else "") + (
            ", attached" if lease.lifeline is not None else "") + (", session-bound" if lease.bound else "")

        def apply(_v):
            if kept:
                # nobody holds it; detached from its lifeline and its session
                version = lease.copy(kept=True, keep_us=keep_us, bound=None, lifeline=None)
                tx.leases[(n, lease.slot)] = version
                if keep == "short":
                    until = lease.since + datetime.timedelta(microseconds=keep_us)
                    if not self.t_after < until:
                        self.timing_problem = (f"the release ended at {self.t_after}, after the earliest "
                                               f"end of the keep ({until}): raise KEEP_MARGIN_US")
                    self._pending(n, version, lease.since_ub + datetime.timedelta(microseconds=keep_us))
            else:
                tx.leases[(n, lease.slot)] = None
            self.take(tx, change_locks(n, lease))
            if lease.mode == EXCLUSIVE:
                tx.proofs.add(n)
        return self._unless_changed(tx, n, Alt(("value", True), apply, why), lease.slot, row_only=True)

    def eval_release_each(self, s, tx, pairs):
        """lease_release_each: the release of each (resource, token) of `pairs` as lease_release
        (no keep_for) does it, in order, in one statement: the resources released, in order, or
        the error of the first release that raises (and nothing released). Each release is
        decided on what the ones before it left (a pair listed again finds nothing)."""
        alts = []

        def walk(i, released, effects, whys):
            if i == len(pairs):
                def apply(_v):
                    for effect in effects:
                        effect(True)
                why = f"each: {len(released)} of {len(pairs)}: " + "; ".join(sorted(set(whys)))
                alts.append(Alt(("released", [n for n, _ in released]), apply, why))
                return
            n, token = pairs[i]
            for alt in self.eval_release(s, tx, n, token):
                if alt.pattern[0] == "error":
                    alts.append(Alt(alt.pattern, why=f"each: at {i + 1} of {len(pairs)}: {alt.why}"))
                elif alt.pattern == ("value", False):
                    why = "released before in the call" if (n, token) in released else alt.why
                    walk(i + 1, released, effects, whys + [why])
                else:
                    # what the release leaves for the ones after it, then as it was
                    saved = tx.save()
                    alt.apply(True)
                    walk(i + 1, released + [(n, token)], effects + [alt.apply], whys + [alt.why])
                    tx.restore(saved)

        walk(0, [], [], [])
        return unique(alts)

    def eval_set_data(self, s, tx, n, token, data):
        lease = self.holds(tx, n, token)
        if lease is None:
            return [Alt(("value", False), why="not held")]
        if not is_member(s.role, lease.owner):
            return [Alt(("error", "42501"), why="not a member")]

        def apply(_v):
            tx.leases[(n, lease.slot)] = lease.copy(data=data)
            tx.lock(row_lock(n, lease.slot), EXTEND)
            if lease.mode == EXCLUSIVE:
                tx.proofs.add(n)
        why = ("held" if data is not None else "held, removes") + mode_note(lease) + (
            ", attached" if lease.lifeline else "")
        return self._unless_changed(tx, n, Alt(("value", True), apply, why), lease.slot, row_only=True)

    def eval_set_capacity(self, s, tx, n, capacity):
        if s.role != SUPERUSER:
            return [Alt(("error", "42501"), why="not granted")]
        # under REPEATABLE READ, a capacity another transaction wrote since the snapshot: 40001,
        # or decided on the latest one
        changed = self.capacity_changed(tx, n)
        alts = [Alt(("error", "40001"), why="capacity changed since snapshot")] if changed != "no" else []
        previous = self.capacity_latest(tx, n)

        def apply(_v):
            tx.capacities[n] = capacity
            tx.lock(kind_lock(n), KIND_ALONE)
        live = [lease for lease in self.rows(tx, n).values() if lease.mode == PERMIT and self.lease_live(tx, lease)]
        why = ("sets" if previous is None else "removes" if capacity is None else "raises" if capacity > previous
               else "lowers" if capacity < previous else "keeps") + (
            ", changed since snapshot" if changed != "no" else "") + (
            f", {len(live)} live permits" if live else "") + (
            ", more than it" if capacity is not None and len(live) > capacity else "")
        return alts + [Alt(("value", previous), apply, why)]

    def eval_lifeline_open(self, s, tx, short, bound):
        def apply(lid):
            self.note_lifeline(lid)
            lifeline = Lifeline(lid, s.role, s.key if bound else None, short)
            tx.lifelines[lid] = lifeline
            if short:
                self.short_leases.append(("lifeline", lid, lifeline, None))
        why = "open" + (", session-bound" if bound else "") + (", 1 ms" if short else "")
        return [Alt(("new",), apply, why)]

    def eval_lifeline_renew(self, s, tx, lid, ttl):
        refused = self.lifeline_refusal(s, tx, lid)
        if refused:
            return refused
        current = self.lifeline_view(tx, lid)
        short = ttl == SHORT or (ttl is None and current.short)
        changed = self.lifeline_changed(tx, lid)
        if changed != "no":
            # its statement cannot see the lifeline it would write; one opened after the
            # snapshot may also count as unknown
            alts = [Alt(("error", "40001"), why=f"lifeline {changed} since snapshot")]
            if changed == "created":
                alts.append(Alt(("error", "55000"), why="lifeline created since snapshot"))
            return alts

        def apply(_v):
            version = Lifeline(lid, current.owner, current.bound, current.short)
            tx.lifelines[lid] = version
            tx.lock_lifeline(lid, RENEW)
            if short:
                self.short_leases.append(("lifeline", lid, version, None))
        why = "renew" + (", 1 ms" if short else "") + (", own ttl" if ttl is None else "") + (
            f", {len(self.attached_to(tx, lid))} attached" if self.attached_to(tx, lid) else "")
        return [Alt(("expiry", SHORT_DELTA if short else LONG_DELTA), apply, why)]

    def eval_lifeline_close(self, s, tx, lid):
        refused = self.lifeline_refusal(s, tx, lid)
        if refused:
            return refused
        attached = self.attached_to(tx, lid)
        leases = {(n, slot): self.rows(tx, n)[slot] for n, slot in attached}
        alts = []
        changed = self.lifeline_changed(tx, lid)
        if changed != "no":
            alts.append(Alt(("error", "40001"), why=f"lifeline {changed} since snapshot"))
            if changed == "created":
                alts.append(Alt(("error", "55000"), why="lifeline created since snapshot"))
            return alts
        leases_changed = {self.changed(tx, n, slot) for n, slot in attached}
        if leases_changed - {"no"}:
            alts.append(Alt(("error", "40001"), why="attached lease changed since snapshot"))
        if "yes" in leases_changed:
            return alts

        def apply(_v):
            for (n, slot), lease in leases.items():
                tx.leases[(n, slot)] = None
                self.take(tx, change_locks(n, lease))
                if lease.mode == EXCLUSIVE:
                    tx.proofs.add(n)
            tx.lifelines[lid] = None
            tx.lock_lifeline(lid, END)
        shared = sum(lease.mode != EXCLUSIVE for lease in leases.values())
        alts.append(Alt(("closed", len(attached)), apply, f"close, {len(attached)} attached" + (
            f" ({shared} shared or permits)" if shared else "")))
        return alts

    def _fence(self, tx, n, lease):
        tx.lock(row_lock(n, lease.slot), FENCE)
        if lease.mode == EXCLUSIVE:  # a shared lease's or a permit's fence proves nothing
            tx.proofs.add(n)

    def eval_check(self, s, tx, n, token):
        lease = self.holds(tx, n, token)
        if lease is not None and is_member(s.role, lease.owner):
            why = ("held, others fence or extend" if self.others(s.slot, row_lock(n, lease.slot)) else "held") + (
                mode_note(lease))
            return [Alt(("value", True), lambda _v: self._fence(tx, n, lease), why)]
        return [Alt(("value", False), why="not held" if lease is None else "held, not a member")]

    def eval_assert(self, s, tx, n, token):
        lease = self.holds(tx, n, token)
        if lease is None:
            return [Alt(("error", "55000"), why="not held")]
        if not is_member(s.role, lease.owner):
            return [Alt(("error", "42501"), why="held, not a member")]
        return [Alt(("void",), lambda _v: self._fence(tx, n, lease), "held" + mode_note(lease))]

    def eval_force(self, s, tx, n):
        """Revokes every live holder of n (its exclusive lease, or all its shared leases or permits)."""
        if not may_force_release(s.role):
            return [Alt(("error", "42501"), why="not granted")]
        rows = self.rows(tx, n)
        live = [rows[slot] for slot in sorted(rows) if self.lease_live(tx, rows[slot])]
        if not live:
            return [Alt(("value", False), why="expired rows" if rows else "no lease")]

        def apply(_v):
            tx.lock(n, CHANGE)
            for lease in live:
                tx.leases[(n, lease.slot)] = None
                tx.lock(row_lock(n, lease.slot), CHANGE)
        changes = {self.changed(tx, n, lease.slot) for lease in live}
        changed = "yes" if "yes" in changes else "maybe" if "maybe" in changes else "no"
        why = ("live lease" if len(live) == 1 else f"{len(live)} live leases") + mode_note(live[0]) + (
            ", attached" if any(lease.lifeline is not None for lease in live) else "")
        if all(lease.kept for lease in live):
            # the contract does not say whether a kept lease is "live" to a revocation
            return self._unless_changed(tx, n, Alt(("value", True), apply, why + ", kept, revoked"),
                                        changed=changed) + [Alt(("value", False), why=why + ", kept, not revoked")]
        if any(lease.kept for lease in live):
            why += ", kept ones too"
        return self._unless_changed(tx, n, Alt(("value", True), apply, why), changed=changed)

    def eval_info(self, s, tx, n):
        rows = self.snapshot_rows(tx, n)
        result = []
        notes = set()
        for slot in sorted(rows):
            lease = rows[slot]
            if not self.lease_live(tx, lease, snapshot=True):
                continue
            member = is_member(s.role, lease.owner)
            notes.add("member" if member else "not a member")
            notes.add("kept" if lease.kept else "attached" if lease.lifeline is not None else lease.mode)
            if lease.data is not None:
                notes.add("data")
            # the duration column: expires_at - acquired_at of a kept lease (its keep_for),
            # expires_at - renewed_at of a lease with its own ttl (always 1 hour while live)
            duration = (datetime.timedelta(microseconds=lease.keep_us) if lease.kept
                        else None if lease.lifeline is not None else LONG_DELTA)
            capacity = self.capacity_snapshot(tx, n) if lease.mode == PERMIT else None
            result.append((lease.holder, lease.token if member else None, lease.owner, lease.lifeline, lease.data,
                           lease.kept, duration, lease.mode, capacity))
        if not result:
            return [Alt(("info", []), why="free or expired")]
        why = (f"{len(result)} rows: " if len(result) > 1 else "") + ", ".join(sorted(notes)) + (
            ", snapshot differs" if rows != self.rows(tx, n) else "")
        return [Alt(("info", sorted(result, key=repr)), why=why)]

    def eval_insert(self, s, tx, k, n, token):
        lease = self.holds(tx, n, token) if token is not None and n is not None else None
        if lease is None or not is_member(s.role, lease.owner):
            why = ("NULL resource" if n is None else "NULL token" if token is None
                   else "not held" if lease is None else "held, not a member")
            return [Alt(("error", "55000"), why=why)]
        if lease.mode != EXCLUSIVE:  # only an exclusive lease's token passes
            return [Alt(("error", "55000"),
                        why=f"{lease.mode} token" + (", resource proven" if n in tx.proofs else ""))]

        def apply(_v):
            tx.rows[k] = (n, token)
            tx.row_locks.add(k)
            self._fence(tx, n, lease)
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
        if lease.mode != EXCLUSIVE:  # only an exclusive lease's token passes
            return [Alt(("error", "55000"), why=f"{lease.mode} token" + (
                ", resource proven" if target in tx.proofs else ""))]

        def apply(_v):
            tx.rows[k] = (target, token)
            tx.row_locks.add(k)
            self._fence(tx, target, lease)
        return [Alt(("count", 1), apply, "held" + (", moved" if target != n else ""))]

    # -- transactions --------------------------------------------------------------------------

    def begin(self, s, isolation):
        s.tx = Tx(isolation, self.seq, True)

    def commit(self, s):
        tx = s.tx
        s.tx = None
        if tx.aborted or not (tx.leases or tx.rows or tx.lifelines or tx.capacities):
            return
        self.seq += 1
        for lid, version in tx.lifelines.items():
            self.lifelines[lid] = version
            self.lifeline_history.setdefault(lid, [(0, None)]).append((self.seq, version))
            self.lifeline_last_change[lid] = self.seq
            self.lifeline_created.setdefault(lid, self.seq)
        written = {}
        for (n, slot), version in tx.leases.items():
            written.setdefault(n, []).append((slot, version))
        for n, versions in written.items():
            rows = dict(self.committed[n])
            for slot, version in versions:
                before = rows.get(slot)
                if version is None:
                    rows.pop(slot, None)
                else:
                    rows[slot] = version
                self.row_write[(n, slot)] = self.seq
                if not (before is None and version is None):
                    self.row_change[(n, slot)] = self.last_change[n] = self.seq
            self.committed[n] = rows
            self.history[n].append((self.seq, rows))
            self.last_write[n] = self.seq
        for n, capacity in tx.capacities.items():
            if self.capacity[n] != capacity:
                self.capacity_last_change[n] = self.seq
            self.capacity[n] = capacity
            self.capacity_history[n].append((self.seq, capacity))
            self.capacity_last_write[n] = self.seq
        for k, row in tx.rows.items():
            self.table_rows[k] = row
            self.row_history.setdefault(k, [(0, None)]).append((self.seq, row))
            self.row_last_write[k] = self.seq

    def rollback(self, s):
        s.tx = None

    def on_error(self, s):
        """An error ends an autocommit statement; in a transaction block it aborts the innermost
        (sub)transaction at once, which gives back the locks it took and undoes its writes (only
        capacities matter to others meanwhile)."""
        tx = s.tx
        if not tx.explicit:
            s.tx = None
            return
        tx.aborted = True
        if tx.savepoints:
            saved = tx.savepoints[-1][1]
            tx.locks = {r: set(m) for r, m in saved["locks"].items()}
            tx.row_locks = set(saved["row_locks"])
            tx.lifeline_locks = {i: set(m) for i, m in saved["lifeline_locks"].items()}
            tx.capacities = dict(saved["capacities"])
        else:
            tx.locks = {}
            tx.row_locks = set()
            tx.lifeline_locks = {}
            tx.capacities = {}

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

    def removed(self, gone):
        """Committed leases (rows (resource, slot)) removed by someone else (the expiry worker)."""
        if not gone:
            return
        self.seq += 1
        for n in sorted({n for n, _ in gone}):
            rows = dict(self.committed[n])
            for m, slot in gone:
                if m == n:
                    rows.pop(slot, None)
                    self.row_change[(n, slot)] = self.row_write[(n, slot)] = self.seq
            self.committed[n] = rows
            self.history[n].append((self.seq, rows))
            self.last_write[n] = self.last_change[n] = self.seq

    def sweepable(self):
        """Committed leases (rows) the expiry worker removes now: expired ones (their own ttl, or
        the end of a keep) whose change locks (tried by the worker) no transaction holds in a
        conflicting mode; and those attached to a lapsed lifeline, whose lock nobody holds either."""
        gone = []
        for n, rows in self.committed.items():
            for slot, lease in rows.items():
                if self.conflicting(None, change_locks(n, lease)):
                    continue
                if lease.lifeline is None:
                    if lease.expired:
                        gone.append((n, slot))
                    continue
                lifeline = self.lifelines.get(lease.lifeline)
                if (lifeline is not None and not self.lifeline_live(lifeline)
                        and not self.lifeline_locked_by_anyone(lease.lifeline)):
                    gone.append((n, slot))
        return gone

    def lapsed_lifelines(self):
        """Committed lifelines the expiry worker removes now: lapsed, no lease attached any more,
        and no transaction holds a lock on them."""
        attached = {lease.lifeline for rows in self.committed.values() for lease in rows.values()}
        return [lid for lid, line in self.lifelines.items()
                if line is not None and not self.lifeline_live(line) and lid not in attached
                and not self.lifeline_locked_by_anyone(lid)]

    def lifelines_removed(self, lids):
        self.seq += 1
        for lid in lids:
            self.lifelines[lid] = None
            self.lifeline_history[lid].append((self.seq, None))
            self.lifeline_last_change[lid] = self.seq

    def kill(self, slot):
        """The session ends: its transaction rolls back, and the worker removes its session-bound
        leases, and the leases of its session-bound lifelines (and those lifelines)."""
        s = self.sessions[slot]
        s.tx = None
        lines = {lid for lid, line in self.lifelines.items() if line is not None and line.bound == s.key}
        self.removed([(n, at) for n, rows in self.committed.items() for at, lease in rows.items()
                      if lease.bound == s.key or lease.lifeline in lines])
        if lines:
            self.seq += 1
            for lid in lines:
                self.lifelines[lid] = None
                self.lifeline_history[lid].append((self.seq, None))
                self.lifeline_last_change[lid] = self.seq
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
        if kind in ("info", "count", "released"):
            return value == pattern[1]
        if kind == "closed":
            return is_token(value) and value == pattern[1]
        if kind == "expiry":  # now + ttl, now read by the call between the two clock reads around it
            return (isinstance(value, datetime.datetime) and self.t_before is not None
                    and self.t_before + pattern[1] <= value <= self.t_after + pattern[1])
        if kind == "void":
            return True
        raise AssertionError(pattern)


def is_token(value):
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Describing answers
# --------------------------------------------------------------------------------------------


def mode_arguments(sql, params, mode, capacity):
    """The call's SQL and parameters with its mode and capacity, named, when it states them."""
    if mode is not None:
        sql, params = sql + ", mode => %s", params + (mode,)
    if capacity is not None:
        sql, params = sql + ", capacity => %s::integer", params + (capacity,)
    return sql, params


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
        return info_kind(pattern[1])
    if kind == "count":
        return f"{pattern[1]} rows changed"
    if kind == "closed":
        return f"{pattern[1]} released"
    if kind == "released":
        return f"{len(pattern[1])} names"
    if kind == "expiry":
        return "timestamp"
    return "ok"


def info_kind(rows):
    if not rows:
        return "no row"
    return ("1 row" if len(rows) == 1 else f"{len(rows)} rows") + (
        ", token NULL" if any(row[1] is None for row in rows) else "")


def actual_kind(actual, fetch):
    if actual[0] == "error":
        return f"error {actual[1]}"
    value = actual[1]
    if fetch == "any":
        return f"{len(value)} rows" if isinstance(value, list) else "?"
    if fetch == "names":
        return f"{len(value)} names" if isinstance(value, list) else "?"
    if fetch == "info":
        return info_kind(value)
    if fetch == "count":
        return f"{value} rows changed"
    if fetch == "void":
        return "ok"
    if isinstance(value, datetime.datetime):
        return "timestamp"
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

    def lifeline_name(self):
        return f"{PREFIX}{self.tag}:lifeline"

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
        # a lifeline opened with a NULL ttl then lives (and renews) for an hour, as LONG
        conn.execute("SET lease.default_ttl = '1h'")
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
        kinds = [("acquire", 30), ("acquire_any", 8), ("acquire_all", 5), ("renew", 9), ("release", 9),
                 ("release_each", 5), ("check", 9), ("assert", 5), ("force", 4), ("info", 6), ("insert", 3),
                 ("update", 6), ("update_token", 5), ("move", 2), ("delete", 4), ("bad", 3), ("set_data", 4),
                 ("lifeline_open", 4), ("lifeline_renew", 4), ("lifeline_close", 2), ("set_capacity", 3)]
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if kind in ("lifeline_renew", "lifeline_close") and not model.lifeline_ids and rng.random() < 0.8:
            kind = "lifeline_open"
        n = rng.randrange(RESOURCES)
        holder = rng.choice(HOLDERS)
        ttl = SHORT if rng.random() < 0.07 else LONG
        tx = model.sessions[slot].tx
        # often a resource the transaction proved or holds a lock on: an exclusive lease's proof
        # meeting its shared leases, permits and fenced rows
        touched = sorted({key if isinstance(key, int) else key[1] if isinstance(key[0], str) else key[0]
                          for key in tx.locks} | tx.proofs) if tx is not None else []
        if touched and rng.random() < 0.3:
            n = rng.choice(touched)

        def lifeline_spec():
            """Mostly a lifeline live for the session, sometimes any one opened before (closed,
            lapsed, rolled back), rarely an id that never was one."""
            ids = model.lifeline_ids
            if not ids or rng.random() < 0.04:
                return ("lrand", rng.randrange(1 << 40, 1 << 41))
            live = [i for i, lid in enumerate(ids) if model.lifeline_live(model.lifeline_view(tx, lid))]
            if live and rng.random() < 0.8:
                return ("line", rng.choice(live))
            return ("line", rng.randrange(len(ids)))

        def attach_spec():
            live = any(model.lifeline_live(model.lifeline_view(tx, lid)) for lid in model.lifeline_ids)
            return lifeline_spec() if rng.random() < (0.4 if live else 0.03) else None

        def data_value():
            return rng.choice(DATA_VALUES) if rng.random() < 0.2 else None

        def token_spec(n):
            x = rng.random()
            if x < 0.65:
                return ("cur", n, rng.randrange(12))
            if x < 0.80:
                return ("seen", n, rng.randrange(100))
            if x < 0.90:
                return ("cur", rng.randrange(RESOURCES), rng.randrange(12))
            return ("rand", rng.choice([1, rng.randrange(1, 1 << 40)]))

        def mode_spec(n, scale=1.0):
            """(mode as written, capacity): exclusive (the default), shared, or a permit asked for
            with `capacity => N`, `mode => 'permit'` and a capacity, or `mode => 'permit'` alone.
            The resources lean: the first ones to exclusive leases, the last ones to permits."""
            shared, permit = MODE_LEAN[n % len(MODE_LEAN)]
            x = rng.random()
            if x < shared * scale:
                return (SHARED, None)
            if x < (shared + permit) * scale:
                capacity = rng.choice(CAPACITIES)
                return rng.choices([(None, capacity), (PERMIT, capacity), (PERMIT, None)], [50, 25, 25])[0]
            return (None, None)

        if kind == "acquire":
            line = attach_spec()
            wait = WAIT if rng.random() < 0.25 else None
            mode, capacity = mode_spec(n)
            if line is not None:  # an attached lease has no ttl and is not session-bound
                return ("acquire", slot, n, holder, None, wait, False, line, data_value(), mode, capacity)
            return ("acquire", slot, n, holder, ttl, wait, rng.random() < 0.25, None, data_value(), mode, capacity)
        if kind == "acquire_any":
            candidates = [rng.randrange(RESOURCES) for _ in range(rng.randint(1, 4))]
            line = attach_spec()
            mode, capacity = mode_spec(candidates[0], 0.6)
            return ("acquire_any", slot, candidates, holder, None if line else ttl, rng.randint(1, 3),
                    not line and rng.random() < 0.2, rng.random() < 0.3, line, data_value(), mode, capacity)
        if kind == "acquire_all":
            # mostly of the resources that do not lean to permits
            resources = [rng.randrange(RESOURCES - (rng.random() < 0.7)) for _ in range(rng.randint(1, 3))]
            line = attach_spec()
            wait = WAIT if rng.random() < 0.2 else None
            if line is not None:
                return ("acquire_all", slot, resources, holder, None, wait, False, line, data_value())
            return ("acquire_all", slot, resources, holder, ttl, wait, rng.random() < 0.2, None, data_value())
        if kind == "set_capacity":  # mostly by the superuser, who may, of the resources permits lean to
            n = n if rng.random() < 0.3 else rng.randrange(RESOURCES // 2, RESOURCES)
            return ("set_capacity", 0 if rng.random() < 0.7 else slot, n,
                    rng.choices([1, 2, 3, None], [35, 25, 25, 15])[0])
        if kind == "renew":
            return ("renew", slot, n, token_spec(n), ttl)
        if kind == "release":
            keep = rng.choices([None, "null", "zero", "elapsed", "short", "long"], [60, 5, 7, 8, 12, 8])[0]
            return ("release", slot, n, token_spec(n), keep)
        if kind == "release_each":
            # 1 to 4 resources (often ones the transaction touched), each with a token of its own
            # (held, stale, foreign, random); sometimes a name again, with the same or another token
            pairs = [(n, token_spec(n))]
            for _ in range(rng.randint(0, 3)):
                if rng.random() < 0.2:
                    m, spec = rng.choice(pairs)
                    pairs.append((m, spec if rng.random() < 0.6 else token_spec(m)))
                else:
                    m = rng.choice(touched) if touched and rng.random() < 0.3 else rng.randrange(RESOURCES)
                    pairs.append((m, token_spec(m)))
            return ("release_each", slot, pairs, rng.choice((-1, 1)) if rng.random() < 0.08 else 0)
        if kind in ("check", "assert"):
            return (kind, slot, n, token_spec(n))
        if kind == "set_data":
            return ("set_data", slot, n, token_spec(n), rng.choice(DATA_VALUES) if rng.random() < 0.8 else None)
        if kind == "lifeline_open":
            return ("lifeline_open", slot, rng.choices([LONG, SHORT, None], [65, 10, 25])[0], rng.random() < 0.25)
        if kind == "lifeline_renew":
            return ("lifeline_renew", slot, lifeline_spec(), rng.choices([None, LONG, SHORT], [30, 40, 30])[0])
        if kind == "lifeline_close":
            return ("lifeline_close", slot, lifeline_spec())
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
        if self.model.timing_problem is not None:
            self.fail_observation(index, "-- the driver's timing", "decisive", self.model.timing_problem, ("timing",))
            return
        self.settle(index)

    def execute(self, slot, sql, params=(), fetch=None):
        conn = self.conns[slot]
        self.ctx.statements += 1
        try:
            cursor = conn.execute(sql, params)
            if fetch in ("one", "value"):
                return ("ok", cursor.fetchone()[0])
            if fetch in ("all", "any", "info", "names"):
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
        if fetch == "names":
            return "[" + ", ".join(self.name(r) if is_token(r) else str(r) for r in value) + "]"
        if fetch == "info":
            return "no row" if not value else "; ".join(str(row) for row in value)
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
            elif kind == "released":
                texts.append("[" + ", ".join(self.name(n) for n in pattern[1]) + "]")
            elif kind == "info":
                texts.append("no row" if not pattern[1] else "; ".join(str(row) for row in pattern[1]))
            elif kind == "count":
                texts.append(f"{pattern[1]} rows changed")
            elif kind == "closed":
                texts.append(f"{pattern[1]} (leases released)")
            elif kind == "expiry":
                texts.append(f"now + {pattern[1]}")
            else:
                texts.append("ok")
        return " or ".join(texts)

    def clock(self):
        return self.observer.execute("SELECT clock_timestamp()").fetchone()[0]

    def call(self, index, s, kind, sql, params, fetch, evaluate, timed=False):
        """Runs one statement of session `s` and compares its answer with the model's; `timed`:
        reads the server clock just before and after it (model.t_before, model.t_after)."""
        model = self.model
        autocommit = s.tx is None
        if autocommit:
            s.tx = Tx("rc", model.seq, False)
        tx = s.tx
        alts = evaluate(tx)
        expected = self.expected_text(alts)
        model.short_leases = []
        model.t_before = self.clock() if timed else None
        actual = self.execute(s.slot, sql, params, "one" if fetch == "value" else fetch)
        model.t_after = self.clock() if timed else None
        if actual[0] == "ok" and fetch == "any":
            actual = ("ok", [(self.number(r), t) for r, t in actual[1]])
        elif actual[0] == "ok" and fetch == "names":
            actual = ("ok", [self.number(r) for r, in actual[1]])
        elif actual[0] == "ok" and fetch == "info":
            actual = ("ok", sorted(actual[1], key=repr))
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
        for what, key, version, bound in model.short_leases:
            if what == "lease" and model.committed[key].get(version.slot) is version:
                def expired(n=key, lease=version):
                    row = obs.execute("SELECT clock_timestamp() > expires_at FROM lease.leases "
                                      "WHERE resource = %s AND token = %s", (self.name(n), lease.token)).fetchone()
                    return row is None or row[0]
            elif what == "lifeline" and model.lifelines.get(key) is version:
                def expired(lid=key):
                    row = obs.execute("SELECT clock_timestamp() > expires_at FROM lease.lifelines WHERE id = %s",
                                      (lid,)).fetchone()
                    return row is None or row[0]
            else:  # not committed: invisible here, but it ends by `bound` (the clock after the call + ttl)
                def expired(bound=bound if bound is not None else after + SHORT_DELTA):
                    return obs.execute("SELECT clock_timestamp() > %s", (bound,)).fetchone()[0]
            if not wait_until(expired):
                raise AssertionError(f"{what} {self.name(key) if what == 'lease' else key} did not expire")
            version.expired = True
        model.short_leases = []

    def settle(self, index):
        """Waits for the expiry worker to remove expired committed leases that nobody locks, and
        then lapsed lifelines left with none, so that no removal happens behind the model's back
        (or holds up a call that tries a lock the worker holds for a moment)."""
        model = self.model
        gone = model.sweepable()
        if gone:
            self.wait_removed(index, gone)
        lines = model.lapsed_lifelines() if self.failure is None else []
        if lines:
            obs = self.observer
            removed = wait_until(lambda: obs.execute(
                "SELECT count(*) FROM lease.lifelines WHERE id = ANY(%s)", (lines,)).fetchone()[0] == 0,
                timeout=SWEEP_TIMEOUT) and self.wait_worker_idle()
            if not removed:
                self.fail_observation(index, f"-- the expiry worker removes the lapsed lifelines {lines}, which "
                                      "have no lease left and no transaction locks", f"removed within "
                                      f"{SWEEP_TIMEOUT:.0f} s", "still there", ("sweep", "lifelines"))
                return
            model.lifelines_removed(lines)

    def wait_removed(self, index, gone):
        model = self.model
        names = sorted({self.name(n) for n, _ in gone})
        tokens = [model.committed[n][slot].token for n, slot in gone]
        obs = self.observer
        removed = wait_until(lambda: obs.execute(
            "SELECT count(*) FROM lease.leases WHERE resource = ANY(%s) AND token = ANY(%s)",
            (names, tokens)).fetchone()[0] == 0, timeout=SWEEP_TIMEOUT)
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
            "WHERE a.backend_type = 'lease expirer' AND l.locktype = 'advisory' AND l.objsubid = ANY(%s)",
            (list(WORKER_LOCK_SPACES),)).fetchone()[0] == 0)

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
        lines = {lid for lid, line in self.model.lifelines.items() if line is not None and line.bound == s.key}
        bound = [self.name(n) + (f" (slot {lease.slot})" if lease.slot else "")
                 for n, rows in self.model.committed.items() for lease in rows.values()
                 if lease.bound == s.key or lease.lifeline in lines]
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
        if ok:  # its session-bound lifelines end, and their leases with them
            ok = wait_until(lambda: obs.execute(
                "SELECT count(*) FROM lease.lifelines WHERE session_pid = %s", (pid,)).fetchone()[0] == 0)
            if not ok:
                left = [f"lifeline {i} ({r})" for i, r in obs.execute(
                    "SELECT f.id, string_agg(l.resource, ', ') FROM lease.lifelines AS f "
                    "LEFT JOIN lease.leases AS l ON l.lifeline = f.id WHERE f.session_pid = %s GROUP BY f.id",
                    (pid,)).fetchall()]
        self.pids[slot] = None
        if ok:
            ok = self.wait_worker_idle()
        self.model.kill(slot)
        self.connect(slot)
        got = "true, and then no lease bound to it" if ok else (
            f"terminated={value_text(terminated)}, still bound after 5 s: {left}")
        return Record(index, None, None, sql, expected, got, ok, ("kill", "removed", "ok" if ok else "left"))

    # -- the calls ---------------------------------------------------------------------------

    def do_acquire(self, index, s, n, holder, ttl, wait, session_bound, line=None, data=None, mode=None,
                   capacity=None):
        lid = self.model.resolve_lifeline(s, line)
        asked = effective_mode(mode, capacity)

        def evaluate(tx):
            # With a wait the call first tries as without one; nothing changes while it waits.
            alts = self.model.eval_acquire(s, tx, n, holder, ttl == SHORT, session_bound, lid, data, asked, capacity,
                                           wait is not None)
            for alt in alts:
                alt.why = f"{alt.why}, waiting" if wait else alt.why
            return alts
        sql, params = mode_arguments("SELECT lease_acquire(%s, %s, %s::interval, %s::interval, %s, %s, %s::jsonb",
                                     (self.name(n), holder, ttl, wait, session_bound, lid, json_text(data)),
                                     mode, capacity)
        return self.call(index, s, "acquire" if asked == EXCLUSIVE else f"acquire {asked}", sql + ")", params,
                         "value", evaluate, timed=True)

    def do_acquire_any(self, index, s, candidates, holder, ttl, max_count, session_bound, consistent,
                       line=None, data=None, mode=None, capacity=None):
        lid = self.model.resolve_lifeline(s, line)
        asked = effective_mode(mode, capacity)
        sql, params = mode_arguments(
            "SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, %s, %s, %s, %s, %s::jsonb",
            ([self.name(n) for n in candidates], holder, ttl, max_count, session_bound, consistent, lid,
             json_text(data)), mode, capacity)
        return self.call(index, s, "acquire_any" if asked == EXCLUSIVE else f"acquire_any {asked}", sql + ")", params,
                         "any", lambda tx: self.model.eval_acquire_any(
                             s, tx, candidates, holder, ttl == SHORT, max_count, session_bound, consistent, lid, data,
                             asked, capacity),
                         timed=True)

    def do_acquire_all(self, index, s, resources, holder, ttl, wait, session_bound, line=None, data=None):
        lid = self.model.resolve_lifeline(s, line)

        def evaluate(tx):
            # With a wait the claim first tries as without one; nothing changes while it waits.
            alts = self.model.eval_acquire_all(s, tx, resources, holder, ttl == SHORT, session_bound, lid, data,
                                               wait is not None)
            for alt in alts:
                alt.why = f"{alt.why}, waiting" if wait else alt.why
            return alts
        return self.call(index, s, "acquire_all",
                         "SELECT resource, token FROM lease_acquire_all(%s::text[], %s, %s::interval, %s::interval, "
                         "%s, %s, %s::jsonb)",
                         ([self.name(n) for n in resources], holder, ttl, wait, session_bound, lid, json_text(data)),
                         "any", evaluate, timed=True)

    def do_set_capacity(self, index, s, n, capacity):
        return self.call(index, s, "set_capacity", "SELECT lease_set_capacity(%s, %s::integer)",
                         (self.name(n), capacity), "value", lambda tx: self.model.eval_set_capacity(s, tx, n, capacity))

    def do_renew(self, index, s, n, spec, ttl):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "renew", "SELECT lease_renew(%s, %s, %s::interval)",
                         (self.name(n), token, ttl), "value",
                         lambda tx: self.model.eval_renew(s, tx, n, token, ttl == SHORT))

    def do_release(self, index, s, n, spec, keep=None):
        model = self.model
        token = model.resolve(s, spec)
        if keep is None:
            return self.call(index, s, "release", "SELECT lease_release(%s, %s)", (self.name(n), token), "value",
                             lambda tx: model.eval_release(s, tx, n, token))
        # keep_for: worked out from the server clock and the bounds of the lease's acquired_at
        keep_us, text = None, None
        if keep == "null":
            pass
        elif keep == "zero":
            keep_us, text = 0, "0 s"
        elif keep == "long":
            keep_us, text = 3_600_000_000, LONG
        else:
            lease = next((lease for lease in model.rows(s.tx, n).values() if lease.token == token), None)
            since = lease.since if lease is not None and lease.since is not None else None
            if since is None:
                keep_us = 3_600_000_000 if keep == "short" else 0
            else:
                elapsed = self.clock() - (since if keep == "short" else lease.since_ub)
                elapsed_us = elapsed // datetime.timedelta(microseconds=1)
                # short: kept until a moment from now; elapsed: at most the time since the acquire
                keep_us = elapsed_us + KEEP_MARGIN_US if keep == "short" else max(0, elapsed_us - 1000)
            text = f"{keep_us} microseconds"
        return self.call(index, s, "release", "SELECT lease_release(%s, %s, %s::interval)",
                         (self.name(n), token, text), "value",
                         lambda tx: model.eval_release(s, tx, n, token, keep, keep_us), timed=True)

    def do_release_each(self, index, s, pairs, lengths=0):
        """lengths: 0, or -1 / 1: one token fewer / more than resources (22023, nothing released)."""
        model = self.model
        tokens = [model.resolve(s, spec) for _, spec in pairs]
        resolved = [(n, token) for (n, _), token in zip(pairs, tokens)]
        if lengths:
            tokens = tokens[:-1] if lengths < 0 else tokens + tokens[:1]

        def evaluate(tx):
            if lengths:
                return [Alt(("error", "22023"), why="one token " + ("fewer" if lengths < 0 else "more"))]
            return model.eval_release_each(s, tx, resolved)
        return self.call(index, s, "release_each", "SELECT * FROM lease_release_each(%s::text[], %s::bigint[])",
                         ([self.name(n) for n, _ in pairs], tokens), "names", evaluate)

    def do_set_data(self, index, s, n, spec, data):
        token = self.model.resolve(s, spec)
        return self.call(index, s, "set_data", "SELECT lease_set_data(%s, %s, %s::jsonb)",
                         (self.name(n), token, json_text(data)), "value",
                         lambda tx: self.model.eval_set_data(s, tx, n, token, data))

    def do_lifeline_open(self, index, s, ttl, bound):
        return self.call(index, s, "lifeline_open", "SELECT lease_lifeline_open(%s, %s::interval, %s)",
                         (self.lifeline_name(), ttl, bound), "value",
                         lambda tx: self.model.eval_lifeline_open(s, tx, ttl == SHORT, bound))

    def do_lifeline_renew(self, index, s, line, ttl):
        lid = self.model.resolve_lifeline(s, line)
        return self.call(index, s, "lifeline_renew", "SELECT lease_lifeline_renew(%s, %s::interval)",
                         (lid, ttl), "value", lambda tx: self.model.eval_lifeline_renew(s, tx, lid, ttl), timed=True)

    def do_lifeline_close(self, index, s, line):
        lid = self.model.resolve_lifeline(s, line)
        return self.call(index, s, "lifeline_close", "SELECT lease_lifeline_close(%s)", (lid,), "value",
                         lambda tx: self.model.eval_lifeline_close(s, tx, lid))

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
        return self.call(index, s, "info",
                         "SELECT holder, token, owner::text, lifeline, data, released_at IS NOT NULL, "
                         "CASE WHEN released_at IS NOT NULL THEN expires_at - acquired_at "
                         "WHEN lifeline IS NULL THEN expires_at - renewed_at END, mode, capacity FROM lease_info(%s)",
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
        # lease_release_each lists a token that may hold n (nothing is released all the same)
        each, held = "SELECT * FROM lease_release_each(%s::text[], %s::bigint[])", self.model.resolve(s, ("cur", n, 0))
        sql, params, state = {
            "token0": ("SELECT lease_renew(%s, %s, %s::interval)", (self.name(n), 0, LONG), "22023"),
            "null_holder": ("SELECT lease_acquire(%s, %s, %s::interval)", (self.name(n), None, LONG), "22004"),
            "ttl0": ("SELECT lease_acquire(%s, %s, %s::interval)", (self.name(n), "h1", "0 s"), "22023"),
            "negative_wait": ("SELECT lease_acquire(%s, %s, %s::interval, %s::interval)",
                              (self.name(n), "h1", LONG, "-1 s"), "22023"),
            "max_count0": ("SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, %s)",
                           ([self.name(n)], "h1", LONG, 0), "22023"),
            "null_token": ("SELECT lease_check(%s, %s)", (self.name(n), None), "22004"),
            # lifelines, keep_for and data: every argument is checked before anything is looked up
            "lifeline_null": ("SELECT lease_lifeline_renew(%s)", (None,), "22004"),
            "lifeline_zero": ("SELECT lease_lifeline_close(%s)", (0,), "22023"),
            "lifeline_negative": ("SELECT lease_lifeline_renew(%s, %s::interval)", (-5, LONG), "22023"),
            "lifeline_renew_ttl": ("SELECT lease_lifeline_renew(%s, %s::interval)", (1, "-1 s"), "22023"),
            "lifeline_open_ttl0": ("SELECT lease_lifeline_open(%s, %s::interval)", (self.lifeline_name(), "0 s"),
                                   "22023"),
            "lifeline_open_ttl_max": ("SELECT lease_lifeline_open(%s, %s::interval)",
                                      (self.lifeline_name(), "2 days"), "22023"),
            "lifeline_open_null_name": ("SELECT lease_lifeline_open(%s, %s::interval)", (None, LONG), "22004"),
            "attach_with_ttl": ("SELECT lease_acquire(%s, %s, %s::interval, NULL, false, %s)",
                                (self.name(n), "h1", LONG, 1), "22023"),
            "attach_bound": ("SELECT lease_acquire(%s, %s, NULL, NULL, true, %s)", (self.name(n), "h1", 1), "22023"),
            "attach_zero": ("SELECT lease_acquire(%s, %s, NULL, NULL, false, %s)", (self.name(n), "h1", 0), "22023"),
            "attach_any_ttl": ("SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, 1, "
                               "false, false, %s)", ([self.name(n)], "h1", LONG, 1), "22023"),
            "keep_negative": ("SELECT lease_release(%s, %s, %s::interval)", (self.name(n), 1, "-1 s"), "22023"),
            "keep_over_max": ("SELECT lease_release(%s, %s, %s::interval)", (self.name(n), 1, "2 days"), "22023"),
            "data_big": ("SELECT lease_acquire(%s, %s, %s::interval, NULL, false, NULL, %s::jsonb)",
                         (self.name(n), "h1", LONG, json_text(BIG_DATA)), "22023"),
            "data_big_any": ("SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, 1, "
                             "false, false, NULL, %s::jsonb)", ([self.name(n)], "h1", LONG, json_text(BIG_DATA)),
                             "22023"),
            "set_data_big": ("SELECT lease_set_data(%s, %s, %s::jsonb)", (self.name(n), 1, json_text(BIG_DATA)),
                             "22023"),
            "set_data_null_token": ("SELECT lease_set_data(%s, %s, %s::jsonb)", (self.name(n), None, "{}"), "22004"),
            # modes, capacities and claims of several resources (0.6.0)
            "mode_null": ("SELECT lease_acquire(%s, %s, %s::interval, mode => %s::text)",
                          (self.name(n), "h1", LONG, None), "22004"),
            "mode_unknown": ("SELECT lease_acquire(%s, %s, %s::interval, mode => %s)",
                             (self.name(n), "h1", LONG, "read"), "22023"),
            "shared_capacity": ("SELECT lease_acquire(%s, %s, %s::interval, mode => %s, capacity => %s::integer)",
                                (self.name(n), "h1", LONG, SHARED, 2), "22023"),
            "capacity0": ("SELECT lease_acquire(%s, %s, %s::interval, capacity => %s::integer)",
                          (self.name(n), "h1", LONG, 0), "22023"),
            "any_mode_unknown": ("SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, "
                                 "mode => %s)", ([self.name(n)], "h1", LONG, "exclusive "), "22023"),
            "any_capacity0": ("SELECT resource, token FROM lease_acquire_any(%s::text[], %s, %s::interval, "
                              "mode => %s, capacity => %s::integer)", ([self.name(n)], "h1", LONG, PERMIT, -1),
                              "22023"),
            "set_capacity0": ("SELECT lease_set_capacity(%s, %s::integer)", (self.name(n), 0),
                              "22023" if s.role == SUPERUSER else "42501"),
            "all_empty": ("SELECT resource, token FROM lease_acquire_all(%s::text[], %s, %s::interval)",
                          ([], "h1", LONG), "22023"),
            "all_null_holder": ("SELECT resource, token FROM lease_acquire_all(%s::text[], %s, %s::interval)",
                                ([self.name(n)], None, LONG), "22004"),
            "all_too_many": ("SELECT resource, token FROM lease_acquire_all(%s::text[], %s, %s::interval, "
                             "%s::interval)", ([f"{self.name(n)}:x{i}" for i in range(17)], "h1", LONG, "1 s"),
                             "54000"),
            "all_attach_ttl": ("SELECT resource, token FROM lease_acquire_all(%s::text[], %s, %s::interval, NULL, "
                               "false, %s)", ([self.name(n)], "h1", LONG, 1), "22023"),
            # lease_release_each (0.7.0): every argument is checked before anything is released
            "each_null_resources": (each, (None, [held]), "22004"),
            "each_null_tokens": (each, ([self.name(n)], None), "22004"),
            "each_null_name": (each, ([self.name(n), None], [held, held]), "22004"),
            "each_null_token": (each, ([self.name(n), self.name(n)], [held, None]), "22004"),
            "each_token0": (each, ([self.name(n), self.name(n)], [held, 0]), "22023"),
            "each_blank": (each, ([self.name(n), " "], [held, held]), "22023"),
        }[which]
        return self.call(index, s, "bad", sql, params, "all", lambda tx: [Alt(("error", state))])

    # -- the end ---------------------------------------------------------------------------

    def final_check(self, index):
        """The committed state: live leases (with their session binding) and the fenced rows."""
        model, obs = self.model, self.observer

        def pid_of(key):
            if key is None:
                return None
            slot, incarnation = key
            return self.pids[slot] if model.sessions[slot].incarnation == incarnation else "a dead session"
        expected = []
        for n, rows in model.committed.items():
            for slot in sorted(rows):
                lease = rows[slot]
                if model.lease_live(None, lease):
                    expected.append((self.name(n), slot, lease.mode, lease.holder, lease.token, lease.owner,
                                     pid_of(lease.bound), lease.lifeline, lease.data, lease.kept))
        actual = [tuple(row) for row in obs.execute(
            "SELECT l.resource, l.slot, l.mode, l.holder, l.token, l.owner::text, l.session_pid, l.lifeline, l.data, "
            "l.released_at IS NOT NULL FROM lease.leases AS l LEFT JOIN lease.lifelines AS f ON f.id = l.lifeline "
            "WHERE CASE WHEN l.lifeline IS NULL THEN l.expires_at ELSE f.expires_at END > clock_timestamp() "
            "AND l.resource = ANY(%s) ORDER BY l.resource, l.slot", (self.names(),)).fetchall()]
        sql = ("SELECT resource, slot, mode, holder, token, owner::text, session_pid, lifeline, data, "
               "released_at IS NOT NULL FROM lease.leases (the expiry of its lifeline for an attached lease) > "
               "clock_timestamp()  -- by the observer, this history's resources")
        if actual != expected:
            self.fail_observation(index, sql, str(expected), str(actual), ("final", "leases"))
            return
        self.records.append(Record(index, None, None, sql, str(expected), str(actual), True, ("final",)))
        expected_lines = sorted((lid, self.lifeline_name(), line.owner, pid_of(line.bound))
                                for lid, line in model.lifelines.items() if model.lifeline_live(line))
        actual_lines = [tuple(row) for row in obs.execute(
            "SELECT id, name, owner::text, session_pid FROM lease.lifelines "
            "WHERE expires_at > clock_timestamp() AND id = ANY(%s) ORDER BY id", (model.lifeline_ids,)).fetchall()]
        sql = ("SELECT id, name, owner::text, session_pid FROM lease.lifelines WHERE expires_at > clock_timestamp()"
               "  -- by the observer, this history's lifelines")
        if actual_lines != expected_lines:
            self.fail_observation(index, sql, str(expected_lines), str(actual_lines), ("final", "lifelines"))
            return
        self.records.append(Record(index, None, None, sql, str(expected_lines), str(actual_lines), True, ("final",)))
        expected_capacities = [(self.name(n), capacity) for n, capacity in model.capacity.items()
                               if capacity is not None]
        actual_capacities = [tuple(row) for row in obs.execute(
            "SELECT resource, capacity FROM lease.capacities WHERE resource = ANY(%s) ORDER BY resource",
            (self.names(),)).fetchall()]
        sql = "SELECT resource, capacity FROM lease.capacities  -- by the observer, this history's resources"
        if actual_capacities != expected_capacities:
            self.fail_observation(index, sql, str(expected_capacities), str(actual_capacities), ("final", "capacities"))
            return
        self.records.append(Record(index, None, None, sql, str(expected_capacities), str(actual_capacities), True,
                                   ("final",)))
        expected_rows = sorted((self.row_id(k), f"{self.tag}:{row[0]}", row[1])
                               for k, row in model.table_rows.items() if row is not None)
        actual_rows = [tuple(row) for row in obs.execute(
            f"SELECT id, res, tok FROM {TABLE} WHERE id >= %s AND id < %s ORDER BY id",
            (self.row_base, self.row_base + 10_000)).fetchall()]
        sql = f"SELECT id, res, tok FROM {TABLE}  -- by the observer, this history's rows"
        if actual_rows != expected_rows:
            self.fail_observation(index, sql, str(expected_rows), str(actual_rows), ("final", "rows"))
            return
        self.records.append(Record(index, None, None, sql, str(expected_rows), str(actual_rows), True, ("final",)))


BAD_CALLS = ("token0", "null_holder", "ttl0", "negative_wait", "max_count0", "null_token", "lifeline_null",
             "lifeline_zero", "lifeline_negative", "lifeline_renew_ttl", "lifeline_open_ttl0", "lifeline_open_ttl_max",
             "lifeline_open_null_name", "attach_with_ttl", "attach_bound", "attach_zero", "attach_any_ttl",
             "keep_negative", "keep_over_max", "data_big", "data_big_any", "set_data_big", "set_data_null_token",
             "mode_null", "mode_unknown", "shared_capacity", "capacity0", "any_mode_unknown", "any_capacity0",
             "set_capacity0", "all_empty", "all_null_holder", "all_too_many", "all_attach_ttl",
             "each_null_resources", "each_null_tokens", "each_null_name", "each_null_token", "each_token0",
             "each_blank")


def remove_leases(obs, prefix):
    """Leaves no lease of ours behind: force-releases the live ones and waits for the expiry
    worker to remove the expired ones (sweeping them itself if the worker does not)."""
    def ours():
        return obs.execute("SELECT count(*) FROM lease.leases WHERE starts_with(resource, %s)",
                           (prefix,)).fetchone()[0]

    def force_release_live():
        live = obs.execute("SELECT DISTINCT resource FROM lease.leases WHERE starts_with(resource, %s) "
                           "AND expires_at > clock_timestamp()", (prefix,)).fetchall()
        for (resource,) in live:
            obs.execute("SELECT lease_force_release(%s)", (resource,))

    force_release_live()
    if not wait_until(lambda: ours() == 0):
        obs.execute("SELECT lease_sweep()")
        force_release_live()
    if ours():  # e.g. a lease kept after a release that lease_force_release does not revoke
        wait_until(lambda: ours() == 0, timeout=1.0)
        obs.execute("DELETE FROM lease.leases WHERE starts_with(resource, %s)", (prefix,))
    # the lifelines (named with the prefix), once their leases are gone; the capacities
    obs.execute("DELETE FROM lease.lifelines WHERE starts_with(name, %s)", (prefix,))
    obs.execute("DELETE FROM lease.capacities WHERE starts_with(resource, %s)", (prefix,))
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
        _, slot, n, holder, ttl, wait, session_bound, line, data, mode, capacity = step
        if wait is not None:
            yield ("acquire", slot, n, holder, ttl, None, session_bound, line, data, mode, capacity)
        if session_bound:
            yield ("acquire", slot, n, holder, ttl, wait, False, line, data, mode, capacity)
        if data is not None:
            yield ("acquire", slot, n, holder, ttl, wait, session_bound, line, None, mode, capacity)
    elif kind == "acquire_any":
        _, slot, candidates, holder, ttl, max_count, session_bound, consistent, line, data, mode, capacity = step
        rest = (mode, capacity)
        for i in range(len(candidates)):
            if len(candidates) > 1:
                yield ("acquire_any", slot, candidates[:i] + candidates[i + 1:], holder, ttl, max_count,
                       session_bound, consistent, line, data) + rest
        if max_count > 1:
            yield ("acquire_any", slot, candidates, holder, ttl, 1, session_bound, consistent, line, data) + rest
        if session_bound:
            yield ("acquire_any", slot, candidates, holder, ttl, max_count, False, consistent, line, data) + rest
        if consistent:
            yield ("acquire_any", slot, candidates, holder, ttl, max_count, session_bound, False, line, data) + rest
        if data is not None:
            yield ("acquire_any", slot, candidates, holder, ttl, max_count, session_bound, consistent, line,
                   None) + rest
    elif kind == "acquire_all":
        _, slot, resources, holder, ttl, wait, session_bound, line, data = step
        for i in range(len(resources)):
            if len(resources) > 1:
                yield ("acquire_all", slot, resources[:i] + resources[i + 1:], holder, ttl, wait, session_bound,
                       line, data)
        if wait is not None:
            yield ("acquire_all", slot, resources, holder, ttl, None, session_bound, line, data)
        if session_bound:
            yield ("acquire_all", slot, resources, holder, ttl, wait, False, line, data)
        if data is not None:
            yield ("acquire_all", slot, resources, holder, ttl, wait, session_bound, line, None)
    elif kind == "release" and step[4] is not None:
        yield step[:4] + (None,)
    elif kind == "release_each":
        _, slot, pairs, lengths = step
        for i in range(len(pairs)):
            if len(pairs) > 1:
                yield ("release_each", slot, pairs[:i] + pairs[i + 1:], lengths)


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
