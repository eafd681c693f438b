"""The expiry worker's publishing cost: CPU time it spends per event it publishes with NOTIFY.

Usage: publish.py PORT [BURSTS=25] [BURST=4000]

Commits BURSTS transactions of BURST acquires each (one `acquired` event each; a database's
ring holds 4,096), and after each waits until the worker has published them
(lease_event_stats().pending = 0). Reads the worker's CPU time from /proc before and after.
Prints one line: "events=N cpu_us_per_event=X events_per_s=Y"."""

import sys
import time

import psycopg

PORT = int(sys.argv[1])
BURSTS = int(sys.argv[2]) if len(sys.argv) > 2 else 25
BURST = int(sys.argv[3]) if len(sys.argv) > 3 else 4000


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def cpu_ns(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


conn = psycopg.connect(f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres", autocommit=True)
deadline = time.monotonic() + 60
while (pid := one(conn, "SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'lease expirer'")) is None:
    assert time.monotonic() < deadline, "no expiry worker"
    time.sleep(0.05)
conn.execute("TRUNCATE lease.leases")
published_before = one(conn, "SELECT published FROM lease_event_stats()")
start_cpu, start = cpu_ns(pid), time.monotonic()
for burst in range(BURSTS):
    one(conn, "SELECT count(lease_acquire('publish:' || %s || ':' || g, 'h', '1 hour'))"
              " FROM generate_series(1, %s) g", (burst, BURST))
    deadline = time.monotonic() + 60
    while one(conn, "SELECT pending FROM lease_event_stats()") > 0:
        assert time.monotonic() < deadline, "events not published"
        time.sleep(0.002)
elapsed, spent = time.monotonic() - start, cpu_ns(pid) - start_cpu
events = one(conn, "SELECT published FROM lease_event_stats()") - published_before
assert events == BURSTS * BURST, f"published {events} events, expected {BURSTS * BURST}"
conn.execute("TRUNCATE lease.leases")
print(f"events={events} cpu_us_per_event={spent / 1000 / events:.2f} events_per_s={events / elapsed:.0f}")
