"""Readers and writers on one resource: shared and exclusive leases against PostgreSQL's
session-level advisory locks.

Usage: readers_writers.py PORT [SECONDS=10] [OUTPUT_MD]

Needs the modes of lease_acquire (mode text DEFAULT 'exclusive'): mode => 'shared' grants a
lease that other shared leases of the resource may hold at the same time, and no exclusive
one; each with its own token, released with lease_release and fenced with lease_check. Without
it the script stops at once with an error saying so.

READERS readers (30) and WRITERS writers (2), Python threads with a connection each, loop for
SECONDS per run on one resource (a row of rw_data):

  lease     reader: SELECT clock_timestamp(), lease_acquire('rw', holder, '30 s', wait => '10 s',
            mode => 'shared'), clock_timestamp(); a fenced read (SELECT version FROM rw_data
            WHERE id = 1 AND lease_check('rw', token)); READ_MS (1 ms) of work holding it;
            SELECT clock_timestamp(), lease_release('rw', token).
            writer: the same with mode => 'exclusive', a fenced write (UPDATE rw_data SET
            version = version + 1 WHERE id = 1 AND lease_check(...)), WRITE_MS (1 ms) of work;
            then WRITER_PAUSE_MS (20 ms) before its next write.
  advisory  the same cycles with pg_advisory_lock_shared(hashtext('rw')) / pg_advisory_lock
            (session-level, blocking, lock_timeout = 10 s: 55P03 is a timeout) and
            pg_advisory_unlock_shared / pg_advisory_unlock, the read and write unfenced.

Every grant's [granted_at, released_at] on the server clock (granted_at read in the acquire
statement after the grant, released_at in the release statement before the release takes
effect) is checked afterwards: no writer may overlap any other holder (conflicts: must be 0;
sound, because the next conflicting grant can only come after that release took effect), and
the most readers holding at one instant is reported.

Reported: the writers' wait (their acquire statement as the client sees it) p50 / p99 / max:
bounded means writers are not starved by the stream of readers; writes per second and writers'
timeouts (no grant in 10 s); reads per second, readers' wait p50 / p99, readers' timeouts;
errors. Rates and latencies are medians of the rounds (the maximum: the largest of all rounds),
counts totals."""

import os
import sys
import time

import psycopg

from common import (print_failures, spread_per_client, Clients, Table, connect, failure_notes, median, ms, percentile, probe, require_arguments,
                    rotate, tally)

PORT = int(sys.argv[1])
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
OUTPUT = sys.argv[3] if len(sys.argv) > 3 else None
READERS = int(os.environ.get("RW_READERS", 30))
WRITERS = int(os.environ.get("RW_WRITERS", 2))
READ_MS = float(os.environ.get("RW_READ_MS", 1))
WRITE_MS = float(os.environ.get("RW_WRITE_MS", 1))
WRITER_PAUSE_MS = float(os.environ.get("RW_WRITER_PAUSE_MS", 20))
ROUNDS = int(os.environ.get("LEASE_BENCH_ROUNDS", 3))
WAIT_S = 10
TTL = "30 s"
RESOURCE = "rw"
VARIANTS = ["lease", "advisory"]
LABELS = {
    "lease": "shared / exclusive leases, wait 10 s",
    "advisory": "pg_advisory_lock_shared / pg_advisory_lock",
}

LEASE_ACQUIRE = (
    "SELECT clock_timestamp(), lease_acquire(%s, %s, %s::interval, wait => %s::interval, mode => %s), clock_timestamp()"
)
LEASE_READ = "SELECT version FROM rw_data WHERE id = 1 AND lease_check(%s, %s)"
LEASE_WRITE = "UPDATE rw_data SET version = version + 1 WHERE id = 1 AND lease_check(%s, %s)"
LEASE_RELEASE = "SELECT clock_timestamp(), lease_release(%s, %s)"
LOCK = {
    "shared": "SELECT clock_timestamp(), pg_advisory_lock_shared(hashtext(%s)), clock_timestamp()",
    "exclusive": "SELECT clock_timestamp(), pg_advisory_lock(hashtext(%s)), clock_timestamp()",
}
UNLOCK = {
    "shared": "SELECT clock_timestamp(), pg_advisory_unlock_shared(hashtext(%s))",
    "exclusive": "SELECT clock_timestamp(), pg_advisory_unlock(hashtext(%s))",
}
READ = "SELECT version FROM rw_data WHERE id = 1"
WRITE = "UPDATE rw_data SET version = version + 1 WHERE id = 1"


def new_stats():
    return {"granted": 0, "in_time": 0, "deadline": None, "timeouts": 0, "refused": 0, "errors": {}, "latencies": [], "holds": []}


