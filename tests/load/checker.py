#!/usr/bin/env python3
"""Randomized load with a fault injector and a checker for the lease extension.

N client sessions (psycopg 3, one connection each) acquire, re-acquire, renew and release leases
on a few resources with short ttls, make fenced writes (also with stale tokens) and pause longer
than the ttl, while a fault injector terminates random client backends and, once per run,
crashes the server (`pg_ctl stop -m immediate`) and starts it again. Every operation is
recorded; afterwards the checker proves five properties from the record and the database
(see properties.py) and writes a report. Exit status 0 means zero violations.

It needs a running cluster with the extension installed and preloaded whose data directory it
may stop and start as the server's OS user (use a throwaway cluster with fsync on):

    tests/load/checker.py --port 54331 --data-dir /tmp/lease/load/data --seconds 30 --report load.md

tests/load/run.sh makes such a cluster, runs this program and removes the cluster."""

import argparse
import os
import pickle
import random
import re
import sys
import time
import uuid

import psycopg

from faults import FaultInjector, Server, connect_when_up
from properties import Run, check
from report import write
from selftest import self_test
from workload import FENCE, NO_FENCE, Load, Session

LOG_PROBLEMS = ("terminated by signal", "PANIC:", "TRAP:", "terminating any other active server processes",
                "was terminated by exception", "exited with exit code")
# With log_line_prefix = '%m [%p] %b ' (as run.sh and the test set it): errors of server processes
# other than client backends (the expiry worker, recovery...); autovacuum cancels itself routinely.
SERVER_PROCESS_ERROR = re.compile(r"\] (?!client backend |autovacuum )[a-z ]+ (ERROR|FATAL|PANIC):")
FINISH_GRACE = 60.0
RUN_SETTINGS = ("seconds", "sessions", "resources", "long_resources", "seed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--dbname", default="postgres")
    parser.add_argument("--data-dir", help="data directory of the cluster, to crash and restart it")
    parser.add_argument("--log", help="the server's log file (default: server.log next to the data directory)")
    parser.add_argument("--server-user", default=os.environ.get("LEASE_SERVER_USER", "postgres"))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--resources", type=int, default=8, help="resources with ttls of 100-300 ms")
    parser.add_argument("--long-resources", type=int, default=4, help="resources with ttls of 5-20 s")
    parser.add_argument("--restarts", type=int, default=1, help="crashes per run (needs --data-dir)")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--report", help="write the Markdown report here")
    parser.add_argument("--json", help="write a JSON summary here")
    parser.add_argument("--self-test", action="store_true",
                        help="also check broken copies of the record and fail unless each fault is caught")
    parser.add_argument("--unfenced", action="store_true",
                        help="a broken model: check leases without fencing the writes (must find violations)")
    parser.add_argument("--dump", help="save the record here (pickle), to check it again with --recheck")
    parser.add_argument("--recheck", help="check a record saved with --dump instead of running a load")
    config = parser.parse_args(argv)
    if config.recheck:
        return config
    if config.port is None:
        parser.error("--port is required")
    if config.restarts and not config.data_dir:
        parser.error("--restarts needs --data-dir (or pass --restarts 0)")
    if config.data_dir and not config.log:
        config.log = os.path.join(os.path.dirname(os.path.abspath(config.data_dir)), "server.log")
    return config


def set_up_database(dsn, resources):
    """Fresh tables for the fenced writes: one protected row per resource and a write log."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("CREATE EXTENSION IF NOT EXISTS lease")
        conn.execute("DROP SCHEMA IF EXISTS lease_load CASCADE")
        conn.execute("CREATE SCHEMA lease_load")
        conn.execute("CREATE TABLE lease_load.protected (resource text PRIMARY KEY, token bigint, "
                     "writes bigint NOT NULL DEFAULT 0)")
        conn.execute("CREATE TABLE lease_load.writes (resource text, seq bigint, token bigint NOT NULL, "
                     "at timestamptz NOT NULL, session integer, PRIMARY KEY (resource, seq))")
        conn.execute("INSERT INTO lease_load.protected (resource) SELECT unnest(%s::text[])", (resources,))


def run_load(config, load, server, prefix):
    """Runs the sessions and the fault injector for the configured time; returns the injector."""
    sessions = [Session(index, load) for index in range(config.sessions)]
    injector = FaultInjector(load, server, config.seconds, config.restarts, prefix)
    for thread in [injector, *sessions]:
        thread.start()
    time.sleep(config.seconds)
    load.stopping.set()
    injector.join(300)
    deadline = time.monotonic() + FINISH_GRACE
    for session in sessions:
        session.join(max(0.0, deadline - time.monotonic()))
    stuck = [s for s in sessions if s.is_alive()]
    if stuck:
        load.failures.append(f"sessions {[s.index for s in stuck]} did not finish within {FINISH_GRACE} s")
        with connect_when_up(load.dsn) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name LIKE 'lease-load-s%'")
        for session in stuck:
            session.join(10)
    return injector


def collect(load, injector, prefix, log_problems):
    """The record, and what the database holds after the run."""
    writes, protected, final = [], {}, {}
    try:
        with connect_when_up(load.dsn) as conn:
            writes = conn.execute("SELECT resource, seq, token, at FROM lease_load.writes").fetchall()
            protected = {r: (t, w) for r, t, w in conn.execute("SELECT resource, token, writes FROM lease_load.protected")}
            final = dict(conn.execute("SELECT resource, token FROM lease.leases WHERE resource LIKE %s", (prefix + "%",)))
    except psycopg.Error as error:
        load.failures.append(f"could not read the database after the run: {error}")
    return Run(load.ops, injector.terminations, injector.restarts, writes, protected, final,
               load.failures, log_problems, load.pids)


def server_log_problems(server, offset):
    if server is None:
        return []
    return [line for line in server.log_since(offset).splitlines()
            if any(p in line for p in LOG_PROBLEMS) or SERVER_PROCESS_ERROR.search(line)]


def record_run(config):
    """Runs the load and returns its record and how long it took."""
    dsn = f"host={config.host} port={config.port} user=postgres dbname={config.dbname}"
    prefix = f"load:{uuid.uuid4().hex[:8]}:"
    short = [f"{prefix}short:{n}" for n in range(config.resources)]
    long = [f"{prefix}long:{n}" for n in range(config.long_resources)]
    set_up_database(dsn, short + long)
    server = Server(config.data_dir, config.log, config.server_user) if config.data_dir else None
    offset = server.log_size() if server else 0
    load = Load(dsn, short, long, config.seed, NO_FENCE if config.unfenced else FENCE)
    started = time.monotonic()
    injector = run_load(config, load, server, prefix)
    elapsed = time.monotonic() - started
    run = collect(load, injector, prefix, server_log_problems(server, offset))
    if config.dump:
        settings = {name: getattr(config, name) for name in RUN_SETTINGS}
        with open(config.dump, "wb") as out:
            pickle.dump((settings, run, elapsed), out)
    return run, elapsed


def main(argv=None):
    config = parse_args(argv)
    if config.recheck:
        with open(config.recheck, "rb") as saved:
            settings, run, elapsed = pickle.load(saved)
        vars(config).update(settings)
    else:
        run, elapsed = record_run(config)
    results = check(run)
    tests = self_test(run, results) if config.self_test else None
    text, data = write(config, run, results, elapsed, tests)
    print(text)
    missed = tests is not None and not all(t["caught"] for t in tests)
    return 1 if data["violations"] or missed else 0


if __name__ == "__main__":
    sys.exit(main())
