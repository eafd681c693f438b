"""Waiting benchmark: how fast a lease passes from one holder to the next.

Usage: handover.py PORT [ROUNDS=300] [TERMINATIONS=30] [WAITERS=32] [HANDOVERS=10000] [SAMPLES_JSON]

1. Handover latency: a holder releases; a waiter blocked in lease_acquire(wait => ...) returns.
   Time from the release's commit (its call returning) to the waiter's call returning,
   against a client that polls lease_acquire every 50 ms (what table-based libraries do).
2. Session end: a session-bound holder is terminated with pg_terminate_backend; time until a
   waiter holds the lease.
3. WAITERS clients queue on one resource and hand it over HANDOVERS times; every grant is
   logged through a fenced insert, then checked: no double grant, tokens increase, and the
   order is first come, first served: no call is granted before a call that reached the
   server earlier (each call reads the server clock just before it joins the queue; calls
   less than 0.1 ms apart count as simultaneous).
4. Bounded waits: while a holder keeps a fenced transaction open on an expired lease (the lease
   cannot be granted until it ends), calls with wait => 100 ms and calls without wait: how long
   each takes beyond what it asked to wait (the README states the bound).
Prints one Markdown table; with SAMPLES_JSON, also writes the latencies of 1 and 2 there
({"waiting_ms": [...], "polling_ms": [...], "terminated_ms": [...]})."""

import json
import statistics
import sys
import threading
import time

import psycopg

PORT = int(sys.argv[1])
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 300
TERMINATIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 30
WAITERS = int(sys.argv[4]) if len(sys.argv) > 4 else 32
HANDOVERS = int(sys.argv[5]) if len(sys.argv) > 5 else 10_000
SAMPLES = sys.argv[6] if len(sys.argv) > 6 else None


def connect():
    return psycopg.connect(f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres", autocommit=True)


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))]


def is_waiting(observer, pid):
    row = observer.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Extension"


def wait_until_waiting(observer, pid):
    deadline = time.monotonic() + 30
    while not is_waiting(observer, pid):
        assert time.monotonic() < deadline, "the waiter never started waiting"
        time.sleep(0.001)


def handover_latency(poll_interval):
    """Milliseconds from release to the next holder's acquire returning, one round each."""
    holder, waiter, observer = connect(), connect(), connect()
    latencies = []
    for n in range(ROUNDS):
        resource = f"handover:{poll_interval}:{n}"
        token = one(holder, "SELECT lease_acquire(%s, 'holder', '1 min')", (resource,))
        done = {}

        def wait():
            if poll_interval is None:
                one(waiter, "SELECT lease_acquire(%s, 'waiter', '1 min', '30 s')", (resource,))
            else:
                while one(waiter, "SELECT lease_acquire(%s, 'waiter', '1 min')", (resource,)) is None:
                    time.sleep(poll_interval)
            done["at"] = time.perf_counter()

        thread = threading.Thread(target=wait)
        thread.start()
        if poll_interval is None:
            wait_until_waiting(observer, waiter.info.backend_pid)
        else:
            time.sleep(poll_interval * (1 + n % 7) / 7)  # release at varied points of the poll cycle
        one(holder, "SELECT lease_release(%s, %s)", (resource, token))
        released = time.perf_counter()
        thread.join()
        latencies.append((done["at"] - released) * 1000)
        holder.execute("DELETE FROM lease.leases WHERE resource = %s", (resource,))
    return latencies


def termination_latency():
    waiter, observer = connect(), connect()
    latencies = []
    for n in range(TERMINATIONS):
        resource = f"terminate:{n}"
        holder = connect()
        one(holder, "SELECT lease_acquire(%s, 'holder', '1 hour', NULL, true)", (resource,))
        done = {}

        def wait():
            one(waiter, "SELECT lease_acquire(%s, 'waiter', '1 min', '30 s')", (resource,))
            done["at"] = time.perf_counter()

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until_waiting(observer, waiter.info.backend_pid)
        started = time.perf_counter()
        one(observer, "SELECT pg_terminate_backend(%s)", (holder.info.backend_pid,))
        thread.join()
        latencies.append((done["at"] - started) * 1000)
        holder.close()
        observer.execute("DELETE FROM lease.leases WHERE resource = %s", (resource,))
    return latencies


