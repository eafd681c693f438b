"""Heartbeat benchmark: what keeping many leases alive costs the server, renewed one by one
against renewed through one lifeline per holder.

Usage: heartbeat.py PORT [OUTPUT_MD]

HOLDERS holders (Python threads, one connection each) hold LEASES leases between them, with a
ttl of TTL seconds renewed every TTL / 3 seconds. Each phase keeps them alive for SECONDS
seconds, measured after one renewal period of warm-up (every lease has been renewed to TTL
once by then); the holders' renewals are spread evenly over the period. The phases (LIFELINES_
PHASES, in this order in the first round, rotated in the next ones):

  batch     per-lease renewals as an application does them today at best: each holder renews
            all its leases with one statement per period,
                SELECT count(*) FILTER (WHERE lease_renew(r, t, ttl)) FROM unnest($1, $2) AS u(r, t)
            one round trip, one transaction and one commit for its leases, instead of one per
            lease (lease_renew moves one row per call, so the server's work per lease stays);
  pipeline  (not run by default) the same renewals as one call per lease, pipelined (psycopg's
            pipeline mode) in one transaction per holder and period: what a client library
            that renews each lease it holds does at best;
  lifeline  one lifeline per holder (lease_lifeline_open), its leases attached to it
            (lease_acquire(..., lifeline => id)), one lease_lifeline_renew per holder and period;
  idle      the same leases, acquired with a 1 hour ttl and never renewed: the floor of the
            server's own work (checkpointer, WAL writer, the expiry worker's naps, ...).

For each phase over the same wall time: renew calls (function calls) and statements per second,
the server's CPU time per second (utime + stime of the postmaster and every process it started,
from /proc/PID/stat, with cutime + cstime of the postmaster for its children that exited
meanwhile: autovacuum workers), WAL bytes per second (pg_current_wal_lsn), the renewals'
latency and lateness, and whether any lease ended: renewals refused, `expired` events received
on lease_events (a listener, for the whole phase), lease.stats' expired counters, and at the
end how many of the leases are still held, with the token they were granted.

Environment: LIFELINES_HOLDERS (100), LIFELINES_LEASES (100000), LIFELINES_TTL (10, seconds),
LIFELINES_SECONDS (30), LIFELINES_PHASES ("batch lifeline idle"), LIFELINES_ROUNDS (1; with
more, the medians of the rounds are reported). Prints one Markdown table (and writes it to
OUTPUT_MD)."""

import concurrent.futures
import datetime
import json
import os
import resource as rusage
import statistics
import sys
import threading
import time

import psycopg

PORT = int(sys.argv[1])
OUTPUT = sys.argv[2] if len(sys.argv) > 2 else None
HOLDERS = int(os.environ.get("LIFELINES_HOLDERS", 100))
LEASES = int(os.environ.get("LIFELINES_LEASES", 100_000))
TTL = float(os.environ.get("LIFELINES_TTL", 10))
SECONDS = float(os.environ.get("LIFELINES_SECONDS", 30))
PHASES = os.environ.get("LIFELINES_PHASES", "batch lifeline idle").split()
ROUNDS = int(os.environ.get("LIFELINES_ROUNDS", 1))
# synchronous_commit of the holders' sessions: with on, each renewal's commit waits for a WAL
# flush, whose system time is most of a lifeline's heartbeat.
SYNC = os.environ.get("LIFELINES_SYNC", "on")
PERIOD = TTL / 3
BATCH = 500  # leases acquired per statement in the set-up
CLK_TCK = os.sysconf("SC_CLK_TCK")
TTL_INTERVAL = datetime.timedelta(seconds=TTL)
SETUP_TTL = datetime.timedelta(hours=1)
LABELS = {
    "batch": "per-lease renewals, one statement per holder",
    "pipeline": "per-lease renewals, pipelined calls",
    "lifeline": "one lifeline per holder",
    "idle": "idle (never renewed)",
}
assert all(phase in LABELS for phase in PHASES), f"unknown phase in {PHASES}"
assert LEASES >= HOLDERS > 0


def connect():
    return psycopg.connect(
        f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres options='-c synchronous_commit={SYNC}'",
        autocommit=True,
    )


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


def server_cpu_seconds(postmaster):
    """CPU seconds used so far by the server: the postmaster, its live children, and (through
    the postmaster's cutime and cstime) its children that have exited. Two readings: utime +
    stime from /proc/PID/stat (whole clock ticks, each process's truncated), and the run time
    of /proc/PID/schedstat (nanoseconds, what utime + stime are scaled to) for the live
    processes, with the same cutime + cstime for the exited ones."""
    ticks, nanoseconds = 0, 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            pid, ppid = int(name), int(fields[1])
            if pid != postmaster and ppid != postmaster:
                continue
            with open(f"/proc/{name}/schedstat") as f:
                run_ns = int(f.read().split()[0])
        except OSError:
            continue  # exited meanwhile: its time is in the postmaster's cutime now
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        ticks += utime + stime
        nanoseconds += run_ns
        if pid == postmaster:
            ticks += cutime + cstime
            nanoseconds += (cutime + cstime) * 1_000_000_000 // CLK_TCK
    return ticks / CLK_TCK, nanoseconds / 1e9


