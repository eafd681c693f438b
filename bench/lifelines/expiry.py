"""Lifeline expiry benchmark: how soon the leases of a lapsed lifeline are removed and announced,
and how soon a waiter gets one of them, against the same number of plain leases expiring at
the same moment.

Usage: expiry.py PORT [RUNS=20] [LEASES=1000] [TTL_S=2] [OUTPUT_MD] [SAMPLES_JSON]

Each run (lifeline and plain runs alternate, RUNS of each):
  lifeline  a holder opens a lifeline with a ttl of TTL_S seconds and attaches LEASES leases to
            it (lease_acquire(..., lifeline => id)); a waiter blocks in lease_acquire(the last of
            them, 'waiter', '1 min', wait => '30 s'); the holder renews the lifeline once more,
            with the same ttl (its last heartbeat), and stops: the lifeline lapses at the
            expires_at that renewal returned;
  plain     the holder acquires LEASES leases with a ttl of TTL_S seconds, the waiter blocks on
            the last of them, and the holder renews them all in one statement so that they
            expire together at one moment (lease_renew(r, t, T - clock_timestamp())).
A client LISTENing on lease_events receives the `expired` events of the run's leases. Measured
from the expiry (the lifeline's expires_at; for plain leases, the latest of the leases'
expires_at, which lie within microseconds of each other) on the server's clock, which is the
client's (same machine):
  - the last `expired` event's "at" (when the worker removed the lease), and its receipt;
  - the first event's receipt;
  - the waiter's lease_acquire returning with a token (from its own lease's expires_at).
Every lifeline event is also checked: reason lifeline_expired, "lifeline" the lifeline's id,
"expires_at" the lifeline's expiry; plain ones: reason ttl, no "lifeline". Prints one Markdown
table (p50 / p99 / max over the runs) and writes it to OUTPUT_MD; with SAMPLES_JSON, also every
run's figures."""

import datetime
import json
import sys
import threading
import time

import psycopg

PORT = int(sys.argv[1])
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
LEASES = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
TTL = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
OUTPUT = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None
SAMPLES = sys.argv[6] if len(sys.argv) > 6 else None
TTL_INTERVAL = datetime.timedelta(seconds=TTL)
KINDS = ("lifeline", "plain")


def connect():
    return psycopg.connect(f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres", autocommit=True)


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


def parse(ts):
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))]


def wait_published(conn):
    deadline = time.monotonic() + 60
    while one(conn, "SELECT pending FROM lease_event_stats()") > 0:
        assert time.monotonic() < deadline, "events not published"
        time.sleep(0.01)


def wait_until_waiting(observer, pid):
    deadline = time.monotonic() + 30
    while observer.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != ("Extension",):
        assert time.monotonic() < deadline, "the waiter never started waiting"
        time.sleep(0.001)


holder, waiter, observer, listener = connect(), connect(), connect(), connect()
listener.execute("LISTEN lease_events")
holder.execute("DELETE FROM lease.leases WHERE resource LIKE 'lx:%'")


def drain():
    for _ in listener.notifies(timeout=0.05):
        pass


