"""All-or-nothing claims of several resources: lease_acquire_all against sorted advisory locks.

Usage: claim_all.py PORT [SECONDS=10] [OUTPUT_MD]

CLIENTS clients (32; Python threads, a connection each) loop for SECONDS per run. Each claim
names 2 to 8 distinct resources (CLAIM_ALL_MIN, CLAIM_ALL_MAX) drawn at random out of a pool of
POOL (16), in random order, so that the lists of concurrent claims overlap heavily. The
variants, alternating in every round (the order rotated from round to round), each client with
the same random lists in both variants of a round:

  lease     lease_acquire_all(list, holder, '30 s', wait => '5 s'): every resource with its token,
            or no rows (the wait ran out: a timeout). Then one transaction that fences every
            resource (SELECT lease_assert(r, t) for each) and records the hold in claim_holds
            (one row per resource: the claim, the token, acquired_at = the server clock read in
            the acquire statement right after the grant); then one statement that releases
            every lease (lease_release) and sets released_at = the server clock, before that
            statement commits.
  advisory  what an application does without the extension: one transaction that takes
            pg_advisory_xact_lock(hashtext(r)) for every resource, in sorted key order (the only
            thing that keeps these claims from deadlocking), in one statement bounded by
            statement_timeout = 5 s (57014: a timeout), reading the server clock once every lock
            is held (acquired_at); the same record in claim_holds, with released_at = the
            server clock in that insert, right before the commit that releases the locks.

CLAIM_ALL_HOLD_MS (0) adds that many milliseconds of work while every resource is held (in the
fenced transaction; in the advisory lock transaction).

Checks, per run: deadlocks (40P01, in any statement; must be 0), other errors (must be 0),
partial holds (a claim answered with rows for only some of its list, or with a NULL token:
must be 0), answers whose rows are not in the listed order, and overlapping holds: for each
resource, the [acquired_at, released_at] intervals of its holds must be disjoint. That check is
sound for both variants: a lease is granted only after the release of the previous holder has
committed, and an advisory transaction lock is granted only after the previous holder's
transaction committed, and both read released_at before that commit and acquired_at after the
next grant, all on the one server clock. For the leases also: tokens per resource increase
from hold to hold, every release answered true, and no lease is left at the end of a run.

Reported: claims granted per second and resources granted per second (medians of the rounds),
the counts above (totals), acquire latency p50 / p99 of the granted claims (the acquire
statement as the client sees it; for the baseline the lock statement; medians of the rounds'
percentiles), the p99 of the claims of the longest lists, and grants per client (min / max)."""

import os
import random
import sys
import time

import psycopg

from common import print_failures, spread_per_client, Clients, Table, connect, failure_notes, median, ms, percentile, rotate, tally

PORT = int(sys.argv[1])
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
OUTPUT = sys.argv[3] if len(sys.argv) > 3 else None
CLIENTS = int(os.environ.get("CLAIM_ALL_CLIENTS", 32))
POOL = int(os.environ.get("CLAIM_ALL_POOL", 16))
LIST_MIN = int(os.environ.get("CLAIM_ALL_MIN", 2))
LIST_MAX = int(os.environ.get("CLAIM_ALL_MAX", 8))
HOLD_MS = float(os.environ.get("CLAIM_ALL_HOLD_MS", 0))
ROUNDS = int(os.environ.get("LEASE_BENCH_ROUNDS", 3))
WAIT_S = 5
TTL = "30 s"
RESOURCES = [f"claim:{i:02d}" for i in range(POOL)]
VARIANTS = ["lease", "advisory"]
LABELS = {
    "lease": "lease_acquire_all, wait 5 s",
    "advisory": "pg_advisory_xact_lock, sorted, one transaction",
}
assert 1 <= LIST_MIN <= LIST_MAX <= POOL and LIST_MAX <= 16

