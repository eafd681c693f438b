"""Helpers every Python test tree of the project shares (tests/client, tests/ha,
clients/python/tests): waiting for a condition with a deadline, free loopback ports, and
running commands as root or as the server's OS user."""

import os
import socket
import subprocess
import time

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
