"""A counting semaphore: 32 clients on one resource of capacity 4, the extension's permits against
a hand-written semaphore of 4 slot rows.

Usage: semaphore.py PORT [SECONDS=10] [OUTPUT_MD]

Needs the permits of lease_acquire (mode text DEFAULT 'exclusive', capacity integer DEFAULT
NULL): lease_acquire(resource, holder, ttl, wait => ..., capacity => 4) grants one of 4 permits
of the resource, each with a token of its own, released with lease_release(resource, token)
and fenced with lease_assert(resource, token). Without them the script stops at once with an
error saying so.

CLIENTS clients (32; Python threads, a connection each) loop for SECONDS per run, each cycle:
take a permit, record the hold with a fenced insert, work HOLD_MS (5 ms, client side, holding
the permit), release it. The variants, alternating in every round (the order rotated from
round to round):

  lease    SELECT clock_timestamp(), lease_acquire('sem', holder, '30 s', wait => '10 s',
           capacity => 4), clock_timestamp(): the time the call started waiting (read just
           before it queues), the token, the time it was granted. Then one transaction:
           lease_assert, and INSERT INTO sem_holds (token, arrived_at, granted_at, fenced_at =
           clock_timestamp()). After the work, one statement releases the permit and sets
           released_at = clock_timestamp() (before it commits) if the release answered true.
  slots    what an application does without the extension: 4 rows in sem_slots; a transaction
           held for the whole cycle reads the clock once (arrived_at), then claims a free slot
           with SELECT ... FOR UPDATE SKIP LOCKED, inserting the hold (granted_at =
           clock_timestamp() once the row is locked) in the same statement; while no slot is
           free it polls again every POLL_MS (10 ms), up to 10 s (then a timeout). After the work
           it sets released_at and commits, which frees the slot.

Measured, per run, from the holds recorded on the one server clock:
  grants per second;
  the largest number of holders at one instant (must be at most 4), from the [granted_at,
    released_at] intervals: sound, because a permit or a slot can only be taken again after the
    commit that freed it, and released_at is read before that commit, granted_at after the grant;
  permits in use on average (the holds' total time / the run's time);
  FIFO: the order in which calls started waiting (arrived_at) against the order of their
    grants (the extension: token order, which is the order of its grants; the slots: granted_at
    order), among the calls that started waiting after the first 0.5 s of the run (the clients
    all start at one instant): grants that went ahead of a call that had started waiting more
    than 0.1 ms (and more than 1 ms) earlier, and such pairs (inversions). arrived_at is read
    just before the call's first attempt, so calls that start within a millisecond or so of
    each other on a busy machine can join the queue in another order than their clocks say:
    a few such inversions are noise, not unfairness;
  handover latency: each grant takes the permit released longest ago among those not taken
    again yet; for a call that was already waiting when that permit was released, from
    released_at to its granted_at (includes the release's commit and the next holder's wake-up);
  the acquire's latency (client side), timeouts, errors, refused releases, grants per client.
Rates and latencies are medians of the rounds, counts totals, the largest number of holders the
largest of all rounds."""

import datetime
import os
import sys
import time

import psycopg

from common import (print_failures, spread_per_client, Clients, Table, busy_time, connect, failure_notes, fifo_inversions, handovers, max_overlap,
                    median, ms, percentile, probe, require_arguments, rotate, tally)

PORT = int(sys.argv[1])
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
OUTPUT = sys.argv[3] if len(sys.argv) > 3 else None
CLIENTS = int(os.environ.get("SEMAPHORE_CLIENTS", 32))
CAPACITY = int(os.environ.get("SEMAPHORE_CAPACITY", 4))
HOLD_MS = float(os.environ.get("SEMAPHORE_HOLD_MS", 5))
POLL_MS = float(os.environ.get("SEMAPHORE_POLL_MS", 10))
ROUNDS = int(os.environ.get("LEASE_BENCH_ROUNDS", 3))
FIFO_WARMUP = 0.5
WAIT_S = 10
TTL = "30 s"
VARIANTS = ["lease", "slots"]
LABELS = {
    "lease": f"lease_acquire(..., capacity => {CAPACITY}), wait 10 s",
    "slots": f"{CAPACITY} slot rows, FOR UPDATE SKIP LOCKED, polling every {POLL_MS:g} ms",
}

