"""Shared helpers for the out-of-process tests: real client connections (psycopg 3) to the
throwaway test server that scripts/test.sh started, and control of that server."""

import json
import os
import pathlib
import sys
import threading
import time

import psycopg
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from support import SERVER_USER, as_root, as_server_user, free_port, wait_for  # noqa: E402,F401

PORT = int(os.environ.get("LEASE_TEST_PORT", "54329"))
DATA_DIR = os.path.join(os.environ.get("LEASE_TEST_DIR", "/tmp/lease/test"), "data")
RUN_DIR = os.environ.get("LEASE_RUN_DIR", "/tmp/lease")
PG_BIN = "/usr/lib/postgresql/15/bin"
# The client tests use the database postgres (it has the extension and an expiry worker).
DATABASE = "postgres"


def dsn(port=PORT, dbname=DATABASE):
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname}"


def connect(autocommit=True, port=PORT, dbname=DATABASE, **kwargs):
    return psycopg.connect(dsn(port, dbname), autocommit=autocommit, **kwargs)


def pg_ctl(*args, data_dir=DATA_DIR, check=True):
    return as_server_user(f"{PG_BIN}/pg_ctl", "-D", data_dir, *args, check=check)


def is_waiting_for_lease(observer, pid):
    """Whether `pid` sleeps in lease_acquire(..., wait => ...) (on its latch)."""
    row = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row == ("Extension",)


def is_waiting_on_lock(observer, pid):
    row = observer.execute(
        "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return row == ("Lock", "advisory")


class Background:
    """Runs `function(connection)` on its own connection in a thread; `result()` joins it."""

    def __init__(self, function, autocommit=True, dbname=DATABASE):
        self.connection = connect(autocommit=autocommit, dbname=dbname)
        self.pid = self.connection.info.backend_pid
        self._value = None
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function):
        try:
            self._value = function(self.connection)
        except BaseException as error:  # reported by result()
            self._error = error

    def done(self):
        return not self._thread.is_alive()

    def result(self, timeout=30.0):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        self.connection.close()
        if self._error is not None:
            raise self._error
        return self._value


@pytest.fixture(scope="session", autouse=True)
def database():
    with connect() as conn:
        conn.execute("DROP EXTENSION IF EXISTS lease CASCADE")
        conn.execute("CREATE EXTENSION lease")
        # The first lease change asks the launcher for this database's worker; until it runs,
        # events go out directly (without seq). Every test starts with the worker serving.
        conn.execute("SELECT lease_release('test-setup', lease_acquire('test-setup', 'setup'))")
        wait_for(lambda: worker_pid(conn) is not None, what="the expiry worker")
    yield DATABASE


@pytest.fixture
def conn():
    with connect() as connection:
        yield connection


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]


class Listener:
    """A connection that LISTENs on the lease event channel and collects parsed payloads."""

    def __init__(self, channel="lease_events", port=PORT, dbname=DATABASE):
        self.connection = connect(port=port, dbname=dbname)
        self.connection.execute(f"LISTEN {channel}")
        self.received = []

    def until(self, predicate, timeout=30.0, what="events"):
        """Collects events until `predicate(events)` holds; returns the events received."""
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; received {self.received}")
            for notify in self.connection.notifies(timeout=min(remaining, 0.5), stop_after=1):
                self.received.append(json.loads(notify.payload))
        return self.received

    def events_for(self, resource):
        return [e for e in self.received if e["resource"] == resource]

    def close(self):
        self.connection.close()


@pytest.fixture
def listener():
    listening = Listener()
    yield listening
    listening.close()


@pytest.fixture
def name(request):
    """A prefix of the test's own for resource and lifeline names (the module's NAME_PREFIX,
    then the test's name); its leases and lifelines are removed afterwards."""
    node = request.node.name.replace("[", ":").replace("]", "")
    prefix = f"{getattr(request.module, 'NAME_PREFIX', 't')}:{node}:"
    yield prefix
    with connect() as c:
        c.execute("DELETE FROM lease.leases WHERE resource LIKE %s", (prefix + "%",))
        c.execute("DELETE FROM lease.lifelines WHERE name LIKE %s", (prefix + "%",))


def sqlstate_of(conn, sql, params=()):
    """The SQLSTATE of the error `sql` raises (None if it succeeds); `conn` is autocommit."""
    try:
        conn.execute(sql, params)
    except psycopg.Error as error:
        return error.sqlstate
    return None


def reload_settings(conn, **settings):
    """ALTER SYSTEM for each setting (None resets it), then reload and wait until it is seen."""
    for name, value in settings.items():
        if value is None:
            conn.execute(f"ALTER SYSTEM RESET lease.{name}")
        else:
            conn.execute(f"ALTER SYSTEM SET lease.{name} = '{value}'")
    conn.execute("SELECT pg_reload_conf()")

    def applied():
        with connect() as fresh:
            for name, value in settings.items():
                shown = one(fresh, f"SELECT current_setting('lease.{name}')")
                default = one(fresh, f"SELECT boot_val FROM pg_settings WHERE name = 'lease.{name}'")
                if shown != (default if value is None else value):
                    return False
        return True

    wait_for(applied, what=f"settings {settings} to apply")


def worker_pid(conn):
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease expirer' AND datname = current_database()"
    ).fetchone()
    return row[0] if row else None


class Standby:
    """A streaming standby of the test server, made with pg_basebackup, on its own port."""

    def __init__(self, name, port):
        self.dir = os.path.join(RUN_DIR, name)
        self.data = os.path.join(self.dir, "data")
        self.port = port
        as_root("rm", "-rf", self.dir)
        as_root("mkdir", "-p", self.dir)
        as_root("chown", SERVER_USER, self.dir)
        as_server_user(
            f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres",
            "-D", self.data, "-R", "-X", "stream", "-c", "fast",
        )
        settings = f"port = {port}\nunix_socket_directories = '{self.dir}'\n"
        as_server_user("sh", "-c", f"printf \"{settings}\" >> {self.data}/postgresql.auto.conf")
        pg_ctl("-l", f"{self.dir}/server.log", "-w", "start", data_dir=self.data)

    def wait_for_replay(self, primary):
        lsn = one(primary, "SELECT pg_current_wal_lsn()")
        with connect(port=self.port) as replica:
            wait_for(lambda: one(replica, "SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)), what="replay")

    def disconnect(self):
        """Stops streaming from the primary (as a network partition would)."""
        as_server_user("sh", "-c", f"echo \"primary_conninfo = ''\" >> {self.data}/postgresql.auto.conf")
        pg_ctl("reload", data_dir=self.data)
        with connect(port=self.port) as replica:
            wait_for(lambda: one(replica, "SELECT count(*) FROM pg_stat_wal_receiver") == 0, what="streaming to stop")

    def promote(self):
        pg_ctl("-w", "promote", data_dir=self.data)

    def destroy(self):
        pg_ctl("-m", "immediate", "stop", data_dir=self.data, check=False)
        as_root("rm", "-rf", self.dir, check=False)