def client_cpu_seconds():
    usage = rusage.getrusage(rusage.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Holder:
    """One holder: its connection, its leases, and (in a phase with one) its lifeline."""

    def __init__(self, phase, index, count):
        self.phase, self.index, self.count = phase, index, count
        self.name = f"hb-{phase}-{index}"
        self.conn = connect()
        self.lifeline = None
        self.resources, self.tokens = [], []
        # Renewals whose scheduled time fell in the measured window.
        self.calls = self.statements = self.refused = 0
        self.latencies, self.lateness = [], []
        self.errors = []

    def set_up(self):
        if self.phase == "lifeline":
            self.lifeline = one(self.conn, "SELECT lease_lifeline_open(%s, %s)", (self.name, SETUP_TTL))
        for start in range(0, self.count, BATCH):
            names = [f"hb:{self.phase}:{self.index}:{i:06d}" for i in range(start, min(start + BATCH, self.count))]
            if self.lifeline is None:
                sql = "SELECT r, lease_acquire(r, %s, %s) FROM unnest(%s::text[]) AS r"
                rows = self.conn.execute(sql, (self.name, SETUP_TTL, names)).fetchall()
            else:
                sql = "SELECT r, lease_acquire(r, %s, lifeline => %s) FROM unnest(%s::text[]) AS r"
                rows = self.conn.execute(sql, (self.name, self.lifeline, names)).fetchall()
            assert all(token is not None for _, token in rows), "a set-up acquire was refused"
            self.resources += [r for r, _ in rows]
            self.tokens += [t for _, t in rows]

    def renew_once(self):
        """One period's renewals; returns (function calls, refused)."""
        if self.phase == "batch":
            ok = one(
                self.conn,
                "SELECT count(*) FILTER (WHERE lease_renew(r, t, %s)) FROM unnest(%s::text[], %s::bigint[]) AS u(r, t)",
                (TTL_INTERVAL, self.resources, self.tokens),
            )
            return self.count, self.count - ok
        if self.phase == "pipeline":
            with self.conn.transaction(), self.conn.pipeline():
                cursors = [
                    self.conn.execute("SELECT lease_renew(%s, %s, %s)", (r, t, TTL_INTERVAL))
                    for r, t in zip(self.resources, self.tokens)
                ]
            ok = sum(1 for cursor in cursors if cursor.fetchone()[0])
            return self.count, self.count - ok
        try:
            one(self.conn, "SELECT lease_lifeline_renew(%s, %s)", (self.lifeline, TTL_INTERVAL))
            return 1, 0
        except psycopg.errors.ObjectNotInPrerequisiteState:
            return 1, 1

    def run(self, t0, window_start, window_end):
        """Renews every PERIOD, the first time at t0 + its share of the period, until window_end."""
        try:
            k = 0
            while True:
                due = t0 + self.index * PERIOD / HOLDERS + k * PERIOD
                if due >= window_end:
                    return
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                started = time.monotonic()
                calls, refused = self.renew_once()
                if due >= window_start:
                    self.calls += calls
                    self.statements += 1
                    self.refused += refused
                    self.latencies.append((time.monotonic() - started) * 1000)
                    self.lateness.append(max(0.0, started - due) * 1000)
                k += 1
        except BaseException as error:  # reported with the phase's results
            self.errors.append(repr(error))


class Listener(threading.Thread):
    """Counts `expired` events of the phase's resources on lease_events."""

    def __init__(self, prefix):
        super().__init__(daemon=True)
        self.prefix, self.expired, self.stop = prefix, 0, False
        self.conn = connect()
        self.conn.execute("LISTEN lease_events")

    def run(self):
        while not self.stop:
            for notify in self.conn.notifies(timeout=0.2):
                event = json.loads(notify.payload)
                if event.get("event") == "expired" and event.get("resource", "").startswith(self.prefix):
                    self.expired += 1


def stats(conn):
    return conn.execute("SELECT expired_ttl + expired_session_end, renewed FROM lease._stats()").fetchone()


def wait_published(conn):
    deadline = time.monotonic() + 120
    while one(conn, "SELECT pending FROM lease_event_stats()") > 0:
        assert time.monotonic() < deadline, "events not published"
        time.sleep(0.05)


def run_phase(phase, monitor, postmaster):
    prefix = f"hb:{phase}:"
    counts = [LEASES // HOLDERS + (1 if i < LEASES % HOLDERS else 0) for i in range(HOLDERS)]
    holders = [Holder(phase, i, counts[i]) for i in range(HOLDERS)]
    listener = Listener(prefix)
    listener.start()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(Holder.set_up, holders))
    wait_published(monitor)
    monitor.execute("VACUUM (ANALYZE) lease.leases, lease.lifelines")
    monitor.execute("CHECKPOINT")

    t0 = time.monotonic() + 0.5
    window_start, window_end = t0 + PERIOD, t0 + PERIOD + SECONDS
    threads = []
    if phase != "idle":
        threads = [threading.Thread(target=h.run, args=(t0, window_start, window_end), daemon=True) for h in holders]
        for thread in threads:
            thread.start()
    expired_before, _ = stats(monitor)
    time.sleep(max(0.0, window_start - time.monotonic()))
    cpu_before, client_before = server_cpu_seconds(postmaster), client_cpu_seconds()
    lsn_before = one(monitor, "SELECT pg_current_wal_lsn()")
    began = time.monotonic()
    time.sleep(max(0.0, window_end - time.monotonic()))
    elapsed = time.monotonic() - began
    cpu_after, client_after = server_cpu_seconds(postmaster), client_cpu_seconds()
    wal = one(monitor, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn_before,))
    for thread in threads:
        thread.join()

    live = one(
        monitor,
        "SELECT count(*) FROM lease.leases AS l LEFT JOIN lease.lifelines AS f ON f.id = l.lifeline"
        " WHERE l.resource LIKE %s"
        "   AND CASE WHEN l.lifeline IS NULL THEN l.expires_at ELSE f.expires_at END > clock_timestamp()",
        (prefix + "%",),
    )
    same_token = sum(
        one(
            monitor,
            "SELECT count(*) FROM lease.leases AS l JOIN unnest(%s::text[], %s::bigint[]) AS u(r, t)"
            " ON l.resource = u.r AND l.token = u.t",
            (h.resources, h.tokens),
        )
        for h in holders
    )
    expired_after, _ = stats(monitor)
    time.sleep(0.5)
    listener.stop = True
    listener.join()
    listener.conn.close()

    latencies = [ms for h in holders for ms in h.latencies]
    lateness = [ms for h in holders for ms in h.lateness]
    result = {
        "leases": sum(counts),
        "seconds": elapsed,
        "calls_per_s": sum(h.calls for h in holders) / elapsed,
        "statements_per_s": sum(h.statements for h in holders) / elapsed,
        "cpu_per_s": (cpu_after[0] - cpu_before[0]) / elapsed,
        "cpu_precise_per_s": (cpu_after[1] - cpu_before[1]) / elapsed,
        "client_cpu_per_s": (client_after - client_before) / elapsed,
        "wal_per_s": float(wal) / elapsed,
        "latency_p50": percentile(latencies, 0.5),
        "latency_p99": percentile(latencies, 0.99),
        "late_max": max(lateness, default=0.0),
        "refused": sum(h.refused for h in holders),
        "expired_events": listener.expired,
        "expired_stats": expired_after - expired_before,
        "live": live,
        "same_token": same_token,
        "errors": [e for h in holders for e in h.errors],
    }

    # Clean up without events (the next phase starts from an empty, vacuumed table).
    for h in holders:
        h.conn.close()
    monitor.execute("DELETE FROM lease.leases WHERE resource LIKE %s", (prefix + "%",))
    monitor.execute("DELETE FROM lease.lifelines WHERE name LIKE %s", (f"hb-{phase}-%",))
    monitor.execute("VACUUM (ANALYZE) lease.leases, lease.lifelines")
    print(
        f"  {phase:9s} {result['calls_per_s']:9.0f} calls/s  server CPU {result['cpu_per_s']:.4f} s/s"
        f" ({result['cpu_precise_per_s']:.4f} by schedstat)"
        f"  WAL {result['wal_per_s'] / 1024:.1f} KiB/s  refused {result['refused']}"
        f"  expired {result['expired_events']}/{result['expired_stats']}  live {live}/{sum(counts)}",
        file=sys.stderr,
    )
    return result