ACQUIRE = (
    "SELECT clock_timestamp(), lease_acquire(%s, %s, %s::interval, wait => %s::interval, capacity => %s),"
    " clock_timestamp()"
)
RECORD = (
    "INSERT INTO sem_holds (run, client, token, arrived_at, granted_at, fenced_at)"
    " VALUES (%s, %s, %s, %s, %s, clock_timestamp()) RETURNING id"
)
RELEASE = (
    "WITH released AS MATERIALIZED (SELECT lease_release(%s, %s) AS ok)"
    " UPDATE sem_holds SET released_at = clock_timestamp() FROM released WHERE released.ok AND id = %s"
)
CLAIM_SLOT = (
    "WITH free AS (SELECT slot FROM sem_slots ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)"
    " INSERT INTO sem_holds (run, client, slot, arrived_at, granted_at)"
    " SELECT %s, %s, slot, %s, clock_timestamp() FROM free RETURNING id"
)


class _TimedOut(Exception):
    """Rolls the polling transaction back after the wait ran out."""


def new_stats():
    return {"granted": 0, "in_time": 0, "deadline": None, "timeouts": 0, "release_refused": 0, "errors": {}, "latencies": []}


def lease_cycle(conn, run, resource, index, stats):
    started = time.perf_counter()
    arrived, token, granted_at = conn.execute(ACQUIRE, (resource, f"sem-{index}", TTL, f"{WAIT_S} s", CAPACITY)).fetchone()
    granted_mono = time.monotonic()
    elapsed = (time.perf_counter() - started) * 1000
    if token is None:
        stats["timeouts"] += 1
        return
    stats["latencies"].append(elapsed)
    try:
        with conn.transaction():
            conn.execute("SELECT lease_assert(%s, %s)", (resource, token))
            hold = conn.execute(RECORD, (run, index, token, arrived, granted_at)).fetchone()[0]
        time.sleep(HOLD_MS / 1000)
        released = conn.execute(RELEASE, (resource, token, hold)).rowcount
    except psycopg.Error:
        try:
            conn.execute("SELECT lease_release(%s, %s)", (resource, token))
        except psycopg.Error:
            pass
        raise
    stats["release_refused"] += 1 - released
    count_grant(stats, granted_mono)


def slots_cycle(conn, run, resource, index, stats):
    with conn.transaction():
        arrived = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        started = time.perf_counter()
        while True:
            row = conn.execute(CLAIM_SLOT, (run, index, arrived)).fetchone()
            if row is not None:
                break
            if time.perf_counter() - started > WAIT_S:
                stats["timeouts"] += 1
                raise _TimedOut()
            time.sleep(POLL_MS / 1000)
        granted_mono = time.monotonic()
        stats["latencies"].append((time.perf_counter() - started) * 1000)
        time.sleep(HOLD_MS / 1000)
        conn.execute("UPDATE sem_holds SET released_at = clock_timestamp() WHERE id = %s", (row[0],))
    count_grant(stats, granted_mono)


def count_grant(stats, granted_at):
    """Every grant counts for fairness; only those made before the deadline for the rate."""
    stats["granted"] += 1
    stats["in_time"] += granted_at <= stats["deadline"]


