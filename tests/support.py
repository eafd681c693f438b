"""Helpers every Python test tree of the project shares (tests/client, tests/ha,
clients/python/tests): waiting for a condition with a deadline, free loopback ports, running
commands as root or as the server's OS user, and PgBouncer in transaction pooling mode."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg

SERVER_USER = os.environ.get("LEASE_SERVER_USER", "postgres")


def wait_for(condition, timeout=30.0, what="condition"):
    """Polls `condition` until it returns something true and returns that; fails (AssertionError)
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def free_port():
    """A loopback port free right now. Client connections take their local ports from the
    ephemeral range, which holds the 54xxx ports too: a server started during the tests on a
    fixed port there can find it taken by one of the many connections (in TIME_WAIT) the tests
    made before."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_root(*args, check=True):
    command = list(args) if os.geteuid() == 0 else ["sudo", *args]
    return subprocess.run(command, cwd="/", check=check, capture_output=True, text=True)


def as_server_user(*args, check=True):
    return as_root("sudo", "-u", SERVER_USER, *args, check=check)


def server_user_command(*args):
    """The command line that runs `args` as the server's OS user."""
    command = ["sudo", "-u", SERVER_USER, *args]
    if os.geteuid() != 0:
        command = ["sudo", *command]
    return command


class PgBouncer:
    """PgBouncer 1.18 in transaction pooling mode in front of the server on 127.0.0.1:`target_port`
    (its database postgres, user postgres), run as the server's OS user on a free port, with
    `pool_size` server connections (fewer than the client connections the tests make)."""

    def __init__(self, target_port, pool_size=3):
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        assert os.path.exists(binary), "pgbouncer is not installed (scripts/common.sh: setup_pgbouncer)"
        self.dir = tempfile.mkdtemp(prefix="pglease-pgbouncer-")
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        with open(os.path.join(self.dir, "users.txt"), "w") as users:
            users.write('"postgres" ""\n')
        with open(os.path.join(self.dir, "pgbouncer.ini"), "w") as config:
            config.write(
                f"[databases]\npostgres = host=127.0.0.1 port={target_port} dbname=postgres\n"
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

    def dsn(self):
        """The connection string of a client of the pooled database postgres."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def connect(self, autocommit=True):
        """A client connection through PgBouncer. No prepared statements: a transaction pooler
        hands each transaction to any server connection."""
        return psycopg.connect(self.dsn(), autocommit=autocommit, prepare_threshold=None, connect_timeout=5)

    def _ready(self):
        try:
            with psycopg.connect(self.dsn(), autocommit=True, prepare_threshold=None, connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    def pools(self):
        """SHOW POOLS of the admin console, one dict a pool (database, pool_mode, sv_active...)."""
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
