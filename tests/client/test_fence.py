"""The fence: a passed lease_check keeps every other grant out until the writer's transaction
ends, even when the lease expires meanwhile; and a superseded token never passes."""

import psycopg
import pytest

from conftest import Background, connect, is_waiting_for_lease, is_waiting_on_lock, one, wait_for


def expire_now(conn, resource):
    """Waits until the server clock is past the lease's expiry (no guessed sleep). The expiry
    worker may remove the row meanwhile, so the expiry is read once, first."""
    expires_at = one(conn, "SELECT expires_at FROM lease.leases WHERE resource = %s", (resource,))
    wait_for(lambda: one(conn, "SELECT clock_timestamp() > %s", (expires_at,)), what=f"{resource} to expire")


def test_takeover_blocks_until_the_fenced_writer_commits(conn):
    conn.execute("DROP TABLE IF EXISTS fenced_jobs")
    conn.execute("CREATE TABLE fenced_jobs (id int PRIMARY KEY, done_by bigint)")
    conn.execute("INSERT INTO fenced_jobs VALUES (1, NULL)")
    token = one(conn, "SELECT lease_acquire('fence:commit', 'writer', '200 ms')")
    with connect(autocommit=False) as writer:
        updated = writer.execute(
            "UPDATE fenced_jobs SET done_by = %s WHERE id = 1 AND lease_check('fence:commit', %s)",
            (token, token),
        ).rowcount
        assert updated == 1
        expire_now(conn, "fence:commit")
        # without wait the takeover is refused at once; with wait it waits for the writer
        assert one(conn, "SELECT lease_acquire('fence:commit', 'taker', '1 min')") is None
        taker = Background(lambda c: one(c, "SELECT lease_acquire('fence:commit', 'taker', '1 min', wait => '1 min')"))
        wait_for(lambda: is_waiting_for_lease(conn, taker.pid), what="the takeover to wait")
        assert not taker.done()
        writer.commit()
    new_token = taker.result()
    assert new_token > token
    assert one(conn, "SELECT done_by FROM fenced_jobs WHERE id = 1") == token
    assert one(conn, "SELECT lease_check('fence:commit', %s)", (token,)) is False


def test_takeover_proceeds_after_the_fenced_writer_rolls_back(conn):
    token = one(conn, "SELECT lease_acquire('fence:rollback', 'writer', '200 ms')")
    with connect(autocommit=False) as writer:
        assert one(writer, "SELECT lease_check('fence:rollback', %s)", (token,)) is True
        expire_now(conn, "fence:rollback")
        taker = Background(lambda c: one(c, "SELECT lease_acquire('fence:rollback', 'taker', '1 min', wait => '1 min')"))
        wait_for(lambda: is_waiting_for_lease(conn, taker.pid), what="the takeover to wait")
        writer.rollback()
    assert taker.result() > token


def test_fences_do_not_block_each_other(conn):
    token = one(conn, "SELECT lease_acquire('fence:shared', 'writer', '1 min')")
    with connect(autocommit=False) as first, connect(autocommit=False) as second:
        assert one(first, "SELECT lease_check('fence:shared', %s)", (token,)) is True
        assert one(second, "SELECT lease_check('fence:shared', %s)", (token,)) is True
        first.rollback()
        second.rollback()
    assert one(conn, "SELECT lease_release('fence:shared', %s)", (token,)) is True


def test_fence_of_an_expired_token_fails_at_once_during_an_uncommitted_takeover(conn):
    old = one(conn, "SELECT lease_acquire('fence:pending', 'old', '100 ms')")
    expire_now(conn, "fence:pending")
    with connect(autocommit=False) as taker:
        new = one(taker, "SELECT lease_acquire('fence:pending', 'new', '1 min')")
        assert new > old
        # The resource's lock is the taker's: a token that no longer holds learns it without
        # queueing for the lock (a fence that fails protects nothing).
        with connect() as checker:
            assert one(checker, "SELECT lease_check('fence:pending', %s)", (old,)) is False
        taker.commit()
    assert one(conn, "SELECT lease_check('fence:pending', %s)", (new,)) is True


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_superseded_token_never_passes_under_snapshot_isolation(conn, isolation):
    resource = f"fence:{isolation}"
    old = one(conn, "SELECT lease_acquire(%s, 'old', '1 min')", (resource,))
    with connect(autocommit=False) as reader:
        reader.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        assert one(reader, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 1  # snapshot taken
        # behind the reader's snapshot: the holder releases and someone else is granted
        assert one(conn, "SELECT lease_release(%s, %s)", (resource, old)) is True
        new = one(conn, "SELECT lease_acquire(%s, 'new', '1 min')", (resource,))
        assert one(reader, "SELECT lease_check(%s, %s)", (resource, old)) is False
        assert one(reader, "SELECT lease_check(%s, %s)", (resource, new)) is True
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            reader.execute("SELECT lease_assert(%s, %s)", (resource, old))
        reader.rollback()


def test_acquire_behind_a_repeatable_read_snapshot_is_a_serialization_failure(conn):
    with connect(autocommit=False) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")
        first = one(conn, "SELECT lease_acquire('fence:rr-acquire', 'first', '1 min')")
        # held by another as last committed: refused, whatever the snapshot shows
        assert one(reader, "SELECT lease_acquire('fence:rr-acquire', 'second', '1 min')") is None
        assert one(conn, "SELECT lease_release('fence:rr-acquire', %s)", (first,)) is True
        token = one(conn, "SELECT lease_acquire('fence:rr-acquire', 'third', '1 min')")
        assert one(conn, "SELECT lease_release('fence:rr-acquire', %s)", (token,)) is True
        # free, but changed since the snapshot: granting it would be a decision the
        # transaction's own reads cannot see the reason for
        with pytest.raises(psycopg.errors.SerializationFailure):
            reader.execute("SELECT lease_acquire('fence:rr-acquire', 'second', '1 min')")
        reader.rollback()
    assert one(conn, "SELECT count(*) FROM lease_info('fence:rr-acquire')") == 0
