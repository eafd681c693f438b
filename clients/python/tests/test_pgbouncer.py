"""The client behind PgBouncer in transaction pooling mode: no session state (no prepared
statements, no LISTEN, no session binding), fewer server connections than client connections."""

import threading
import time

import psycopg
import pytest

import pglease
from conftest import PgBouncer, dsn, one, wait_for


@pytest.fixture(scope="module")
def bouncer():
    started = PgBouncer(pool_size=3)
    yield started
    started.stop()


def pooled(bouncer, **options):
    return pglease.Client(dsn(bouncer.port), listen=False, **options)


def test_a_lease_is_renewed_fenced_and_released_through_pgbouncer(bouncer, conn, resource):
    with pooled(bouncer, holder="pooled") as client:
        lease = client.lease(resource, ttl=0.9)
        # Six ttls: eighteen renewals, more than psycopg's prepare threshold (5), which would break
        # on a transaction pooler if the client prepared statements.
        time.sleep(6 * 0.9)
        assert lease.held and lease.loss is None
        assert one(conn, "SELECT token FROM lease_info(%s)", (resource,)) == lease.token
        with psycopg.connect(dsn(bouncer.port), prepare_threshold=None) as app:
            with app.transaction():
                lease.fence(app)
                assert one(app, "SELECT lease_check(%s, %s)", (resource, lease.token)) is True
        assert lease.release() is True
    pools = [p for p in bouncer.pools() if p["database"] == "postgres"]
    assert pools and pools[0]["pool_mode"] == "transaction"


def test_a_waiter_and_an_election_work_through_pgbouncer(bouncer, conn, resource):
    with pooled(bouncer, holder="a") as first, pooled(bouncer, holder="b") as second:
        leading = first.election(resource, ttl=1.5).start()
        term = leading.wait_elected(10)
        follower = second.election(resource, ttl=1.5).start()
        assert follower.wait_elected(2.0) is None
        assert leading.stop() == term.token
        successor = follower.wait_elected(10)
        assert successor.token > term.token
        assert one(conn, "SELECT holder FROM lease_info(%s)", (resource,)) == successor.holder
        assert successor.holder.startswith("b#")
        # A revocation is seen at the next renewal without events.
        assert one(conn, "SELECT lease_force_release(%s)", (resource,)) is True
        assert successor.wait_lost(5) is not None and successor.loss.cause == "refused"
        follower.stop()


def test_watch_and_session_binding_need_a_session_of_their_own(bouncer):
    with pooled(bouncer) as client:
        with pytest.raises(pglease.LeaseUsageError):
            client.watch("pglease:anything", print)
