"""The expiry worker's publishing cost: CPU time it spends per event it publishes with NOTIFY.

Usage: publish.py PORT [BURSTS=25] [BURST=4000]

Listens on lease_events itself (events nobody listens for are not published), waits until the
database's worker serves its event ring (a first event goes through it), then
commits BURSTS transactions of BURST acquires each (one `acquired` event each; a database's
ring holds 4,096), and after each waits until the worker has published them
(lease_event_stats().published). Reads the worker's CPU time from /proc before and after.
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
conn.execute("TRUNCATE lease.leases")
# Its notifications arrive with each answer and are read and dropped by the driver.
conn.execute("LISTEN lease_events")


def published():
    return one(conn, "SELECT published FROM lease_event_stats()")


def wait_published(target):
    deadline = time.monotonic() + 60
    while published() < target:
        assert time.monotonic() < deadline, "events not published"
        time.sleep(0.002)


# Until the worker serves the ring (the first commit of a lease change asks the launcher for
# one), a commit sends its events itself.
deadline = time.monotonic() + 60
while published() == 0:
    assert time.monotonic() < deadline, "the worker does not serve the ring"
    one(conn, "SELECT lease_release('publish:warm-up', lease_acquire('publish:warm-up', 'h'))")
    time.sleep(0.05)
wait_published(one(conn, "SELECT last_seq FROM lease_event_stats()"))
pid = one(conn, "SELECT max(pid) FROM pg_stat_activity WHERE backend_type = 'lease expirer'")
published_before = published()
start_cpu, start = cpu_ns(pid), time.monotonic()
for burst in range(BURSTS):
    one(conn, "SELECT count(lease_acquire('publish:' || %s || ':' || g, 'h', '1 hour'))"
              " FROM generate_series(1, %s) g", (burst, BURST))
    wait_published(published_before + (burst + 1) * BURST)
elapsed, spent = time.monotonic() - start, cpu_ns(pid) - start_cpu
events = published() - published_before
assert events == BURSTS * BURST, f"published {events} events, expected {BURSTS * BURST}"
conn.execute("TRUNCATE lease.leases")
print(f"events={events} cpu_us_per_event={spent / 1000 / events:.2f} events_per_s={events / elapsed:.0f}")
