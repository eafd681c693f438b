"""The calls that read and write lease.leases directly (without SPI) behave as the SQL
statements did: they keep the table's locks until the transaction ends, refuse to write in a
read-only transaction, and maintain every index of the table, also one an administrator adds
(here: on an expression)."""

import psycopg
import pytest

from conftest import connect, one


def table_locks(conn, pid):
    return sorted(
        mode
        for (mode,) in conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = %s AND relation = 'lease.leases'::regclass AND granted",
            (pid,),
        ).fetchall()
    )


def test_table_locks_are_kept_until_the_transaction_ends(conn):
    with connect(autocommit=False) as tx:
        pid = tx.info.backend_pid
        token = one(tx, "SELECT lease_acquire('direct:locks', 'h', '1 min')")
        assert "RowExclusiveLock" in table_locks(conn, pid)
        assert one(tx, "SELECT lease_release('direct:locks', %s)", (token,)) is True
        assert "RowExclusiveLock" in table_locks(conn, pid)
        tx.commit()
        assert table_locks(conn, pid) == []


def test_writes_are_refused_in_a_read_only_transaction(conn):
    token = one(conn, "SELECT lease_acquire('direct:read-only', 'h', '1 min')")
    with connect(autocommit=False) as tx:
        tx.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            tx.execute("SELECT lease_release('direct:read-only', %s)", (token,))
        tx.rollback()
        tx.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            tx.execute("SELECT lease_acquire('direct:read-only-2', 'h')")
        tx.rollback()
        # Checks only read.
        tx.execute("SET TRANSACTION READ ONLY")
        assert one(tx, "SELECT lease_check('direct:read-only', %s)", (token,)) is True
        tx.rollback()
    assert one(conn, "SELECT lease_release('direct:read-only', %s)", (token,)) is True


def test_an_index_an_administrator_adds_is_maintained(conn):
    conn.execute("CREATE INDEX leases_holder_lower ON lease.leases (lower(holder))")
    try:
        with connect() as caller:
            token = one(caller, "SELECT lease_acquire('direct:indexed', 'Holder', '1 min')")
            assert one(caller, "SELECT lease_acquire('direct:indexed', 'other', '1 min')") is None
            assert one(caller, "SELECT lease_check('direct:indexed', %s)", (token,)) is True
            # The expression index got its entry.
            caller.execute("SET enable_seqscan = off")
            caller.execute("SET enable_bitmapscan = off")
            plan = caller.execute("EXPLAIN SELECT 1 FROM lease.leases WHERE lower(holder) = 'holder'").fetchall()
            assert "leases_holder_lower" in " ".join(line for (line,) in plan)
            assert one(caller, "SELECT count(*) FROM lease.leases WHERE lower(holder) = 'holder'") == 1
            assert one(caller, "SELECT lease_release('direct:indexed', %s)", (token,)) is True
    finally:
        conn.execute("DROP INDEX lease.leases_holder_lower")
