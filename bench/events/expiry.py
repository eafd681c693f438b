"""Expiry benchmark: how late does an application learn that a lease expired, what does the
sweep cost, and what does the worker cost when there is nothing to do.

Usage: expiry.py PORT [LIVE=100000] [EXPIRING=10000] [WINDOW_S=10] [IDLE_S=60] [SAMPLES_JSON]

With LIVE leases that stay (ttl 1 hour) in the table, EXPIRING leases are made to expire
evenly over WINDOW_S seconds. A client LISTENs on lease_events and measures, for each
`expired` event, the time from the lease's expires_at (server clock) to the notification's
arrival (same machine, same clock). Then the table is emptied and the worker's CPU time and
wake-ups are read from /proc over IDLE_S seconds. Prints one Markdown table; with SAMPLES_JSON,
also writes every latency measured there ({"expiry_latency_ms": [...]})."""

import datetime
import json
import os
import sys
import time

import psycopg

PORT = int(sys.argv[1])
LIVE = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
EXPIRING = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
WINDOW = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
IDLE = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
SAMPLES = sys.argv[6] if len(sys.argv) > 6 else None
BATCH = 500  # leases per transaction: each holds its resource's lock until commit


def connect():
    return psycopg.connect(f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres", autocommit=True)


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def worker_stats(conn):
    pid = one(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease expirer'")
    with open(f"/proc/{pid}/schedstat") as f:
        cpu_ns = int(f.read().split()[0])
    with open(f"/proc/{pid}/status") as f:
        wakeups = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return pid, cpu_ns, wakeups


def wait_published(conn):
    deadline = time.monotonic() + 120
    while one(conn, "SELECT pending FROM lease_event_stats()") > 0:
        assert time.monotonic() < deadline, "events not published"
        time.sleep(0.05)


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))]


def parse(ts):
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


conn = connect()
conn.execute("TRUNCATE lease.leases")
for start in range(1, LIVE + 1, BATCH):
    conn.execute(
        "SELECT count(lease_acquire('live:' || i, 'h', '1 hour')) FROM generate_series(%s::int, %s::int) AS i",
        (start, min(start + BATCH - 1, LIVE)),
    )
wait_published(conn)

listener = connect()
listener.execute("LISTEN lease_events")
t0 = one(conn, "SELECT clock_timestamp() + interval '3 s'")
step = datetime.timedelta(seconds=WINDOW / EXPIRING)
for start in range(1, EXPIRING + 1, BATCH):
    conn.execute(
        "SELECT count(lease_acquire('exp:' || i, 'h', (%s::timestamptz + i * %s::interval) - clock_timestamp()))"
        " FROM generate_series(%s::int, %s::int) AS i",
        (t0, step, start, min(start + BATCH - 1, EXPIRING)),
    )
assert one(conn, "SELECT clock_timestamp() < %s", (t0,)), "creating the expiring leases took too long"
_, cpu_before, _ = worker_stats(conn)

latencies = []
gaps = 0
last_seq = None
deadline = time.time() + 3 + WINDOW + 30
while len(latencies) < EXPIRING and time.time() < deadline:
    for notify in listener.notifies(timeout=1.0):
        arrived = time.time()
        event = json.loads(notify.payload)
        if last_seq is not None and event["seq"] != last_seq + 1:
            gaps += event["seq"] - last_seq - 1
        last_seq = event["seq"]
        if event["event"] == "expired" and event["resource"].startswith("exp:"):
            latencies.append((arrived - parse(event["expires_at"])) * 1000)
_, cpu_after, _ = worker_stats(conn)
if SAMPLES:
    with open(SAMPLES, "w") as samples:
        json.dump({"expiry_latency_ms": [round(ms, 4) for ms in latencies]}, samples)
live_left = one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE 'live:%%'")

conn.execute("TRUNCATE lease.leases")
time.sleep(2)
_, idle_cpu_before, idle_wakeups_before = worker_stats(conn)
time.sleep(IDLE)
_, idle_cpu_after, idle_wakeups_after = worker_stats(conn)
naptime = one(conn, "SHOW lease.max_naptime")

print(f"| measure | value |")
print(f"|---|---:|")
print(f"| live leases in the table | {live_left} |")
print(f"| leases expiring over {WINDOW:g} s | {EXPIRING} |")
print(f"| expired events received | {len(latencies)} |")
print(f"| sequence gaps (dropped events) | {gaps} |")
print(f"| expiry latency p50 | {percentile(latencies, 0.50):.2f} ms |")
print(f"| expiry latency p99 | {percentile(latencies, 0.99):.2f} ms |")
print(f"| expiry latency max | {max(latencies):.2f} ms |")
print(f"| worker CPU per expired lease (sweep and publish) | {(cpu_after - cpu_before) / 1000 / len(latencies):.1f} µs |")
print(f"| idle worker: CPU time over {IDLE:g} s (lease.max_naptime = {naptime}) | {(idle_cpu_after - idle_cpu_before) / 1e6:.1f} ms |")
print(f"| idle worker: wake-ups over {IDLE:g} s | {idle_wakeups_after - idle_wakeups_before} |")