ACQUIRE_ALL = (
    "SELECT resource, token, clock_timestamp() FROM lease_acquire_all(%s::text[], %s, %s::interval, wait => %s::interval)"
)
FENCE = "SELECT lease_assert(r, t) FROM unnest(%s::text[], %s::bigint[]) AS u(r, t)"
RECORD = (
    "INSERT INTO claim_holds (run, claim, resource, token, acquired_at)"
    " SELECT %s, %s, r, t, %s FROM unnest(%s::text[], %s::bigint[]) AS u(r, t)"
)
RELEASE = (
    "WITH released AS MATERIALIZED (SELECT r, lease_release(r, t) AS ok FROM unnest(%s::text[], %s::bigint[]) AS u(r, t))"
    " UPDATE claim_holds AS h SET released_at = clock_timestamp() FROM released"
    " WHERE h.run = %s AND h.claim = %s AND h.resource = released.r AND released.ok"
)
# The keys sorted in a subquery that is not flattened (OFFSET 0): the aggregate takes the locks
# in that order; clock_timestamp() is read once the aggregate is done, every lock held.
LOCK_SORTED = (
    "SELECT count(pg_advisory_xact_lock(k)), clock_timestamp()"
    " FROM (SELECT DISTINCT hashtext(r) AS k FROM unnest(%s::text[]) AS r ORDER BY k OFFSET 0) AS keys"
)
RECORD_LOCKED = (
    "INSERT INTO claim_holds (run, claim, resource, acquired_at, released_at)"
    " SELECT %s, %s, r, %s, clock_timestamp() FROM unnest(%s::text[]) AS r"
)


def new_stats():
    return {
        "granted": 0, "in_time": 0, "resources_in_time": 0, "deadline": None, "timeouts": 0, "deadlocks": 0,
        "partial": 0, "out_of_order": 0, "release_refused": 0, "errors": {}, "latencies": [], "latencies_longest": [],
    }


def lease_claim(conn, run, claim, holder, names, stats):
    started = time.perf_counter()
    rows = conn.execute(ACQUIRE_ALL, (names, holder, TTL, f"{WAIT_S} s")).fetchall()
    granted_at = time.monotonic()
    elapsed = (time.perf_counter() - started) * 1000
    if not rows:
        stats["timeouts"] += 1
        return
    got = [r for r, _, _ in rows]
    tokens = [t for _, t, _ in rows]
    if sorted(got) != sorted(names) or any(t is None for t in tokens):
        stats["partial"] += 1
        # Give back whatever came, so that the others are not held up for the ttl.
        for r, t in zip(got, tokens):
            if t is not None:
                conn.execute("SELECT lease_release(%s, %s)", (r, t))
        return
    if got != names:
        stats["out_of_order"] += 1
    acquired_at = rows[0][2]
    stats["latencies"].append(elapsed)
    if len(names) == LIST_MAX:
        stats["latencies_longest"].append(elapsed)
    try:
        with conn.transaction():
            conn.execute(FENCE, (got, tokens))
            conn.execute(RECORD, (run, claim, acquired_at, got, tokens))
            if HOLD_MS:
                time.sleep(HOLD_MS / 1000)
        released = conn.execute(RELEASE, (got, tokens, run, claim)).rowcount
    except psycopg.Error:
        for r, t in zip(got, tokens):
            try:
                conn.execute("SELECT lease_release(%s, %s)", (r, t))
            except psycopg.Error:
                pass
        raise
    stats["release_refused"] += len(got) - released
    count_grant(stats, granted_at, len(got))


def advisory_claim(conn, run, claim, holder, names, stats):
    with conn.transaction():
        started = time.perf_counter()
        try:
            acquired_at = conn.execute(LOCK_SORTED, (names,)).fetchone()[1]
        except psycopg.errors.QueryCanceled:
            stats["timeouts"] += 1
            raise _RolledBack()
        granted_at = time.monotonic()
        elapsed = (time.perf_counter() - started) * 1000
        if HOLD_MS:
            time.sleep(HOLD_MS / 1000)
        conn.execute(RECORD_LOCKED, (run, claim, acquired_at, names))
    stats["latencies"].append(elapsed)
    if len(names) == LIST_MAX:
        stats["latencies_longest"].append(elapsed)
    count_grant(stats, granted_at, len(names))


