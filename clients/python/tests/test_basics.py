"""Acquire, background renewal, release, waiting, fencing and the typed errors (blocking client)."""

import threading
import time

import psycopg
import pytest

import pglease
from conftest import connect, dsn, one, wait_for


def lease_row(conn, resource):
    return conn.execute("SELECT holder, token, renewed_at FROM lease_info(%s)", (resource,)).fetchone()


def test_a_lease_is_renewed_in_the_background_until_released(clients, conn, resource):
    client = clients(holder="basics-a")
    with client.lease(resource, ttl=1.0) as lease:
        assert lease.token > 0 and lease.holder.startswith("basics-a#") and lease.held
        first = lease_row(conn, resource)
        assert first[:2] == (lease.holder, lease.token)
        time.sleep(2.5)  # two and a half ttls: only renewals keep it
        later = lease_row(conn, resource)
        assert later[:2] == (lease.holder, lease.token)
        assert later[2] > first[2]
        assert lease.held and not lease.lost.is_set() and lease.loss is None
    assert lease.released and lease.lost.is_set() and lease.loss is None
    assert lease_row(conn, resource) is None
    assert lease.release() is False


def test_taken_resources_give_none_or_lease_unavailable_and_a_waiter_gets_the_lease(clients, conn, resource):
    first, second = clients(holder="one"), clients(holder="two")
    lease = first.try_acquire(resource, ttl=5)
    assert second.try_acquire(resource, ttl=5) is None
    with pytest.raises(pglease.LeaseUnavailable):
        second.lease(resource, ttl=5)
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("lease", second.try_acquire(resource, ttl=5, wait=20)))
    waiter.start()
    wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pglease two' "
                               "AND wait_event_type = 'Extension'") == 1, what="the waiter to sleep")
    assert lease.release() is True
    waiter.join(10)
    assert got["lease"].token > lease.token and got["lease"].holder.startswith("two#")
    assert lease_row(conn, resource)[:2] == (got["lease"].holder, got["lease"].token)
    assert got["lease"].release() is True


def test_fence_commits_the_write_with_the_check_and_refuses_a_lost_token(clients, conn, resource):
    conn.execute("CREATE TEMP TABLE fenced (token bigint)")
    client = clients(listen=False)  # no event: the server is the one to refuse the token
    lease = client.lease(resource, ttl=30)
    with conn.transaction():
        lease.fence(conn)
        conn.execute("INSERT INTO fenced VALUES (%s)", (lease.token,))
    assert lease.check(conn) is True
    with pytest.raises(pglease.LeaseUsageError):
        lease.fence(conn)  # autocommit, no transaction: the check would protect nothing
    with connect() as admin:
        assert one(admin, "SELECT lease_force_release(%s)", (resource,)) is True
    # The client has not heard of it (no events, next renewal 10 s away): the server refuses.
    with pytest.raises(pglease.LeaseLost) as refused:
        with conn.transaction():
            lease.fence(conn)
            conn.execute("INSERT INTO fenced VALUES (-1)")
    assert refused.value.sqlstate == "55000"
    assert refused.value.loss is lease.loss and lease.loss.cause == "fence"
    assert conn.execute("SELECT token FROM fenced").fetchall() == [(lease.token,)]
    assert lease.lost.is_set()
    with pytest.raises(pglease.LeaseLost) as known:  # now the client refuses without asking
        with conn.transaction():
            lease.fence(conn)
    assert known.value.sqlstate is None and known.value.loss.cause == "fence"


def test_a_revocation_is_seen_at_once_through_the_callback_the_event_and_lost(clients, conn, resource):
    client = clients()
    calls = []
    called = threading.Event()
    lease = client.lease(resource, ttl=60, on_lost=lambda lost, loss: (calls.append((lost, loss)), called.set()))
    assert one(conn, "SELECT lease_force_release(%s)", (resource,)) is True
    # ttl 60: the first renewal is 20 s away, so only the event can tell the client this soon.
    assert called.wait(10)
    assert lease.lost.is_set() and not lease.held
    assert calls == [(lease, lease.loss)]
    assert (lease.loss.cause, lease.loss.from_event) == ("revoked", True)
    with pytest.raises(pglease.LeaseLost):
        lease.ensure_held()
    assert lease.release() is False


def test_without_listen_a_revocation_is_seen_at_the_next_renewal(clients, conn, resource):
    client = clients(listen=False)
    lease = client.lease(resource, ttl=1.5)
    assert one(conn, "SELECT lease_force_release(%s)", (resource,)) is True
    revoked = time.monotonic()
    assert lease.wait_lost(5) is not None
    assert time.monotonic() - revoked < 1.5 / 3 + 1.0
    assert (lease.loss.cause, lease.loss.from_event) == ("refused", False)


