"""Helpers for the client library's tests, against the test server that scripts/test.sh started
(LEASE_TEST_PORT, user postgres, database postgres): direct connections, deadline waits, a TCP
proxy that can stall, PgBouncer in transaction pooling mode, and holder processes."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import psycopg
import pytest

import pglease

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests"))
from support import SERVER_USER, free_port, wait_for  # noqa: E402,F401

PORT = int(os.environ.get("LEASE_TEST_PORT", "54329"))
HOLDER = os.path.join(os.path.dirname(__file__), "holder.py")


def dsn(port=PORT):
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def connect(autocommit=True, port=PORT):
    return psycopg.connect(dsn(port), autocommit=autocommit)


def one(conn, query, params=()):
    return conn.execute(query, params).fetchone()[0]


def server_user_command(*args):
    """The command line that runs `args` as the server's OS user."""
    command = ["sudo", "-u", SERVER_USER, *args]
    if os.geteuid() != 0:
        command = ["sudo", *command]
    return command


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


class PgBouncer:
    """PgBouncer 1.18 in transaction pooling mode in front of the test server, run as the
    server's OS user, with fewer server connections than client connections."""

    def __init__(self, pool_size=3):
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        assert os.path.exists(binary), "pgbouncer is not installed (scripts/common.sh: setup_pgbouncer)"
        self.dir = tempfile.mkdtemp(prefix="pglease-pgbouncer-")
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        with open(os.path.join(self.dir, "users.txt"), "w") as users:
            users.write('"postgres" ""\n')
        with open(os.path.join(self.dir, "pgbouncer.ini"), "w") as config:
            config.write(
                f"[databases]\npostgres = host=127.0.0.1 port={PORT} dbname=postgres\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {self.dir}/users.txt\npool_mode = transaction\n"
                f"default_pool_size = {pool_size}\nmax_client_conn = 100\nadmin_users = postgres\n"
                f"ignore_startup_parameters = extra_float_digits\n"
                f"logfile = {self.dir}/pgbouncer.log\npidfile = {self.dir}/pgbouncer.pid\n"
            )
        for name in os.listdir(self.dir):
            os.chmod(os.path.join(self.dir, name), 0o666)
        self.process = subprocess.Popen(server_user_command(binary, os.path.join(self.dir, "pgbouncer.ini")),
                                        cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ready, timeout=30, what="pgbouncer to accept connections")

    def _ready(self):
        try:
            with psycopg.connect(dsn(self.port), autocommit=True, prepare_threshold=None, connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    def pools(self):
        """SHOW POOLS of the admin console: (database, sv_active + sv_idle + sv_used...)."""
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=pgbouncer", autocommit=True,
                             prepare_threshold=None) as admin:
            cursor = admin.cursor()
            cursor.execute("SHOW POOLS", prepare=False)
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


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