def run_variant(variant, run, monitor):
    cycle = lease_cycle if variant == "lease" else slots_cycle
    # A resource of its own for each run: its first permit request declares its capacity, which
    # the resource keeps (a capacity declared earlier, by another run of this script on the same
    # server with another SEMAPHORE_CAPACITY, would otherwise govern).
    resource = f"sem:capacity-{CAPACITY}:run-{run}"

    def body(index, conns, deadline, stats):
        conn = conns[0]
        stats["deadline"] = deadline
        while time.monotonic() < deadline:
            try:
                cycle(conn, run, resource, index, stats)
            except _TimedOut:
                pass
            except psycopg.Error as error:
                tally(stats["errors"], error)
                if conn.closed or conn.broken:
                    raise

    runner = Clients(CLIENTS, PORT, SECONDS, grace=2 * WAIT_S + 60)
    clients = runner.run(body, new_stats)
    holds = monitor.execute(
        "SELECT arrived_at, granted_at, released_at, token FROM sem_holds WHERE run = %s ORDER BY id", (run,)
    ).fetchall()
    released = [(a, g, r) for a, g, r, _ in holds if r is not None]
    unreleased = len(holds) - len(released)
    # FIFO among the calls that started waiting after the first FIFO_WARMUP seconds (all the
    # clients start at the same instant, and the order of 32 simultaneous first calls is noise).
    since = min((a for a, _, _, _ in holds), default=None)
    since = since and since + datetime.timedelta(seconds=FIFO_WARMUP)
    if variant == "lease":
        order = [(t, a.timestamp()) for a, _, _, t in holds if a >= since]
    else:
        order = [(g, a.timestamp()) for a, g, _, _ in holds if a >= since]
    ahead, pairs = fifo_inversions(order, 0.0001)
    ahead_1ms, _ = fifo_inversions(order, 0.001)
    handover = handovers(released, CAPACITY)
    errors = {}
    for s in clients:
        for name, count in s["errors"].items():
            errors[name] = errors.get(name, 0) + count
    latencies = [v for s in clients for v in s["latencies"]]
    leases_left = monitor.execute("SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)).fetchone()[0]
    result = {
        "grants_per_s": sum(s["in_time"] for s in clients) / SECONDS,
        "max_holders": max_overlap([(g, r) for _, g, r in released]),
        "in_use": busy_time([(g, r) for _, g, r in released]) / SECONDS,
        "grants": len(holds),
        "fifo_calls": len(order),
        "ahead": ahead,
        "ahead_1ms": ahead_1ms,
        "pairs": pairs,
        "handover_p50": percentile(handover, 0.5),
        "handover_p99": percentile(handover, 0.99),
        "handovers": len(handover),
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "timeouts": sum(s["timeouts"] for s in clients),
        "errors": sum(errors.values()) + len(runner.failed),
        "error_names": errors,
        "failed": runner.failed,
        "release_refused": sum(s["release_refused"] for s in clients),
        "unreleased": unreleased,
        "leases_left": leases_left,
        "per_client": [s["granted"] for s in clients],
    }
    monitor.execute("DELETE FROM lease.leases")
    monitor.execute("CHECKPOINT")
    print(
        f"  {variant:6s} {result['grants_per_s']:7.1f} grants/s  max holders {result['max_holders']}"
        f"  FIFO ahead {ahead} ({ahead_1ms} by > 1 ms) of {len(order)}  handover p50/p99 {ms(result['handover_p50'])}/{ms(result['handover_p99'])} ms"
        f"  timeouts {result['timeouts']}  errors {result['errors']}",
        file=sys.stderr,
    )
    print_failures(errors, runner.failed)
    return result


def main():
    monitor = connect(PORT)
    require_arguments(monitor, "lease_acquire", ["capacity"], "the permits of a counting semaphore")
    monitor.execute("DELETE FROM lease.leases")
    probe(
        monitor,
        "SELECT lease_release(%s, lease_acquire(%s, 'probe', '1 s', capacity => %s))",
        ("sem:probe", "sem:probe", CAPACITY),
        f"a permit of capacity {CAPACITY} (lease_acquire(..., capacity => {CAPACITY}))",
    )
    monitor.execute("DROP TABLE IF EXISTS sem_holds, sem_slots")
    monitor.execute(
        "CREATE TABLE sem_holds (id bigserial PRIMARY KEY, run int NOT NULL, client int NOT NULL, token bigint,"
        " slot int, arrived_at timestamptz NOT NULL, granted_at timestamptz NOT NULL, fenced_at timestamptz,"
        " released_at timestamptz)"
    )
    monitor.execute("CREATE INDEX ON sem_holds (run)")
    monitor.execute("CREATE TABLE sem_slots (slot int PRIMARY KEY)")
    monitor.execute("INSERT INTO sem_slots SELECT generate_series(1, %s)", (CAPACITY,))
    runs = {variant: [] for variant in VARIANTS}
    run = 0
    for round_ in range(ROUNDS):
        order = rotate(VARIANTS, round_)
        print(f"round {round_ + 1}: {' '.join(order)}", file=sys.stderr)
        for variant in order:
            run += 1
            runs[variant].append(run_variant(variant, run, monitor))
    report(runs)


def report(runs):
    table = Table([LABELS[v] for v in VARIANTS])

    def med(key, fmt="{:.1f}"):
        return [fmt.format(median([r[key] for r in runs[v]])) for v in VARIANTS]

    def total(key):
        return [str(sum(r[key] for r in runs[v])) for v in VARIANTS]

    table.row("grants per second", med("grants_per_s"))
    table.row(f"most holders at one instant (must be at most {CAPACITY})",
              [str(max(r["max_holders"] for r in runs[v])) for v in VARIANTS])
    table.row("permits in use on average", med("in_use", "{:.2f}"))
    table.row(f"FIFO: grants that went ahead of a call waiting since > 0.1 ms / > 1 ms earlier (after the first {FIFO_WARMUP:g} s)",
              [f"{sum(r['ahead'] for r in runs[v])} / {sum(r['ahead_1ms'] for r in runs[v])} of {sum(r['fifo_calls'] for r in runs[v])}"
               for v in VARIANTS])
    table.row("FIFO: inverted pairs, > 0.1 ms (waiting order against grant order)", total("pairs"))
    table.row("handover latency p50 / p99 (ms): release to the next waiter's grant",
              [f"{ms(median([r['handover_p50'] for r in runs[v]]))} / {ms(median([r['handover_p99'] for r in runs[v]]))}"
               for v in VARIANTS])
    table.row("acquire latency p50 / p99 (ms)",
              [f"{ms(median([r['p50'] for r in runs[v]]))} / {ms(median([r['p99'] for r in runs[v]]))}" for v in VARIANTS])
    table.row("timeouts (no permit within 10 s)", total("timeouts"))
    table.row("errors (must be 0)", total("errors"))
    table.row("releases refused, holds never released, leases left (must be 0)",
              [f"{sum(r['release_refused'] for r in runs[v])}, {sum(r['unreleased'] for r in runs[v])}, "
               f"{sum(r['leases_left'] for r in runs[v])}" if v == "lease"
               else f"-, {sum(r['unreleased'] for r in runs[v])}, -" for v in VARIANTS])
    table.row("grants per client, min / max (all rounds)",
              spread_per_client(runs, VARIANTS, "per_client"))
    notes = [
        f"{CLIENTS} clients (a thread and a connection each) on one resource of capacity {CAPACITY}, each holding"
        f" its permit for {HOLD_MS:g} ms of work; {ROUNDS} rounds of {SECONDS:g} s per variant, alternating;"
        f" rates and latencies are medians of the rounds, counts are totals;"
        f" synchronous_commit = {os.environ.get('COORD_SYNC', 'on')}.",
    ]
    notes += failure_notes(runs, VARIANTS)
    table.write(notes, OUTPUT)


if __name__ == "__main__":
    main()