def test_server_errors_are_typed_exceptions_with_their_sqlstates(clients, conn, resource):
    client = clients()
    with pytest.raises(pglease.InvalidArgument) as blank:
        client.try_acquire("   ", ttl=5)
    assert blank.value.sqlstate == "22023"
    with pytest.raises(pglease.InvalidArgument) as long_holder:
        client.try_acquire(resource, ttl=5, holder="h" * 300)
    assert long_holder.value.sqlstate == "22023"
    with pytest.raises(pglease.InvalidArgument) as huge_ttl:
        client.try_acquire(resource, ttl=10 * 86400)
    assert huge_ttl.value.sqlstate == "22023"
    with pytest.raises(ValueError):
        client.try_acquire(resource, ttl=0)  # refused before any call

    bound = clients(holder="shared").lease(resource, ttl=30, session_bound=True)
    # A session-bound re-acquire under the same holder name from another session (lease objects
    # of the client never share a name, so this takes a statement of one's own).
    with pytest.raises(psycopg.Error) as raw:
        conn.execute("SELECT lease_acquire(%s, %s, interval '30 s', session_bound => true)", (resource, bound.holder))
    conflict = pglease.map_error(raw.value)
    assert isinstance(conflict, pglease.SessionBindingConflict) and conflict.sqlstate == "55006"

    conn.execute("DROP ROLE IF EXISTS pglease_other")
    conn.execute("CREATE ROLE pglease_other")
    try:
        with connect(autocommit=False) as other:
            other.execute("SET ROLE pglease_other")
            with pytest.raises(pglease.PermissionDenied) as denied:
                bound.fence(other)
            assert denied.value.sqlstate == "42501"
    finally:
        conn.execute("DROP ROLE pglease_other")
    assert bound.release() is True


def test_a_waiting_acquire_ended_by_statement_timeout_is_wait_cancelled(clients, resource):
    clients(holder="holder").lease(resource, ttl=30)
    waiter = clients(holder="waiter", options="-c statement_timeout=300")
    with pytest.raises(pglease.WaitCancelled) as cancelled:
        waiter.try_acquire(resource, ttl=5, wait=20)
    assert cancelled.value.sqlstate == "57014"


def test_closing_the_client_releases_its_leases(conn, resource):
    client = pglease.Client(dsn())
    lease = client.lease(resource, ttl=30)
    assert lease_row(conn, resource)[1] == lease.token
    client.close()
    assert lease_row(conn, resource) is None
    assert lease.released and lease.lost.is_set()
    assert lease.loss is not None and lease.loss.cause == "closed"  # guarded work and on_lost hear of it


def test_a_claim_takes_disjoint_leases_renews_them_together_and_releases_each(clients, conn):
    jobs = [f"pglease:claim:{n}" for n in range(5)]
    try:
        first, second = clients(holder="w1"), clients(holder="w2")
        mine = first.claim(jobs, ttl=1.0, max_count=3)
        theirs = second.claim(jobs, ttl=1.0, max_count=3)
        assert [lease.resource for lease in mine] == jobs[:3]
        assert [lease.resource for lease in theirs] == jobs[3:]
        assert len(second.claim(jobs, ttl=1.0, max_count=3)) == 0  # its own are left out
        assert len(clients(holder="w3").claim(jobs, ttl=1.0, max_count=3)) == 0
        time.sleep(2.5)
        rows = dict(conn.execute("SELECT resource, token FROM lease.active WHERE resource LIKE 'pglease:claim:%%'").fetchall())
        assert rows == {lease.resource: lease.token for lease in [*mine, *theirs]}
        assert mine[0].release() is True
        assert all(lease.held for lease in [*mine[1:], *theirs])
        with mine, theirs:
            pass
        assert one(conn, "SELECT count(*) FROM lease.active WHERE resource LIKE 'pglease:claim:%%'") == 0
    finally:
        for job in jobs:
            conn.execute("SELECT lease_force_release(%s)", (job,))


def test_each_lease_object_is_a_holder_of_its_own_even_within_one_client(clients, conn, resource):
    client = clients(holder="shared-client")
    first = client.lease(resource, ttl=30)
    # A second acquire by the same client is another holder: refused, and a wait really waits.
    assert client.try_acquire(resource, ttl=30) is None
    started = time.monotonic()
    assert client.try_acquire(resource, ttl=30, wait=0.5) is None
    assert time.monotonic() - started >= 0.4
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("lease", client.try_acquire(resource, ttl=30, wait=20)))
    waiter.start()
    wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                               "AND wait_event_type = 'Extension'", (f"pglease {client.holder}",)) == 1,
             what="the second acquire to wait")
    # Releasing the first leaves the second's lease alone (they no longer share a server lease).
    assert first.release() is True
    waiter.join(10)
    second = got["lease"]
    assert second.token > first.token and second.holder != first.holder
    assert first.holder.startswith("shared-client#") and second.holder.startswith("shared-client#")
    assert lease_row(conn, resource)[:2] == (second.holder, second.token)
    assert second.held and second.release() is True


def test_concurrent_claims_of_one_client_never_return_the_same_resource(conn):
    import asyncio

    jobs = [f"pglease:claims:{n}" for n in range(4)]

    async def scenario():
        async with pglease.AsyncClient(dsn(), holder="claimer", listen=False) as client:
            claims = await asyncio.gather(*(client.claim(jobs, ttl=30, max_count=1) for _ in range(6)))
            got = [lease.resource for claim in claims for lease in claim]
            assert sorted(got) == jobs  # four jobs, six claims: each job once, two claims empty
            assert sum(len(claim) for claim in claims) == 4
            rows = dict(conn.execute("SELECT resource, holder FROM lease.active WHERE resource LIKE 'pglease:claims:%%'").fetchall())
            assert rows == {lease.resource: lease.holder for claim in claims for lease in claim}
            for claim in claims:
                await claim.release()

    try:
        asyncio.run(scenario())
        assert one(conn, "SELECT count(*) FROM lease.active WHERE resource LIKE 'pglease:claims:%%'") == 0
    finally:
        for job in jobs:
            conn.execute("SELECT lease_force_release(%s)", (job,))
