"""On a hot standby the API refuses to change leases (25006, with a hint), and inspection works."""

import os

import psycopg
import pytest

from conftest import PG_BIN, PORT, RUN_DIR, as_server_user, connect, one, wait_for

STANDBY_PORT = PORT + 1
STANDBY_DIR = os.path.join(RUN_DIR, "test-standby")


@pytest.fixture(scope="module")
def standby():
    as_server_user("rm", "-rf", STANDBY_DIR)
    as_server_user("mkdir", "-p", STANDBY_DIR)
    as_server_user(
        f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres",
        "-D", f"{STANDBY_DIR}/data", "-R", "-X", "stream", "-c", "fast",
    )
    as_server_user(
        "sh", "-c",
        f"echo \"port = {STANDBY_PORT}\nunix_socket_directories = '{STANDBY_DIR}'\" >> {STANDBY_DIR}/data/postgresql.auto.conf",
    )
    as_server_user(f"{PG_BIN}/pg_ctl", "-D", f"{STANDBY_DIR}/data", "-l", f"{STANDBY_DIR}/server.log", "-w", "start")
    try:
        yield STANDBY_PORT
    finally:
        as_server_user(f"{PG_BIN}/pg_ctl", "-D", f"{STANDBY_DIR}/data", "-m", "immediate", "stop", check=False)
        as_server_user("rm", "-rf", STANDBY_DIR, check=False)


def test_api_on_a_standby(standby):
    with connect() as primary:
        token = one(primary, "SELECT lease_acquire('standby:1', 'primary-holder', '1 hour')")
        lsn = one(primary, "SELECT pg_current_wal_lsn()")
    with connect(port=standby) as replica:
        assert one(replica, "SELECT pg_is_in_recovery()") is True
        wait_for(lambda: one(replica, "SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)), what="replay")
        assert replica.execute("SELECT holder, token FROM lease_info('standby:1')").fetchone() == ("primary-holder", token)
        calls = [
            "SELECT lease_acquire('standby:2', 'h')",
            f"SELECT lease_renew('standby:1', {token})",
            f"SELECT lease_release('standby:1', {token})",
            f"SELECT lease_check('standby:1', {token})",
            f"SELECT lease_assert('standby:1', {token})",
        ]
        for call in calls:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as raised:
                replica.execute(call)
            assert raised.value.diag.message_primary == "cannot acquire, renew, release or check leases during recovery"
            assert "primary" in raised.value.diag.message_hint
    with connect() as primary:
        assert one(primary, "SELECT lease_release('standby:1', %s)", (token,)) is True
