"""Helpers for the client library's tests, against the test server that scripts/test.sh started
(LEASE_TEST_PORT, user postgres, database postgres): direct connections, deadline waits, a TCP
proxy that can stall, PgBouncer in transaction pooling mode, and holder processes."""

import os
import re
import socket
import subprocess
import sys
import threading

import psycopg
import pytest

import pglease

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests"))
import support  # noqa: E402
from support import SERVER_USER, free_port, wait_for  # noqa: E402,F401

PORT = int(os.environ.get("LEASE_TEST_PORT", "54329"))
HOLDER = os.path.join(os.path.dirname(__file__), "holder.py")


def dsn(port=PORT):
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def connect(autocommit=True, port=PORT):
    return psycopg.connect(dsn(port), autocommit=autocommit)


def one(conn, query, params=()):
    return conn.execute(query, params).fetchone()[0]


@pytest.fixture(scope="session", autouse=True)
def extension():
    with connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS lease")
        conn.execute("SELECT lease_release('pglease-setup', lease_acquire('pglease-setup', 'setup'))")
        wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease expirer' "
                                   "AND datname = current_database()"), what="the expiry worker")


@pytest.fixture
def conn():
    with connect() as connection:
        yield connection


@pytest.fixture
def resource(request):
    """A resource name of the test's own; no lease left on it afterwards."""
    name = "pglease:" + re.sub(r"\W+", "-", request.node.name)
    yield name
    with connect() as conn:
        conn.execute("SELECT lease_force_release(%s)", (name,))


@pytest.fixture
def clients():
    """Makes blocking clients (direct to the server unless given a dsn) and closes them at the end."""
    made = []

    def make(conninfo=None, **options):
        made.append(pglease.Client(conninfo or dsn(), **options))
        return made[-1]

    yield make
    for client in made:
        client.close()


def server_clock(conn):
    return one(conn, "SELECT clock_timestamp()")


class Proxy:
    """A TCP proxy to the server whose traffic can be stalled (bytes held, connections kept
    open), as a network that stops delivering would."""

    def __init__(self, target_port=PORT):
        self.target_port = target_port
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source, target):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self.flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stall(self):
        self.flowing.clear()

    def resume(self):
        self.flowing.set()

    def close(self):
        self.flowing.set()
        self.server.close()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def proxy():
    made = Proxy()
    yield made
    made.close()


class PgBouncer(support.PgBouncer):
    """PgBouncer 1.18 in transaction pooling mode in front of the test server (tests/support.py),
    with fewer server connections than client connections."""

    def __init__(self, pool_size=3):
        super().__init__(PORT, pool_size)


class Program:
    """A child process (the holder script) whose output lines are collected as they come."""

    def __init__(self, *args):
        env = os.environ | {"PGLEASE_DSN": dsn()}
        self.process = subprocess.Popen([sys.executable, HOLDER, *args], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def line(self, pattern, timeout=30.0):
        regex = re.compile(pattern)
        return wait_for(lambda: next((m for m in map(regex.fullmatch, list(self.lines)) if m), None), timeout,
                        what=f"a line matching {pattern!r}; got {self.lines}")

    def state(self):
        """The process state letter of /proc/PID/stat ("T": stopped)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]

    def signal(self, number):
        self.process.send_signal(number)

    def finish(self, timeout=30.0):
        return self.process.wait(timeout)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def programs():
    started = []

    def start(*args):
        started.append(Program(*args))
        return started[-1]

    yield start
    for program in started:
        program.kill()