def count_grant(stats, granted_at, resources):
    """Every grant counts for fairness; only those made before the deadline for the rates
    (clients finish the claim in progress at the deadline)."""
    stats["granted"] += 1
    if granted_at <= stats["deadline"]:
        stats["in_time"] += 1
        stats["resources_in_time"] += resources


class _RolledBack(Exception):
    """Rolls the claim's transaction back (psycopg's transaction block) after a timeout."""


def run_variant(variant, run, round_, monitor):
    claim_fn = lease_claim if variant == "lease" else advisory_claim
    options = "" if variant == "lease" else f"-c statement_timeout={WAIT_S}s"
    grace = 4 * WAIT_S + 60

    def body(index, conns, deadline, stats):
        conn = conns[0]
        rng = random.Random(f"{round_}/{index}")  # the same lists for both variants of a round
        holder = f"claimer-{index}"
        stats["deadline"] = deadline
        n = 0
        while time.monotonic() < deadline:
            n += 1
            names = rng.sample(RESOURCES, rng.randint(LIST_MIN, LIST_MAX))
            try:
                claim_fn(conn, run, index * 10_000_000 + n, holder, names, stats)
            except _RolledBack:
                pass
            except psycopg.errors.DeadlockDetected:
                stats["deadlocks"] += 1
            except psycopg.Error as error:
                tally(stats["errors"], error)
                if conn.closed or conn.broken:
                    raise

    runner = Clients(CLIENTS, PORT, SECONDS, grace, options=(options,))
    clients = runner.run(body, new_stats)
    elapsed = SECONDS
    checks = monitor.execute(
        """SELECT
            (SELECT count(*) FROM (
                SELECT acquired_at, max(released_at) OVER (PARTITION BY resource ORDER BY acquired_at, claim
                                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
                FROM claim_holds WHERE run = %(run)s AND released_at IS NOT NULL) AS s
             WHERE acquired_at < before),
            (SELECT count(*) FROM claim_holds WHERE run = %(run)s AND released_at IS NULL),
            (SELECT count(*) FROM (
                SELECT token, lag(token) OVER (PARTITION BY resource ORDER BY acquired_at, claim) AS before
                FROM claim_holds WHERE run = %(run)s AND token IS NOT NULL) AS s
             WHERE token <= before),
            (SELECT count(*) FROM lease.leases)""",
        {"run": run},
    ).fetchone()
    overlapping, unreleased, tokens_not_increasing, leases_left = checks
    errors = {}
    for s in clients:
        for name, count in s["errors"].items():
            errors[name] = errors.get(name, 0) + count
    granted = [s["granted"] for s in clients]
    result = {
        "grants_per_s": sum(s["in_time"] for s in clients) / elapsed,
        "resources_per_s": sum(s["resources_in_time"] for s in clients) / elapsed,
        "timeouts": sum(s["timeouts"] for s in clients),
        "deadlocks": sum(s["deadlocks"] for s in clients),
        "errors": sum(errors.values()) + len(runner.failed),
        "error_names": errors,
        "failed": runner.failed,
        "partial": sum(s["partial"] for s in clients),
        "out_of_order": sum(s["out_of_order"] for s in clients),
        "release_refused": sum(s["release_refused"] for s in clients),
        "overlapping": overlapping,
        "unreleased": unreleased,
        "tokens_not_increasing": tokens_not_increasing,
        "leases_left": leases_left,
        "p50": percentile([v for s in clients for v in s["latencies"]], 0.5),
        "p99": percentile([v for s in clients for v in s["latencies"]], 0.99),
        "p99_longest": percentile([v for s in clients for v in s["latencies_longest"]], 0.99),
        "per_client": granted,
    }
    # Leave nothing behind for the next run (there should be nothing: leases_left says).
    monitor.execute("DELETE FROM lease.leases")
    monitor.execute("CHECKPOINT")
    print(
        f"  {variant:9s} {result['grants_per_s']:7.1f} claims/s  timeouts {result['timeouts']}"
        f"  deadlocks {result['deadlocks']}  errors {result['errors']}  partial {result['partial']}"
        f"  overlapping {overlapping}  acquire p50/p99 {ms(result['p50'])}/{ms(result['p99'])} ms",
        file=sys.stderr,
    )
    print_failures(errors, runner.failed)
    return result


