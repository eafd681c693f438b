"""Failover benchmark: how long clients go without a grant when the primary of a Patroni cluster
dies, and what throughput they get before and after.

Usage: failover.py [--clients 8] [--window 10] [--asynchronous] [--json FILE]
(bench/ha/run.sh installs what it needs and runs it in both replication modes.)

Starts its own cluster with the test suite's harness (tests/ha/cluster.py: one etcd member,
two PostgreSQL 15 nodes under Patroni with ttl 10 s, loop_wait 1 s, primary_start_timeout 0;
synchronous_mode on unless --asynchronous). CLIENTS threads connect with
target_session_attrs=read-write to both nodes and run cycles of acquire (random resource of
1,000, 5 s ttl), a fenced UPDATE, release; after losing the connection a client reconnects at
once (retrying every 10 ms) under a new holder name. Each cycle's grant is timed as the client
sees it (when lease_acquire returns). Two failovers in a row:

1. the primary's PostgreSQL is killed (SIGKILL to the postmaster and its processes), its
   Patroni lives: it notices and gives up the leader key;
2. the whole primary node is killed, Patroni first: the leader key has to expire (ttl).

For each: grants per second over WINDOW seconds before the kill; the time from the kill to
Patroni reporting the new primary; the time from the kill to the first grant on the new primary
(the first client, the median client, the last client); grants per second on the new primary
while it runs alone (until the old primary is back as a replica) and over WINDOW seconds after
that. Prints a Markdown table."""

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "ha"))
import cluster as ha  # noqa: E402

RESOURCES = 1000


class Client(threading.Thread):
    def __init__(self, number, conninfo):
        super().__init__(daemon=True)
        self.number = number
        self.conninfo = conninfo
        self.random = random.Random(number)
        self.grants = []  # (time.monotonic(), port) of each grant, as the client saw it
        self.errors = []
        self.stopping = threading.Event()

    def run(self):
        generation = 0
        while not self.stopping.is_set():
            try:
                conn = psycopg.connect(self.conninfo, autocommit=True)
            except psycopg.OperationalError:
                time.sleep(0.01)
                continue
            generation += 1
            holder = f"bench{self.number}.{generation}"
            try:
                with conn:
                    while not self.stopping.is_set():
                        self.cycle(conn, holder)
            except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction):
                pass  # the primary is gone: reconnect, and hold nothing
            except psycopg.Error as error:
                self.errors.append(repr(error))

    def cycle(self, conn, holder):
        number = self.random.randrange(RESOURCES)
        resource = f"bench:{number}"
        token = conn.execute("SELECT lease_acquire(%s, %s, '5 s')", (resource, holder)).fetchone()[0]
        if token is None:
            return
        self.grants.append((time.monotonic(), conn.info.port))
        conn.execute("UPDATE ha_bench SET token = %s WHERE id = %s AND lease_check(%s, %s)",
                     (token, number, resource, token))
        conn.execute("SELECT lease_release(%s, %s)", (resource, token))


def rate(clients, start, end):
    count = sum(1 for c in clients for t, _ in c.grants if start <= t < end)
    return count / (end - start) if end > start else float("nan")


def fail_over(cluster, clients, how, window):
    old = cluster.primary()
    assert old is not None
    time.sleep(window)  # the window before the kill (the clients run meanwhile)
    kill = old.kill_postgres() if how == "postgres" else old.kill()
    new = cluster.wait_for_primary(other_than=old, timeout=300)
    promoted = time.monotonic() - kill
    # Answers of the old primary may still arrive just after the kill: count the new one's.
    ha.wait_for(lambda: all(any(p == new.port and t > kill for t, p in c.grants) for c in clients), 300,
                "every client to get a grant on the new primary")
    firsts = sorted(min(t for t, p in c.grants if p == new.port and t > kill) - kill for c in clients)
    if how != "postgres":
        old.start()
    cluster.wait_for_replica(old, 300)
    rejoined = time.monotonic()
    first_grant = kill + firsts[0]
    time.sleep(window)
    return {
        "killed": "PostgreSQL (Patroni alive)" if how == "postgres" else "the node (Patroni and PostgreSQL)",
        "new_primary": new.name,
        "before_per_s": rate(clients, kill - window, kill),
        "promoted_s": promoted,
        "first_grant_s": firsts[0],
        "median_client_s": statistics.median(firsts),
        "last_client_s": firsts[-1],
        "alone_s": rejoined - first_grant,
        "alone_per_s": rate(clients, first_grant, rejoined),
        "after_per_s": rate(clients, rejoined, rejoined + window),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--asynchronous", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    cluster = ha.Cluster(size=2, synchronous=not args.asynchronous, name="ha-bench")
    clients = []
    try:
        cluster.start(timeout=300)
        with psycopg.connect(cluster.connection_string(), autocommit=True) as conn:
            conn.execute("CREATE TABLE ha_bench (id int PRIMARY KEY, token bigint)")
            conn.execute("INSERT INTO ha_bench SELECT g, 0 FROM generate_series(0, %s) AS g", (RESOURCES - 1,))
        clients = [Client(n, cluster.connection_string()) for n in range(args.clients)]
        for client in clients:
            client.start()
        time.sleep(3)  # warm-up
        results = [fail_over(cluster, clients, how, args.window) for how in ("postgres", "node")]
    finally:
        for client in clients:
            client.stopping.set()
        for client in clients:
            client.join(30)
        cluster.stop()
    mode = "asynchronous" if args.asynchronous else "synchronous (synchronous_mode)"
    print(f"\n{args.clients} clients, {mode} replication, {os.cpu_count()} cores, "
          f"load average {load_before:.1f} before the run; times from the kill (SIGKILL)\n")
    print("| what died | grants/s before | new primary reported by Patroni | first grant, first client "
          "| first grant, median client | first grant, last client | grants/s, new primary alone "
          "| grants/s after the old primary rejoined |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['killed']} | {r['before_per_s']:.0f} | {r['promoted_s']:.1f} s | {r['first_grant_s']:.2f} s "
              f"| {r['median_client_s']:.2f} s | {r['last_client_s']:.2f} s "
              f"| {r['alone_per_s']:.0f} (for {r['alone_s']:.1f} s) | {r['after_per_s']:.0f} |")
    errors = [e for c in clients for e in c.errors]
    print(f"\nclient errors other than a lost connection: {len(errors)}")
    for error in errors[:10]:
        print(f"  {error}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"clients": args.clients, "mode": mode, "results": results, "errors": errors}, f, indent=1)


if __name__ == "__main__":
    main()
