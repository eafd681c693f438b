"""Proves the checker can fail: injects one fault per property into a copy of a real run's
record (an overlapping grant, a stale write accepted, a token reused after the restart, a lease
lost in the crash, an unexpected error) and reports whether the checker caught each one.
Used by checker.py --self-test."""

from dataclasses import replace
from datetime import timedelta

from properties import build_grants, check
from workload import UNEXPECTED, Info, Op

INTRUDER = -1


def confirmed_grants(run):
    grants = build_grants(run)
    return [g for g in grants.values() if g.confirmed and g.acquired_at and g.valid_until and g.valid_until > g.acquired_at]


def fake_grant(run, resource, token, acquired_at, gen=0):
    """A committed acquire with a 100 ms ttl by a session that does not exist."""
    info = Info(token, "intruder", acquired_at, acquired_at + timedelta(milliseconds=100))
    run.ops.append(Op(INTRUDER, INTRUDER, gen, "acquire", resource, None, "intruder", 0.1, sent=True,
                      result=token, t0=acquired_at, t1=acquired_at, info=info, outcome="committed"))


def overlapping_grant(run):
    """Another token granted in the middle of a confirmed lease's validity."""
    victim = max(confirmed_grants(run), key=lambda g: g.valid_until - g.acquired_at)
    middle = victim.acquired_at + (victim.valid_until - victim.acquired_at) / 2
    top = max(g.token for g in build_grants(run).values())
    fake_grant(run, victim.resource, top + 1, middle)


def stale_write(run):
    """A write accepted with a token after a larger token of the resource was granted."""
    grants = sorted(confirmed_grants(run), key=lambda g: g.acquired_at)
    resource = next(g.resource for g in grants if sum(h.resource == g.resource for h in grants) > 1)
    mine = [g for g in grants if g.resource == resource]
    old, newer = mine[0], mine[-1]
    _, count = run.protected[resource]
    run.writes.append((resource, count + 1, old.token, newer.acquired_at + timedelta(milliseconds=1)))
    run.protected[resource] = (old.token, count + 1)


def token_reused_after_restart(run):
    """A grant after the restart with a token below one handed out before it: one never seen
    if there is such a number (only the rule across restarts can catch that), else the largest
    token handed out before the restart."""
    if not run.restarts:
        raise ValueError("the run had no restart")
    returned = {op.result for op in run.ops if op.kind in ("acquire", "reacquire") and op.result is not None}
    highest_before = max(op.result for op in run.ops if op.kind == "acquire" and op.result and op.gen == 0)
    token = next((t for t in range(highest_before - 1, 0, -1) if t not in returned), highest_before)
    after = max(op.t1 for op in run.ops if op.t1 is not None)
    fake_grant(run, "self-test:elsewhere", token, after + timedelta(seconds=1), gen=len(run.restarts))


def lease_lost_in_crash(run):
    """A lease that must survive the crash (one the fault injector took just before it) is
    missing from the table afterwards."""
    snapshot = run.restarts[0].snapshot
    snapshot.pop(next(resource for resource in snapshot if ":witness:" in resource))


def unexpected_error(run):
    run.ops.append(Op(INTRUDER, INTRUDER, 0, "renew", "self-test", 1, outcome="aborted", sqlstate="XX000",
                      error="internal error", error_class=UNEXPECTED))


FAULTS = [
    ("a second token granted inside a valid lease", "exclusive", overlapping_grant),
    ("a write with a superseded token accepted", "fencing", stale_write),
    ("a token handed out again after the restart", "tokens", token_reused_after_restart),
    ("a committed unexpired lease missing after the restart", "durable", lease_lost_in_crash),
    ("an unexpected SQLSTATE XX000", "errors", unexpected_error),
]


def copy_run(run):
    """A copy that the faults may change without touching the original (they add operations and
    writes, and change the protected rows and the restart snapshots; nothing changes an Op)."""
    restarts = [replace(r, snapshot=dict(r.snapshot)) for r in run.restarts]
    return replace(run, ops=list(run.ops), writes=list(run.writes), protected=dict(run.protected), restarts=restarts)


def self_test(run, clean_results):
    """Each fault on its own copy of the run: caught if its property reports more violations."""
    outcomes = []
    for description, name, inject in FAULTS:
        broken = copy_run(run)
        try:
            inject(broken)
            caught = len(check(broken)[name].violations) > len(clean_results[name].violations)
        except (ValueError, IndexError, KeyError, StopIteration) as error:  # the run lacked what the fault needs
            description, caught = f"{description} (could not inject: {error!r})", False
        outcomes.append({"fault": description, "property": name, "caught": caught})
    return outcomes