def main():
    monitor = connect(PORT)
    monitor.execute("DROP TABLE IF EXISTS claim_holds")
    monitor.execute(
        "CREATE TABLE claim_holds (run int NOT NULL, claim bigint NOT NULL, resource text NOT NULL, token bigint,"
        " acquired_at timestamptz NOT NULL, released_at timestamptz, PRIMARY KEY (run, claim, resource))"
    )
    monitor.execute("DELETE FROM lease.leases")
    runs = {variant: [] for variant in VARIANTS}
    run = 0
    for round_ in range(ROUNDS):
        order = rotate(VARIANTS, round_)
        print(f"round {round_ + 1}: {' '.join(order)}", file=sys.stderr)
        for variant in order:
            run += 1
            runs[variant].append(run_variant(variant, run, round_, monitor))
    report(runs)


def report(runs):
    table = Table([LABELS[v] for v in VARIANTS])

    def med(key, fmt="{:.1f}"):
        return [fmt.format(median([r[key] for r in runs[v]])) for v in VARIANTS]

    def total(key, only=None):
        return [str(sum(r[key] for r in runs[v])) if only in (None, v) else "-" for v in VARIANTS]

    table.row("claims granted per second", med("grants_per_s"))
    table.row("resources granted per second", med("resources_per_s", "{:.0f}"))
    table.row("claims timed out (no rows after 5 s; 57014 for the baseline)", total("timeouts"))
    table.row("deadlocks (40P01; must be 0)", total("deadlocks"))
    table.row("other errors (must be 0)", total("errors"))
    table.row("partial holds: only some of the list granted (must be 0)", total("partial"))
    table.row("answers not in the listed order", total("out_of_order", "lease"))
    table.row("overlapping holds of a resource (must be 0)", total("overlapping"))
    table.row("tokens not increasing from hold to hold (must be 0)", total("tokens_not_increasing", "lease"))
    table.row("releases refused, holds never released, leases left (must be 0)",
              [f"{sum(r['release_refused'] for r in runs[v])}, {sum(r['unreleased'] for r in runs[v])}, "
               f"{sum(r['leases_left'] for r in runs[v])}" if v == "lease"
               else f"-, {sum(r['unreleased'] for r in runs[v])}, -" for v in VARIANTS])
    table.row("acquire latency p50 / p99 (ms)",
              [f"{ms(median([r['p50'] for r in runs[v]]))} / {ms(median([r['p99'] for r in runs[v]]))}" for v in VARIANTS])
    table.row(f"acquire latency p99, lists of {LIST_MAX} (ms)", [ms(median([r["p99_longest"] for r in runs[v]])) for v in VARIANTS])
    table.row("claims granted per client, min / max (all rounds)",
              spread_per_client(runs, VARIANTS, "per_client"))
    notes = [
        f"{CLIENTS} clients (a thread and a connection each), each claim {LIST_MIN} to {LIST_MAX} distinct resources"
        f" drawn at random out of {POOL}, in random order (the same lists for both variants of a round);"
        f" {'no work' if not HOLD_MS else f'{HOLD_MS:g} ms of work'} while holding;"
        f" {ROUNDS} rounds of {SECONDS:g} s per variant, alternating; rates and latencies are medians of the"
        f" rounds, counts are totals; synchronous_commit = {os.environ.get('COORD_SYNC', 'on')}.",
    ]
    notes += failure_notes(runs, VARIANTS)
    table.write(notes, OUTPUT)


if __name__ == "__main__":
    main()