def lease_cycle(conn, index, mode, stats):
    started = time.perf_counter()
    _, token, granted_at = conn.execute(LEASE_ACQUIRE, (RESOURCE, f"{mode}-{index}", TTL, f"{WAIT_S} s", mode)).fetchone()
    granted_mono = time.monotonic()
    elapsed = (time.perf_counter() - started) * 1000
    if token is None:
        stats["timeouts"] += 1
        return
    stats["latencies"].append(elapsed)
    try:
        if mode == "shared":
            fenced = conn.execute(LEASE_READ, (RESOURCE, token)).fetchone() is not None
            time.sleep(READ_MS / 1000)
        else:
            fenced = conn.execute(LEASE_WRITE, (RESOURCE, token)).rowcount == 1
            time.sleep(WRITE_MS / 1000)
        released_at, ok = conn.execute(LEASE_RELEASE, (RESOURCE, token)).fetchone()
    except psycopg.Error:
        try:
            conn.execute("SELECT lease_release(%s, %s)", (RESOURCE, token))
        except psycopg.Error:
            pass
        raise
    stats["refused"] += (not fenced) + (not ok)
    count_grant(stats, granted_mono)
    stats["holds"].append((granted_at, released_at))


def advisory_cycle(conn, index, mode, stats):
    started = time.perf_counter()
    try:
        _, _, granted_at = conn.execute(LOCK[mode], (RESOURCE,)).fetchone()
    except psycopg.errors.LockNotAvailable:
        stats["timeouts"] += 1
        return
    granted_mono = time.monotonic()
    stats["latencies"].append((time.perf_counter() - started) * 1000)
    try:
        if mode == "shared":
            conn.execute(READ).fetchone()
            time.sleep(READ_MS / 1000)
        else:
            conn.execute(WRITE)
            time.sleep(WRITE_MS / 1000)
        released_at, ok = conn.execute(UNLOCK[mode], (RESOURCE,)).fetchone()
    except psycopg.Error:
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            pass
        raise
    stats["refused"] += not ok
    count_grant(stats, granted_mono)
    stats["holds"].append((granted_at, released_at))


def count_grant(stats, granted_at):
    """Every grant counts for fairness; only those made before the deadline for the rates."""
    stats["granted"] += 1
    stats["in_time"] += granted_at <= stats["deadline"]


def check(readers, writers):
    """(conflicts, most readers at one instant): a conflict is a grant made while a writer
    holds, or a writer's grant while anyone holds; an interval that ends when another starts
    does not overlap it."""
    events = sorted(
        [(g, 1, "r") for g, _ in readers] + [(r, 0, "r") for _, r in readers]
        + [(g, 1, "w") for g, _ in writers] + [(r, 0, "w") for _, r in writers]
    )
    holding = {"r": 0, "w": 0}
    conflicts = most_readers = 0
    for _, start, kind in events:
        if start:
            if holding["w"] or (kind == "w" and holding["r"]):
                conflicts += 1
            holding[kind] += 1
        else:
            holding[kind] -= 1
        most_readers = max(most_readers, holding["r"])
    return conflicts, most_readers


def run_variant(variant, monitor):
    cycle = lease_cycle if variant == "lease" else advisory_cycle
    options = "" if variant == "lease" else f"-c lock_timeout={WAIT_S}s"

    def body(index, conns, deadline, stats):
        conn = conns[0]
        writer = index >= READERS
        mode = "exclusive" if writer else "shared"
        stats["deadline"] = deadline
        while time.monotonic() < deadline:
            try:
                cycle(conn, index, mode, stats)
            except psycopg.Error as error:
                tally(stats["errors"], error)
                if conn.closed or conn.broken:
                    raise
            if writer:
                time.sleep(WRITER_PAUSE_MS / 1000)

    runner = Clients(READERS + WRITERS, PORT, SECONDS, grace=2 * WAIT_S + 60, options=(options,))
    clients = runner.run(body, new_stats)
    readers, writers = clients[:READERS], clients[READERS:]
    conflicts, most_readers = check([h for s in readers for h in s["holds"]], [h for s in writers for h in s["holds"]])
    errors = {}
    for s in clients:
        for name, count in s["errors"].items():
            errors[name] = errors.get(name, 0) + count
    writer_waits = [v for s in writers for v in s["latencies"]]
    reader_waits = [v for s in readers for v in s["latencies"]]
    result = {
        "writes_per_s": sum(s["in_time"] for s in writers) / SECONDS,
        "reads_per_s": sum(s["in_time"] for s in readers) / SECONDS,
        "writer_p50": percentile(writer_waits, 0.5),
        "writer_p99": percentile(writer_waits, 0.99),
        "writer_max": max(writer_waits, default=float("nan")),
        "reader_p50": percentile(reader_waits, 0.5),
        "reader_p99": percentile(reader_waits, 0.99),
        "writer_timeouts": sum(s["timeouts"] for s in writers),
        "reader_timeouts": sum(s["timeouts"] for s in readers),
        "conflicts": conflicts,
        "most_readers": most_readers,
        "refused": sum(s["refused"] for s in clients),
        "errors": sum(errors.values()) + len(runner.failed),
        "error_names": errors,
        "failed": runner.failed,
        "per_reader": [s["granted"] for s in readers],
        "leases_left": monitor.execute("SELECT count(*) FROM lease.leases WHERE resource = %s", (RESOURCE,)).fetchone()[0],
    }
    monitor.execute("DELETE FROM lease.leases")
    monitor.execute("CHECKPOINT")
    print(
        f"  {variant:9s} writes/s {result['writes_per_s']:6.1f}  writer wait p50/p99/max {ms(result['writer_p50'])}/"
        f"{ms(result['writer_p99'])}/{ms(result['writer_max'])} ms  reads/s {result['reads_per_s']:7.1f}"
        f"  conflicts {conflicts}  most readers {most_readers}  timeouts {result['writer_timeouts']}+{result['reader_timeouts']}"
        f"  errors {result['errors']}",
        file=sys.stderr,
    )
    print_failures(errors, runner.failed)
    return result