def contention():
    setup = connect()
    setup.execute("DROP TABLE IF EXISTS handover_log")
    setup.execute("CREATE TABLE handover_log (id bigserial PRIMARY KEY, token bigint NOT NULL, client int NOT NULL)")
    remaining = [HANDOVERS]
    lock = threading.Lock()
    errors = []
    calls = []  # (token, sent_at) of every granted call

    def client(number):
        conn = connect()
        try:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                arrived, token = conn.execute(
                    "SELECT clock_timestamp(), lease_acquire('contended', %s, '1 min', '60 s')", (f"c{number}",)
                ).fetchone()
                assert token is not None, "wait ran out"
                calls.append((token, arrived.timestamp()))
                logged = conn.execute(
                    "INSERT INTO handover_log (token, client) SELECT %s, %s WHERE lease_check('contended', %s)",
                    (token, number, token),
                ).rowcount
                assert logged == 1, "fenced insert refused"
                assert one(conn, "SELECT lease_release('contended', %s)", (token,)) is True
        except BaseException as error:
            errors.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(WAITERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    rows = setup.execute("SELECT token, client FROM handover_log ORDER BY id").fetchall()
    tokens = [t for t, _ in rows]
    clients = [c for _, c in rows]
    double = len(tokens) - len(set(tokens)) + sum(1 for a, b in zip(tokens, tokens[1:]) if b <= a)
    # FIFO: in grant (token) order, no call may be granted before one that arrived earlier.
    calls.sort()
    arrivals = [arrived for _, arrived in calls]
    later_min = float("inf")
    overtaken = 0
    for arrived in reversed(arrivals):
        if later_min < arrived - 0.0001:
            overtaken += 1
        later_min = min(later_min, arrived)
    counts = [clients.count(n) for n in range(WAITERS)]
    return {
        "grants": len(rows),
        "errors": len(errors),
        "double": double,
        "overtaken": overtaken,
        "per_second": len(rows) / elapsed,
        "min_count": min(counts),
        "max_count": max(counts),
    }


def bounded_waits(calls=100, wait_ms=100):
    """Milliseconds each call took beyond its wait, while a fenced transaction stands in the way:
    (with wait => wait_ms, without wait)."""
    holder, caller = connect(), connect()
    token = one(holder, "SELECT lease_acquire('bounded', 'holder', '50 ms')")
    holder.execute("BEGIN")
    assert one(holder, "SELECT lease_check('bounded', %s)", (token,)) is True
    holder.execute("SELECT pg_sleep(0.06)")  # the lease has expired; the fence stands
    beyond = {"wait": [], "no wait": []}
    for n in range(calls):
        for kind, sql in (("wait", f"SELECT lease_acquire('bounded', 'caller', '1 min', wait => '{wait_ms} ms')"),
                          ("no wait", "SELECT lease_acquire('bounded', 'caller', '1 min')")):
            started = time.perf_counter()
            granted = one(caller, sql)
            assert granted is None, "granted while the fence stands"
            beyond[kind].append((time.perf_counter() - started) * 1000 - (wait_ms if kind == "wait" else 0))
    holder.execute("ROLLBACK")
    caller.execute("DELETE FROM lease.leases WHERE resource = 'bounded'")
    holder.close()
    caller.close()
    return beyond


with connect() as clean:
    clean.execute("TRUNCATE lease.leases")
bounded = bounded_waits()
blocking = handover_latency(None)
polling = handover_latency(0.05)
terminated = termination_latency()
result = contention()
if SAMPLES:
    with open(SAMPLES, "w") as samples:
        json.dump({name: [round(ms, 4) for ms in values] for name, values in
                   (("waiting_ms", blocking), ("polling_ms", polling), ("terminated_ms", terminated))}, samples)

print("| measure | waiting acquire | polling every 50 ms |")
print("|---|---:|---:|")
for name, fraction in (("p50", 0.5), ("p99", 0.99)):
    print(f"| handover latency {name} ({ROUNDS} handovers) | {percentile(blocking, fraction):.2f} ms | {percentile(polling, fraction):.2f} ms |")
print(f"| handover latency max | {max(blocking):.2f} ms | {max(polling):.2f} ms |")
print()
print("| measure | value |")
print("|---|---:|")
print(f"| session terminated → waiter holds the lease, p50 ({TERMINATIONS} runs) | {percentile(terminated, 0.5):.1f} ms |")
print(f"| session terminated → waiter holds the lease, max | {max(terminated):.1f} ms |")
print(f"| {WAITERS} waiters on one resource: handovers | {result['grants']} |")
print(f"| handovers per second | {result['per_second']:.0f} |")
print(f"| double grants (repeated or decreasing tokens) | {result['double']} |")
print(f"| client errors | {result['errors']} |")
print(f"| FIFO: grants that went ahead of a call that arrived earlier | {result['overtaken']} of {result['grants']} |")
print(f"| grants per client, min / max | {result['min_count']} / {result['max_count']} |")
print()
print("| while a fenced transaction stands in the way (100 calls each) | p50 | p99 | max |")
print("|---|---:|---:|---:|")
for kind, label in (("wait", "acquire with wait => 100 ms: time beyond the wait"), ("no wait", "acquire without wait: time to answer")):
    values = bounded[kind]
    print(f"| {label} | {percentile(values, 0.5):.2f} ms | {percentile(values, 0.99):.2f} ms | {max(values):.2f} ms |")
