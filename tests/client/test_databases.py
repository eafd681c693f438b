"""Several databases in one cluster: the launcher starts one expiry worker per database that has
the extension (once the extension is used there), each worker expires and announces its own
database's leases, a worker exits when its extension is dropped, and lease.database restricts
the workers to one database."""

import pytest

from conftest import Listener, connect, one, wait_for
from test_durability import restart

DATABASES = ("lease_db_a", "lease_db_b", "lease_db_c")


def expirers(conn):
    rows = conn.execute(
        "SELECT datname FROM pg_stat_activity WHERE backend_type = 'lease expirer' AND datname LIKE 'lease_db_%'"
    ).fetchall()
    return sorted(name for (name,) in rows)


@pytest.fixture(scope="module", autouse=True)
def every_database_served():
    """The test server restricts the workers to the database postgres; lift that here."""
    with connect() as admin:
        admin.execute("ALTER SYSTEM SET lease.database = ''")
    restart("fast")
    yield
    with connect() as admin:
        admin.execute("ALTER SYSTEM RESET lease.database")
    restart("fast")


@pytest.fixture
def databases():
    with connect() as admin:
        for name in DATABASES:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
    for name in DATABASES:
        with connect(dbname=name) as conn:
            conn.execute("CREATE EXTENSION lease")
    yield DATABASES
    with connect() as admin:
        for name in DATABASES:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_one_worker_per_database_each_expiring_its_own_leases(databases):
    # The first lease change committed in a database without a worker is announced directly
    # and asks the launcher for a worker.
    for name in databases:
        with connect(dbname=name) as conn:
            one(conn, "SELECT lease_acquire('first', 'h', '1 hour')")
    with connect() as admin:
        wait_for(lambda: expirers(admin) == list(databases), what="a worker in each database")
    listeners = {name: Listener(dbname=name) for name in databases}
    try:
        tokens = {}
        for name in databases:
            with connect(dbname=name) as conn:
                # The same resource name in each database: leases are per database.
                tokens[name] = one(conn, "SELECT lease_acquire('shared-name', %s, '200 ms')", (name,))
        for name, listener in listeners.items():
            events = listener.until(lambda got: len(got) == 2, what=f"events in {name}")
            assert [(e["event"], e["resource"], e["holder"], e["token"]) for e in events] == [
                ("acquired", "shared-name", name, tokens[name]),
                ("expired", "shared-name", name, tokens[name]),
            ]
            # Published by the worker, through the database's own ring: numbered from 1.
            assert [e["seq"] for e in events] == [1, 2]
            with connect(dbname=name) as conn:
                assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = 'shared-name'") == 0
    finally:
        for listener in listeners.values():
            listener.close()


def test_dropping_the_extension_stops_that_worker_only(databases):
    for name in databases:
        with connect(dbname=name) as conn:
            one(conn, "SELECT lease_acquire('r', 'h', '1 hour')")
    with connect() as admin:
        wait_for(lambda: expirers(admin) == list(databases), what="a worker in each database")
        with connect(dbname="lease_db_b") as conn:
            conn.execute("DROP EXTENSION lease")
        wait_for(lambda: expirers(admin) == ["lease_db_a", "lease_db_c"], what="lease_db_b's worker to exit")
        # Created again and used: the worker comes back.
        with connect(dbname="lease_db_b") as conn:
            conn.execute("CREATE EXTENSION lease")
            one(conn, "SELECT lease_acquire('r', 'h', '1 hour')")
        wait_for(lambda: expirers(admin) == list(databases), what="lease_db_b's worker to return")


def test_lease_database_restricts_the_workers_to_one_database(databases):
    with connect() as admin:
        admin.execute("ALTER SYSTEM SET lease.database = 'lease_db_c'")
        try:
            restart("fast")
            for name in databases:
                with connect(dbname=name) as conn:
                    one(conn, "SELECT lease_acquire('r', 'h', '1 hour')")
            with connect() as conn:
                wait_for(lambda: expirers(conn) == ["lease_db_c"], what="a worker in lease_db_c")
                assert one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease expirer'") == 1
        finally:
            with connect() as conn:
                conn.execute("ALTER SYSTEM SET lease.database = ''")
            restart("fast")