def main():
    monitor = connect(PORT)
    require_arguments(monitor, "lease_acquire", ["mode"], "shared leases")
    monitor.execute("DELETE FROM lease.leases")
    probe(
        monitor,
        "SELECT lease_release(%s, lease_acquire(%s, 'probe', '1 s', mode => 'shared'))",
        ("rw:probe", "rw:probe"),
        "a shared lease (lease_acquire(..., mode => 'shared'))",
    )
    monitor.execute("DROP TABLE IF EXISTS rw_data")
    monitor.execute("CREATE TABLE rw_data (id int PRIMARY KEY, version bigint NOT NULL)")
    monitor.execute("INSERT INTO rw_data VALUES (1, 0)")
    runs = {variant: [] for variant in VARIANTS}
    for round_ in range(ROUNDS):
        order = rotate(VARIANTS, round_)
        print(f"round {round_ + 1}: {' '.join(order)}", file=sys.stderr)
        for variant in order:
            runs[variant].append(run_variant(variant, monitor))
    report(runs)


def report(runs):
    table = Table([LABELS[v] for v in VARIANTS])

    def med(key, fmt="{:.1f}"):
        return [fmt.format(median([r[key] for r in runs[v]])) for v in VARIANTS]

    def total(key):
        return [str(sum(r[key] for r in runs[v])) for v in VARIANTS]

    table.row("writers' wait p50 / p99 (ms)",
              [f"{ms(median([r['writer_p50'] for r in runs[v]]))} / {ms(median([r['writer_p99'] for r in runs[v]]))}"
               for v in VARIANTS])
    table.row("writers' wait, max of all rounds (ms)", [ms(max(r["writer_max"] for r in runs[v])) for v in VARIANTS])
    table.row("writes per second", med("writes_per_s"))
    table.row("writers' timeouts (no grant within 10 s: starved)", total("writer_timeouts"))
    table.row("reads per second", med("reads_per_s", "{:.0f}"))
    table.row("readers' wait p50 / p99 (ms)",
              [f"{ms(median([r['reader_p50'] for r in runs[v]]))} / {ms(median([r['reader_p99'] for r in runs[v]]))}"
               for v in VARIANTS])
    table.row("readers' timeouts", total("reader_timeouts"))
    table.row("most readers holding at one instant", [str(max(r["most_readers"] for r in runs[v])) for v in VARIANTS])
    table.row("conflicts: a writer overlapping another holder (must be 0)", total("conflicts"))
    table.row("fences or releases refused (must be 0)", total("refused"))
    table.row("leases left after the run (must be 0)",
              [str(sum(r["leases_left"] for r in runs[v])) if v == "lease" else "-" for v in VARIANTS])
    table.row("errors (must be 0)", total("errors"))
    table.row("reads per reader, min / max (all rounds)",
              spread_per_client(runs, VARIANTS, "per_reader"))
    notes = [
        f"{READERS} readers and {WRITERS} writers (a thread and a connection each) on one resource; a read holds"
        f" {READ_MS:g} ms, a write {WRITE_MS:g} ms, a writer pauses {WRITER_PAUSE_MS:g} ms between writes;"
        f" {ROUNDS} rounds of {SECONDS:g} s per variant, alternating; rates and latencies are medians of the"
        f" rounds, counts are totals; synchronous_commit = {os.environ.get('COORD_SYNC', 'on')}.",
    ]
    notes += failure_notes(runs, VARIANTS)
    table.write(notes, OUTPUT)


if __name__ == "__main__":
    main()