def one_run(kind, n):
    prefix = f"lx:{kind}:{n}:"
    names = [f"{prefix}{i:06d}" for i in range(1, LEASES + 1)]
    last = names[-1]  # the last one the sweep reaches, in resource order
    lifeline = None
    if kind == "lifeline":
        lifeline = one(holder, "SELECT lease_lifeline_open(%s, %s)", (f"lx-{n}", TTL_INTERVAL))
        granted = one(
            holder, "SELECT count(lease_acquire(r, 'holder', lifeline => %s)) FROM unnest(%s::text[]) AS r", (lifeline, names)
        )
    else:
        granted = one(holder, "SELECT count(lease_acquire(r, 'holder', %s)) FROM unnest(%s::text[]) AS r", (TTL_INTERVAL, names))
    assert granted == LEASES, f"{kind} run {n}: {granted} of {LEASES} acquired"
    wait_published(observer)
    drain()

    got = {}

    def wait():
        got["token"] = one(waiter, "SELECT lease_acquire(%s, 'waiter', '1 min', '30 s')", (last,))
        got["at"] = time.time()

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until_waiting(observer, waiter.info.backend_pid)
    if kind == "lifeline":
        expires = one(holder, "SELECT lease_lifeline_renew(%s, %s)", (lifeline, TTL_INTERVAL)).timestamp()
    else:
        target = one(holder, "SELECT clock_timestamp() + %s", (TTL_INTERVAL,))
        renewed = one(
            holder,
            "SELECT count(*) FILTER (WHERE lease_renew(resource, token, %s::timestamptz - clock_timestamp()))"
            " FROM lease.leases WHERE resource LIKE %s AND holder = 'holder'",
            (target, prefix + "%"),
        )
        assert renewed == LEASES, f"plain run {n}: {renewed} of {LEASES} renewed"
        expires = one(holder, "SELECT max(expires_at) FROM lease.leases WHERE resource LIKE %s", (prefix + "%",)).timestamp()
        # The waiter's lease's own expiry: a lease's lies up to a preemption before the latest.
        waited_expires = one(holder, "SELECT expires_at FROM lease.leases WHERE resource = %s", (last,)).timestamp()
    if kind == "lifeline":
        waited_expires = expires
    assert time.time() < expires, f"{kind} run {n}: the set-up took longer than the ttl"

    events, bad, last_at = [], 0, None
    deadline = time.monotonic() + TTL + 30
    while len(events) < LEASES and time.monotonic() < deadline:
        for notify in listener.notifies(timeout=0.5):
            received = time.time()
            event = json.loads(notify.payload)
            if event.get("event") != "expired" or not event["resource"].startswith(prefix):
                continue
            events.append((received, parse(event["at"])))
            if event["resource"] == last:
                last_at = parse(event["at"])
            if kind == "lifeline":
                bad += (
                    event.get("reason") != "lifeline_expired"
                    or event.get("lifeline") != lifeline
                    or abs(parse(event["expires_at"]) - expires) > 2e-6
                )
            else:
                bad += event.get("reason") != "ttl" or "lifeline" in event
            if len(events) == LEASES:
                break
    thread.join(timeout=35)
    assert not thread.is_alive(), "the waiter did not return"
    holder.execute("DELETE FROM lease.leases WHERE resource LIKE %s", (prefix + "%",))
    if lifeline is not None:
        holder.execute("DELETE FROM lease.lifelines WHERE id = %s", (lifeline,))
    if not events:
        return {"events": 0, "bad": bad, "waiter_ms": None}
    return {
        "events": len(events),
        "bad": bad,
        "first_received_ms": (min(r for r, _ in events) - expires) * 1000,
        "first_at_ms": (min(a for _, a in events) - expires) * 1000,
        # The waiter's lease ended before any other: the waiter took it over itself, before the
        # sweep reached it.
        "taken_over": last_at is not None and LEASES > 1 and last_at < min(a for _, a in events if a != last_at),
        "last_at_ms": (max(a for _, a in events) - expires) * 1000,
        "last_received_ms": (max(r for r, _ in events) - expires) * 1000,
        "waiter_ms": (got["at"] - waited_expires) * 1000 if got.get("token") is not None else None,
    }


runs = {kind: [] for kind in KINDS}
for n in range(RUNS):
    order = KINDS if n % 2 == 0 else tuple(reversed(KINDS))
    for kind in order:
        result = one_run(kind, n)
        runs[kind].append(result)
        print(
            f"  {kind:8s} run {n + 1}: {result['events']} events, last at +{result.get('last_at_ms', float('nan')):.1f} ms,"
            f" waiter +{result['waiter_ms'] if result['waiter_ms'] is not None else float('nan'):.1f} ms",
            file=sys.stderr,
        )


def cell(kind, key):
    values = [r[key] for r in runs[kind] if r.get(key) is not None]
    if not values:
        return "-"
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f} / {max(values):.1f}"


lines = [
    f"| from the expiry to (ms, p50 / p99 / max over {RUNS} runs) | lifeline with {LEASES} leases | {LEASES} plain leases expiring together |",
    "|---|---:|---:|",
    f"| the last `expired` event's \"at\" (removal) | {cell('lifeline', 'last_at_ms')} | {cell('plain', 'last_at_ms')} |",
    f"| the first `expired` event's \"at\" | {cell('lifeline', 'first_at_ms')} | {cell('plain', 'first_at_ms')} |",
    f"| the last `expired` event received | {cell('lifeline', 'last_received_ms')} | {cell('plain', 'last_received_ms')} |",
    f"| the first `expired` event received | {cell('lifeline', 'first_received_ms')} | {cell('plain', 'first_received_ms')} |",
    f"| a waiter on one of them holds it | {cell('lifeline', 'waiter_ms')} | {cell('plain', 'waiter_ms')} |",
    f"| `expired` events received, all runs | {sum(r['events'] for r in runs['lifeline'])} of {RUNS * LEASES} "
    f"| {sum(r['events'] for r in runs['plain'])} of {RUNS * LEASES} |",
    f"| events with a wrong reason, lifeline or expires_at | {sum(r['bad'] for r in runs['lifeline'])} "
    f"| {sum(r['bad'] for r in runs['plain'])} |",
    f"| the waiter's lease ended by the waiter's own takeover, before the worker removed it | "
    f"{sum(bool(r.get('taken_over')) for r in runs['lifeline'])} of {RUNS} | {sum(bool(r.get('taken_over')) for r in runs['plain'])} of {RUNS} |",
    f"| waiters not granted | {sum(r['waiter_ms'] is None for r in runs['lifeline'])} "
    f"| {sum(r['waiter_ms'] is None for r in runs['plain'])} |",
    "",
    f"ttl {TTL:g} s, renewed once (the last heartbeat) after the waiter queued; the waiter waits on the last "
    f"lease in resource order; lifeline and plain runs alternate. Times on the server's clock (expires_at, "
    f"\"at\") and the client's (receipt, the waiter's return), one machine.",
]
text = "\n".join(lines)
print(text)
if OUTPUT:
    with open(OUTPUT, "w") as out:
        out.write(text + "\n")
if SAMPLES:
    with open(SAMPLES, "w") as out:
        json.dump(runs, out)
