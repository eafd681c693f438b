"""The fault injector and server control: terminates random client backends of the load, and once
per run takes two long leases of its own, stops the server with `pg_ctl stop -m immediate` (a
crash with real recovery) and starts it again, snapshotting the lease table before any client
may reconnect. Used by checker.py."""

import os
import pwd
import random
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from workload import Session

PG_BIN = "/usr/lib/postgresql/15/bin"
WITNESS_SESSION = -2
WITNESS_LEASES = 2
WITNESS_TTL = 60.0


@dataclass
class Restart:
    """One crash and restart: server clock before the stop, and the first look afterwards."""
    before: datetime
    up: datetime | None = None
    seconds_down: float = 0.0
    snapshot: dict = field(default_factory=dict)   # resource -> (token, expires_at)
    other_clients: int = 0                          # client backends seen at snapshot time


@dataclass
class Termination:
    at: datetime
    pid: int
    session: str


class Server:
    """pg_ctl on a cluster's data directory, run as the server's OS user."""

    def __init__(self, data_dir, log_file, user):
        self.data_dir = data_dir
        self.log_file = log_file
        self.user = user

    def _run(self, *args, check=True):
        command = list(args)
        if pwd.getpwuid(os.geteuid()).pw_name != self.user:
            command = ["sudo", "-u", self.user, *command]
        return subprocess.run(command, cwd="/", check=check, capture_output=True, text=True)

    def crash(self):
        self._run(f"{PG_BIN}/pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop")

    def start(self):
        self._run(f"{PG_BIN}/pg_ctl", "-D", self.data_dir, "-l", self.log_file, "-w", "-t", "120", "start")

    def log_size(self):
        result = self._run("stat", "-c", "%s", self.log_file, check=False)
        return int(result.stdout.strip() or 0)

    def log_since(self, offset):
        return self._run("cat", self.log_file).stdout[offset:]


def connect_when_up(dsn, deadline_seconds=120.0):
    """Connects once the server accepts connections and is out of recovery."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                                   application_name="lease-load-injector")
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return conn
            conn.close()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


class FaultInjector(threading.Thread):
    """Every 0.2 to 0.8 s terminates a random session's backend; once, at a random moment in
    the middle of the run, crashes and restarts the server (if `server` is given)."""

    def __init__(self, load, server, seconds, restarts, prefix):
        super().__init__(name="fault-injector", daemon=True)
        self.load = load
        self.server = server
        self.rng = random.Random(load.seed)
        start = time.monotonic()
        self.crash_times = sorted(start + self.rng.uniform(0.35, 0.65) * seconds for _ in range(restarts))
        self.prefix = prefix
        self.terminations = []
        self.restarts = []
        self.conn = None

    def run(self):
        try:
            while not self.load.stopping.wait(self.rng.uniform(0.2, 0.8)):
                if self.crash_times and time.monotonic() >= self.crash_times[0]:
                    self.crash_times.pop(0)
                    self.crash_and_restart()
                else:
                    self.terminate_a_session()
        except Exception:
            self.load.failures.append(f"fault injector: {traceback.format_exc()}")
            self.load.gate.open()
        finally:
            if self.conn is not None:
                self.conn.close()

    def terminate_a_session(self):
        try:
            self.terminate_one()
        except psycopg.OperationalError:  # the server went away by itself: the log check reports it
            self.conn.close()
            self.conn = None

    def terminate_one(self):
        if self.conn is None:
            self.conn = connect_when_up(self.load.dsn)
        rows = self.conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE 'lease-load-s%'"
        ).fetchall()
        if not rows:
            return
        pid, name = self.rng.choice(rows)
        at, done = self.conn.execute("SELECT clock_timestamp(), pg_terminate_backend(%s)", (pid,)).fetchone()
        if done:
            self.terminations.append(Termination(at, pid, name))

    def take_witness_leases(self, number):
        """Leases with a long ttl, committed just before the crash, that must survive it (the
        sessions' own long leases may all happen to be free or session-bound at that moment)."""
        witness = Session(WITNESS_SESSION, self.load)
        if not witness.reconnect():
            return
        for n in range(WITNESS_LEASES):
            witness.acquire(f"{self.prefix}witness:{number}:{n}", WITNESS_TTL, None, False, "acquire")
        if witness.conn is not None:
            witness.conn.close()

    def crash_and_restart(self):
        self.take_witness_leases(len(self.restarts))
        self.load.gate.close()
        if self.conn is None:
            self.conn = connect_when_up(self.load.dsn)
        restart = Restart(before=self.conn.execute("SELECT clock_timestamp()").fetchone()[0])
        self.conn.close()
        self.conn = None
        started = time.monotonic()
        self.server.crash()
        self.server.start()
        self.conn = connect_when_up(self.load.dsn)
        restart.seconds_down = time.monotonic() - started
        self.snapshot(restart)
        self.restarts.append(restart)
        self.load.gate.open()

    def snapshot(self, restart):
        """The lease table as recovery left it, before any session may reconnect. The clock is
        read after the snapshot was taken, so a lease expiring after it was in the snapshot."""
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = self.conn.execute(
                "SELECT resource, token, expires_at FROM lease.leases WHERE resource LIKE %s", (self.prefix + "%",)
            ).fetchall()
            restart.other_clients = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            restart.up = self.conn.execute("SELECT clock_timestamp()").fetchone()[0]
        restart.snapshot = {resource: (token, expires_at) for resource, token, expires_at in rows}
