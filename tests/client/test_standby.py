"""On a hot standby the API refuses to change leases (25006, with a hint), inspection works,
and the expiry worker does not run; after promotion it starts, sweeps and announces."""

import psycopg
import pytest

from conftest import Listener, Standby, connect, free_port, one, wait_for, worker_pid


@pytest.fixture
def standby():
    replica = Standby("test-standby", free_port())
    yield replica
    replica.destroy()


def test_api_on_a_standby(standby):
    with connect() as primary:
        token = one(primary, "SELECT lease_acquire('standby:1', 'primary-holder', '1 hour')")
        standby.wait_for_replay(primary)
    with connect(port=standby.port) as replica:
        assert one(replica, "SELECT pg_is_in_recovery()") is True
        assert replica.execute("SELECT holder, token FROM lease_info('standby:1')").fetchone() == (
            "primary-holder",
            token,
        )
        calls = [
            "SELECT lease_acquire('standby:2', 'h')",
            f"SELECT lease_renew('standby:1', {token})",
            f"SELECT lease_release('standby:1', {token})",
            f"SELECT lease_check('standby:1', {token})",
            f"SELECT lease_assert('standby:1', {token})",
            "SELECT lease_sweep()",
        ]
        for call in calls:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as raised:
                replica.execute(call)
            assert raised.value.diag.message_primary == (
                "cannot acquire, renew, release or check leases during recovery"
            )
            assert "primary" in raised.value.diag.message_hint
    with connect() as primary:
        assert one(primary, "SELECT lease_release('standby:1', %s)", (token,)) is True


def test_worker_idles_on_a_standby_and_works_after_promotion(standby):
    with connect() as primary:
        token = one(primary, "SELECT lease_acquire('failover:1', 'old-primary', '1 s')")
        standby.wait_for_replay(primary)
    # A fence on the old primary keeps its own worker from sweeping the lease there, so the
    # only sweep that can announce it is the promoted server's.
    fence = connect(autocommit=False)
    assert one(fence, "SELECT lease_check('failover:1', %s)", (token,)) is True
    with connect(port=standby.port) as replica:
        assert one(replica, "SELECT pg_is_in_recovery()") is True
        assert worker_pid(replica) is None
        assert one(replica, "SELECT count(*) FROM lease.leases WHERE resource = 'failover:1'") == 1
    standby.promote()
    with connect(port=standby.port) as promoted:
        wait_for(lambda: worker_pid(promoted), what="the worker to start after promotion")
    listener = Listener(port=standby.port)
    try:
        events = listener.until(
            lambda got: any(e["resource"] == "failover:1" for e in got), what="the expiry on the new primary"
        )
        expired = [e for e in events if e["resource"] == "failover:1"]
        assert [(e["event"], e["reason"], e["holder"], e["token"]) for e in expired] == [
            ("expired", "ttl", "old-primary", token)
        ]
    finally:
        listener.close()
        fence.rollback()
        fence.close()
    with connect(port=standby.port) as promoted:
        assert one(promoted, "SELECT count(*) FROM lease.leases WHERE resource = 'failover:1'") == 0


def test_tokens_stay_monotonic_across_promotion_after_lost_grants(standby):
    """Asynchronous replication: the old primary grants tokens the standby never receives, then
    the standby is promoted. Its tokens must still be larger than every token granted before."""
    with connect() as primary:
        replayed = [one(primary, "SELECT lease_acquire(%s, 'h', '1 hour')", (f"promote:seen:{n}",)) for n in range(5)]
        standby.wait_for_replay(primary)
    standby.disconnect()
    with connect() as primary:
        lost = [one(primary, "SELECT lease_acquire(%s, 'h', '1 hour')", (f"promote:lost:{n}",)) for n in range(100)]
    standby.promote()
    with connect(port=standby.port) as promoted:
        wait_for(lambda: one(promoted, "SELECT NOT pg_is_in_recovery()"), what="promotion")
        # the lost grants really are lost on the new primary...
        assert one(promoted, "SELECT count(*) FROM lease.leases WHERE resource LIKE 'promote:lost:%%'") == 0
        assert one(promoted, "SELECT count(*) FROM lease.leases WHERE resource LIKE 'promote:seen:%%'") == 5
        # ...but their tokens are never handed out again, on any resource
        new = [one(promoted, "SELECT lease_acquire(%s, 'h', '1 hour')", (f"promote:new:{n}",)) for n in range(5)]
        assert min(new) > max(lost + replayed)
        assert all(token >> 48 >= 1 for token in new)  # granted on a later timeline
    with connect() as primary:
        for n, token in enumerate(replayed):
            one(primary, "SELECT lease_release(%s, %s)", (f"promote:seen:{n}", token))
        for n, token in enumerate(lost):
            one(primary, "SELECT lease_release(%s, %s)", (f"promote:lost:{n}", token))