def main():
    monitor = connect()
    postmaster = int(open(f"/proc/{monitor.info.backend_pid}/stat").read().rsplit(")", 1)[1].split()[1])
    monitor.execute("DELETE FROM lease.leases WHERE resource LIKE 'hb:%'")
    monitor.execute("DELETE FROM lease.lifelines WHERE name LIKE 'hb-%'")
    runs = {phase: [] for phase in PHASES}
    for round_ in range(ROUNDS):
        order = PHASES[round_ % len(PHASES):] + PHASES[: round_ % len(PHASES)]
        print(f"round {round_ + 1}: {' '.join(order)}", file=sys.stderr)
        for phase in order:
            runs[phase].append(run_phase(phase, monitor, postmaster))
    report(runs)


def median(runs, key):
    return statistics.median(run[key] for run in runs)


def total(runs, key):
    return sum(run[key] for run in runs)


def report(runs):
    phases = list(runs)
    lines = []
    head = "| measure | " + " | ".join(LABELS[p] for p in phases) + " |"
    lines += [head, "|---|" + "---:|" * len(phases)]

    def row(label, cells):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    per_holder = LEASES / HOLDERS
    row("leases kept alive (holders × leases each)", [f"{LEASES} ({HOLDERS} × {per_holder:g})" for _ in phases])
    row("renew calls per second (function calls)", [f"{median(runs[p], 'calls_per_s'):.0f}" for p in phases])
    row("renew statements per second", [f"{median(runs[p], 'statements_per_s'):.1f}" for p in phases])
    row("server CPU seconds per second", [f"{median(runs[p], 'cpu_per_s'):.4f}" for p in phases])
    row("the same, from /proc/PID/schedstat (ns)", [f"{median(runs[p], 'cpu_precise_per_s'):.4f}" for p in phases])
    row("WAL bytes per second", [f"{median(runs[p], 'wal_per_s'):.0f}" for p in phases])
    row("renewal statement latency p50 / p99 (ms)",
        [f"{median(runs[p], 'latency_p50'):.2f} / {median(runs[p], 'latency_p99'):.2f}" if p != "idle" else "-"
         for p in phases])
    row("renewal started late, max (ms)",
        [f"{max(r['late_max'] for r in runs[p]):.1f}" if p != "idle" else "-" for p in phases])
    row("driver (client) CPU seconds per second", [f"{median(runs[p], 'client_cpu_per_s'):.3f}" for p in phases])
    row("renewals refused", [f"{total(runs[p], 'refused')}" if p != "idle" else "-" for p in phases])
    row("`expired` events received (lease_events)", [f"{total(runs[p], 'expired_events')}" for p in phases])
    row("leases expired (lease.stats)", [f"{total(runs[p], 'expired_stats')}" for p in phases])
    row("held at the end with their first token",
        [f"{total(runs[p], 'same_token')} of {total(runs[p], 'leases')}" for p in phases])
    row("client errors", [f"{sum(len(r['errors']) for r in runs[p])}" for p in phases])
    lines.append("")
    if "lifeline" in runs:
        lifeline_cpu = median(runs["lifeline"], "cpu_per_s")
        lifeline_wal = median(runs["lifeline"], "wal_per_s")
        for p in phases:
            if p in ("lifeline", "idle"):
                continue
            cpu, wal = median(runs[p], "cpu_per_s"), median(runs[p], "wal_per_s")
            precise, lifeline_precise = median(runs[p], "cpu_precise_per_s"), median(runs["lifeline"], "cpu_precise_per_s")
            cpu_ratio = f"{cpu / lifeline_cpu:.0f}×" if lifeline_cpu > 0 else "∞ (no CPU time measured for the lifelines)"
            precise_ratio = f"{precise / lifeline_precise:.0f}×" if lifeline_precise > 0 else "∞"
            wal_ratio = f"{wal / lifeline_wal:.0f}×" if lifeline_wal > 0 else "∞"
            lines.append(
                f"Server CPU, {LABELS[p]} / lifelines: {cpu_ratio} (goal: at least 100×; {precise_ratio} by schedstat); "
                f"WAL: {wal_ratio}."
            )
            if "idle" in runs:
                idle = median(runs["idle"], "cpu_precise_per_s")
                above = lifeline_precise - idle
                if above > 0:
                    lines.append(
                        f"Above the idle server's {idle:.4f} CPU s/s (schedstat): {(precise - idle) / above:.0f}× "
                        f"({precise - idle:.4f} against {above:.4f} CPU s/s)."
                    )
                else:
                    lines.append(f"The lifelines cost nothing measurable above the idle server's {idle:.4f} CPU s/s.")
        lines.append("")
    lines.append(
        f"{HOLDERS} holders (a thread and a connection each), ttl {TTL:g} s renewed every {PERIOD:.2f} s, "
        f"renewals spread evenly over the period; {SECONDS:g} s measured per phase after one period of warm-up; "
        f"{ROUNDS} round(s), phases rotated between rounds (medians; counts summed). Server CPU: utime + stime of "
        f"all the server's processes (/proc/PID/stat, {CLK_TCK} ticks per second, so each process's figure is "
        f"rounded to {1000 / CLK_TCK:g} ms; schedstat's is exact for the live processes). synchronous_commit = {SYNC}."
    )
    text = "\n".join(lines)
    print(text)
    if OUTPUT:
        with open(OUTPUT, "w") as out:
            out.write(text + "\n")


main()
