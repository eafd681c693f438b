"""Shared by the coordination benchmarks (claim_all.py, semaphore.py, readers_writers.py): the
connection, the client threads of one run, the statistics and the Markdown table.

Each benchmark runs its variants (the extension and a hand-written baseline) alternately on one
server, ROUNDS rounds, the order rotated from round to round; every run lasts SECONDS with every
client looping on its own connection; rates and latencies are reported as the medians of the
rounds, the counts that must be zero as totals over all rounds."""

import os
import statistics
import sys
import threading
import time

import psycopg

# synchronous_commit of every client session.
SYNC = os.environ.get("COORD_SYNC", "on")


def connect(port, options=""):
    return psycopg.connect(
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        f" options='-c synchronous_commit={SYNC} {options}'",
        autocommit=True,
    )


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


def median(values):
    values = [v for v in values if v == v]  # NaN: a round without samples
    return statistics.median(values) if values else float("nan")


def ms(value):
    return "-" if value != value else f"{value:.2f}"


def require_arguments(conn, function, arguments, what):
    """Exits with a clear message unless the installed `function` has parameters named
    `arguments` (the API this benchmark is written against)."""
    found = conn.execute(
        "SELECT coalesce(array_agg(DISTINCT a), '{}') FROM pg_proc AS p, unnest(p.proargnames) AS a"
        " WHERE p.proname = %s AND p.pronamespace = (SELECT extnamespace FROM pg_extension WHERE extname = 'lease')",
        (function,),
    ).fetchone()[0]
    missing = [a for a in arguments if a not in found]
    if missing:
        version = one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'lease'")
        print(
            f"error: this benchmark needs {what}: {function}(..., "
            + ", ".join(f"{a} => ..." for a in missing)
            + f"), which the installed extension (version {version}) does not have",
            file=sys.stderr,
        )
        sys.exit(1)


class Clients:
    """COUNT client threads, each with connections of its own, started together (a barrier)
    and stopped at a deadline: `body(index, conns, deadline, stats)` loops until the deadline
    and finishes its cycle in progress. A client that raises is recorded in `failed`; a client
    still running GRACE seconds after the deadline ends the benchmark (it must not hang)."""

    def __init__(self, count, port, seconds, grace, options=("",)):
        self.count, self.port, self.seconds, self.grace = count, port, seconds, grace
        self.options = options
        self.failed = []

    def run(self, body, make_stats):
        conns = [[connect(self.port, opt) for opt in self.options] for _ in range(self.count)]
        stats = [make_stats() for _ in range(self.count)]
        barrier = threading.Barrier(self.count + 1)
        start = {}

        def client(index):
            try:
                barrier.wait()
                body(index, conns[index], start["deadline"], stats[index])
            except BaseException as error:  # reported with the run's results
                self.failed.append(f"client {index}: {error!r}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(self.count)]
        for thread in threads:
            thread.start()
        start["began"] = time.monotonic()
        start["deadline"] = start["began"] + self.seconds
        barrier.wait()
        for thread in threads:
            thread.join(max(0.0, start["deadline"] + self.grace - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            print(f"error: clients still running {self.grace:g} s after the end of the run; giving up", file=sys.stderr)
            for failure in self.failed:
                print(f"  {failure}", file=sys.stderr)
            os._exit(2)
        for client_conns in conns:
            for conn in client_conns:
                conn.close()
        return stats


def rotate(variants, round_):
    k = round_ % len(variants)
    return variants[k:] + variants[:k]


class Table:
    """A Markdown table of measures (rows) by variant (columns)."""

    def __init__(self, labels):
        self.lines = ["| measure | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]

    def row(self, label, cells):
        self.lines.append(f"| {label} | " + " | ".join(str(c) for c in cells) + " |")

    def write(self, notes, output):
        text = "\n".join(self.lines + [""] + notes) + "\n"
        print()
        print(text, end="")
        if output:
            with open(output, "w") as f:
                f.write(text)


def error_name(error):
    """SQLSTATE and the first line of the message, for the tally of unexpected errors."""
    state = getattr(error, "sqlstate", None) or type(error).__name__
    return f"{state}: {str(error).splitlines()[0] if str(error) else ''}"


def tally(counts, error):
    name = error_name(error)
    counts[name] = counts.get(name, 0) + 1


def probe(conn, sql, params, what):
    """Runs `sql` once (a grant and its release, with the API under test) and exits with a clear
    message if it fails."""
    try:
        with conn.transaction():
            conn.execute(sql, params)
            raise _Undo()
    except _Undo:
        pass
    except psycopg.Error as error:
        print(f"error: {what} failed: {error_name(error)}", file=sys.stderr)
        sys.exit(1)


class _Undo(Exception):
    pass


def max_overlap(intervals):
    """The largest number of [start, end] intervals that hold at one instant (an interval that
    ends at the instant another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = most = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def busy_time(intervals):
    return sum((end - start).total_seconds() for start, end in intervals)


def fifo_inversions(calls, tolerance=0.0001):
    """calls: (grant order key, arrival time in seconds), one per granted call. Returns (grants
    that went ahead of a call that arrived more than `tolerance` earlier, such pairs)."""
    import bisect

    later_arrivals = []  # arrivals of the calls granted after the one looked at, sorted
    ahead = pairs = 0
    for _, arrived in sorted(calls, reverse=True):
        overtaken = bisect.bisect_left(later_arrivals, arrived - tolerance)
        if overtaken:
            ahead += 1
            pairs += overtaken
        bisect.insort(later_arrivals, arrived)
    return ahead, pairs


def handovers(holds, capacity):
    """holds: (arrived, granted, released) server times of every grant. Each grant takes the
    permit released longest ago among those not taken again yet (the `capacity` permits free at
    the start count as released at the beginning of time); for a call that was already waiting
    when that permit was released, the handover latency is from that release to its grant.
    Returns the latencies in milliseconds."""
    import collections

    events = sorted(
        [(granted, 1, arrived) for arrived, granted, _ in holds] + [(released, 0, None) for _, _, released in holds],
        key=lambda e: (e[0], e[1]),
    )
    freed = collections.deque([None] * capacity)
    latencies = []
    for at, kind, arrived in events:
        if kind == 0:
            freed.append(at)
        elif freed:
            released = freed.popleft()
            if released is not None and arrived < released:
                latencies.append((at - released).total_seconds() * 1000)
    return latencies


def failure_notes(runs, variants):
    """The notes under a table: each variant's errors (summed over its rounds) and the clients
    that stopped."""
    notes = []
    for v in variants:
        errors = {}
        for r in runs[v]:
            for name, count in r["error_names"].items():
                errors[name] = errors.get(name, 0) + count
            notes += [f"Client stopped ({v}): {failure}" for failure in r["failed"]]
        notes += [f"Error ({v}): {count} × {name}" for name, count in sorted(errors.items())]
    return notes


def print_failures(errors, failed):
    """Prints a run's errors (name: count) and stopped clients under its line, to stderr."""
    for name, count in errors.items():
        print(f"      {count} × {name}", file=sys.stderr)
    for failure in failed:
        print(f"      stopped: {failure}", file=sys.stderr)


def spread_per_client(runs, variants, key):
    """For a table row: per variant, the smallest and largest total over all rounds of `key`,
    a list with one count per client."""
    def totals(v):
        return list(map(sum, zip(*[r[key] for r in runs[v]])))
    return [f"{min(totals(v))} / {max(totals(v))}" for v in variants]
