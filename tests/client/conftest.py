"""Shared helpers for the out-of-process tests: real client connections (psycopg 3) to the
throwaway test server that scripts/test.sh started, and control of that server."""

import os
import subprocess
import threading
import time

import psycopg
import pytest

PORT = int(os.environ.get("LEASE_TEST_PORT", "54329"))
DATA_DIR = os.path.join(os.environ.get("LEASE_TEST_DIR", "/tmp/lease/test"), "data")
RUN_DIR = os.environ.get("LEASE_RUN_DIR", "/tmp/lease")
SERVER_USER = os.environ.get("LEASE_SERVER_USER", "postgres")
PG_BIN = "/usr/lib/postgresql/15/bin"
DATABASE = "lease_client_tests"


def dsn(port=PORT, dbname=DATABASE):
    return f"host=127.0.0.1 port={port} user=postgres dbname={dbname}"


def connect(autocommit=True, port=PORT, dbname=DATABASE, **kwargs):
    return psycopg.connect(dsn(port, dbname), autocommit=autocommit, **kwargs)


def wait_for(condition, timeout=30.0, what="condition"):
    """Polls `condition` until it is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def as_server_user(*args, check=True):
    prefix = [] if os.geteuid() != 0 else []
    command = ["sudo", "-u", SERVER_USER, *args]
    if os.geteuid() != 0:
        command = ["sudo", *command]
    return subprocess.run(prefix + command, cwd="/", check=check, capture_output=True, text=True)


def pg_ctl(*args, data_dir=DATA_DIR):
    return as_server_user(f"{PG_BIN}/pg_ctl", "-D", data_dir, *args)


def is_waiting_on_lock(observer, pid):
    row = observer.execute(
        "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return row == ("Lock", "advisory")


class Background:
    """Runs `function(connection)` on its own connection in a thread; `result()` joins it."""

    def __init__(self, function, autocommit=True):
        self.connection = connect(autocommit=autocommit)
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
    with connect(dbname="postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.execute(f"CREATE DATABASE {DATABASE}")
    with connect() as conn:
        conn.execute("CREATE EXTENSION lease")
    yield DATABASE


@pytest.fixture
def conn():
    with connect() as connection:
        yield connection


def one(conn, sql, params=()):
    return conn.execute(sql, params).fetchone()[0]
