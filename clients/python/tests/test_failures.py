"""The failures each feature survives: the holder's connection killed, a stalled network on the
renewal connection, a holder paused past its ttl, and the protected asyncio work cancelled."""

import asyncio
import signal
import threading
import time

import psycopg
import pytest

import pglease
from conftest import connect, dsn, one, server_clock, wait_for

MARGIN = 0.5  # seconds the client may take beyond the server's expiry to say so (a loaded machine)


def info(conn, resource):
    return conn.execute("SELECT holder, token, expires_at, renewed_at FROM lease_info(%s)", (resource,)).fetchone()


@pytest.mark.parametrize("listen", [True, False])
def test_a_killed_connection_ends_a_session_bound_lease_and_the_client_says_so(clients, conn, resource, listen):
    lease = clients(holder="bound", listen=listen).lease(resource, ttl=30, session_bound=True)
    pid = one(conn, "SELECT session_pid FROM lease_info(%s)", (resource,))
    assert pid == lease.backend_pid
    assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    killed = time.monotonic()
    assert lease.wait_lost(10) is not None
    # At once, not at the first renewal (10 s away): the event, or the connection's end itself
    # (without events).
    assert time.monotonic() - killed < 1.0
    assert lease.loss.cause == "session_ended"
    # The client may hear of the end before the server process has finished exiting.
    wait_for(lambda: one(conn, "SELECT lease_check(%s, %s)", (resource, lease.token)) is False, timeout=10,
             what="the server to end the lease")
    successor = clients(holder="next").lease(resource, ttl=5)
    assert successor.token > lease.token


def test_a_killed_connection_of_a_ttl_lease_is_replaced_and_the_lease_kept(clients, conn, resource):
    lease = clients(holder="ttl").lease(resource, ttl=1.5)
    pid = lease.backend_pid
    assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    time.sleep(3 * 1.5)  # three ttls: the lease lives only if renewals go on over a new connection
    assert lease.held and lease.loss is None
    assert info(conn, resource)[:2] == (lease.holder, lease.token)
    assert lease.backend_pid not in (None, pid)
    assert lease.release() is True


def test_a_stalled_renewal_connection_loses_the_lease_by_the_clients_clock(clients, conn, resource, proxy):
    ttl = 1.5
    stale = clients(dsn(proxy.port), holder="stalled")
    lease = stale.lease(resource, ttl=ttl)
    # Stall right after a renewal, so that none is in flight: the server's expiry is then final.
    renewed = info(conn, resource)[3]
    wait_for(lambda: info(conn, resource)[3] > renewed, timeout=ttl, what="a renewal")
    proxy.stall()
    expires_at = info(conn, resource)[2]
    assert lease.wait_lost(ttl + 5) is not None
    detected = server_clock(conn)
    assert lease.loss.cause == "deadline"
    assert detected <= expires_at + __import__("datetime").timedelta(seconds=MARGIN), (detected, expires_at)
    assert detected >= expires_at - __import__("datetime").timedelta(seconds=ttl / 3 + MARGIN)
    assert not lease.held
    # The lease ends on the server at its expiry; the next holder gets a larger token, and the
    # stale holder's fenced writes are refused, by the client at once and by the server too.
    successor = clients(holder="successor").lease(resource, ttl=5, wait=ttl + 5)
    assert successor.token > lease.token
    with connect(autocommit=False) as writer:
        with pytest.raises(pglease.LeaseLost):
            lease.fence(writer)
        writer.rollback()
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            writer.execute("SELECT lease_assert(%s, %s)", (resource, lease.token))
    proxy.resume()


@pytest.fixture
def progress(conn):
    conn.execute("DROP TABLE IF EXISTS pglease_progress")
    conn.execute("CREATE TABLE pglease_progress (resource text, token bigint, at timestamptz DEFAULT clock_timestamp())")
    yield
    conn.execute("DROP TABLE pglease_progress")


def test_a_holder_paused_past_its_ttl_writes_nothing_after_the_takeover(clients, conn, resource, programs, progress):
    ttl = 1.5
    holder = programs("hold", resource, str(ttl))
    token = int(holder.line(r"token (\d+)")[1])
    # The holder stops itself between two of its transactions (a pause inside one would leave an
    # open fence, which rightly keeps the successor waiting).
    holder.line("pausing")
    wait_for(lambda: holder.state() == "T", timeout=10, what="the holder to be stopped")
    assert one(conn, "SELECT count(*) FROM pglease_progress WHERE token = %s", (token,)) > 0
    try:
        successor = clients(holder="successor").lease(resource, ttl=30, wait=ttl + 10)
        assert successor.token > token
        acquired_at = one(conn, "SELECT acquired_at FROM lease_info(%s)", (resource,))
    finally:
        holder.signal(signal.SIGCONT)
    # Woken up, the holder finds its lease lost (its own clock, or the server's refusal) and stops.
    assert holder.finish(15) == 3
    assert any(line.startswith("lost ") for line in holder.lines), holder.lines
    assert one(conn, "SELECT count(*) FROM pglease_progress WHERE token = %s AND at >= %s", (token, acquired_at)) == 0
    assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is False


def test_async_work_is_cancelled_when_the_lease_is_lost_and_the_block_raises_lease_lost(resource):
    async def scenario():
        async with pglease.AsyncClient(dsn(), holder="async") as client:
            steps = []
            with pytest.raises(pglease.LeaseLost) as lost:
                async with client.lease(resource, ttl=60) as lease:
                    async with await psycopg.AsyncConnection.connect(dsn(), autocommit=True) as admin:
                        await admin.execute("SELECT lease_force_release(%s)", (resource,))
                    for step in range(200):  # 20 s of work, cancelled at the revocation
                        await asyncio.sleep(0.1)
                        steps.append(step)
            assert lost.value.loss.cause == "revoked"
            assert len(steps) < 50
            assert lease.lost.is_set() and await lease.wait_lost() is lease.loss
            assert not asyncio.current_task().cancelling()

    asyncio.run(scenario())


def test_async_fence_and_a_guarded_task(resource):
    async def scenario():
        async with pglease.AsyncClient(dsn(), holder="async-fence") as client:
            lease = await client.try_acquire(resource, ttl=60)
            work = asyncio.ensure_future(asyncio.sleep(60))
            lease.guard(work)
            async with await psycopg.AsyncConnection.connect(dsn()) as writer:
                async with writer.transaction():
                    await lease.fence(writer)
                async with await psycopg.AsyncConnection.connect(dsn(), autocommit=True) as admin:
                    await admin.execute("SELECT lease_force_release(%s)", (resource,))
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(work, 10)
                with pytest.raises(pglease.LeaseLost):
                    async with writer.transaction():
                        await lease.fence(writer)
            assert await lease.release() is False

    asyncio.run(scenario())


def test_a_cancelled_waiting_acquire_leaves_no_waiter_and_no_grant(clients, conn, resource):
    holder = clients(holder="keeper").lease(resource, ttl=30)

    async def scenario():
        async with pglease.AsyncClient(dsn(), holder="impatient", listen=False) as client:
            waiting = asyncio.ensure_future(client.try_acquire(resource, ttl=30, wait=60))
            while one(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pglease impatient' "
                            "AND wait_event_type = 'Extension'") != 1:
                await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

    asyncio.run(scenario())
    # A closed connection's backend leaves pg_stat_activity a moment later.
    wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pglease impatient'") == 0,
             timeout=10, what="the impatient client's sessions to end")
    assert holder.release() is True
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0  # nobody was granted it


def test_a_fence_refused_inside_a_lease_block_raises_lease_lost_not_cancelled_error(resource):
    async def scenario():
        # No events and a long ttl: the refusal of the fence is the first the client hears of it.
        async with pglease.AsyncClient(dsn(), holder="scope-fence", listen=False) as client:
            with pytest.raises(pglease.LeaseLost) as lost:
                async with client.lease(resource, ttl=60) as lease:
                    async with await psycopg.AsyncConnection.connect(dsn(), autocommit=True) as admin:
                        await admin.execute("SELECT lease_force_release(%s)", (resource,))
                    async with await psycopg.AsyncConnection.connect(dsn()) as writer:
                        async with writer.transaction():
                            await lease.fence(writer)
            assert lost.value.sqlstate == "55000" and lost.value.loss.cause == "fence"
            assert not asyncio.current_task().cancelling()
            await asyncio.sleep(0.05)  # no cancellation left pending either

    asyncio.run(scenario())


def test_a_renewal_queued_behind_a_stalled_release_is_lost_by_its_deadline(resource, proxy):
    ttl = 1.5
    resources = [resource + ":a", resource + ":b"]

    async def scenario():
        # timeout=10: a release on the stalled connection holds it that long.
        client = pglease.AsyncClient(dsn(proxy.port), holder="queued", listen=False, timeout=10)
        try:
            claim = await client.claim(resources, ttl=ttl, max_count=2)
            first, second = claim
            proxy.stall()
            releasing = asyncio.ensure_future(first.release())
            loss = await asyncio.wait_for(second.wait_lost(), ttl + 5)
            late = time.monotonic() - second.valid_until
            assert loss is not None and loss.cause == "deadline"
            assert late < 1.0, late  # by the deadline, not after the release's timeout (10 s)
            proxy.resume()
            # The release answers once the network does (True, or False had the lease expired).
            assert await asyncio.wait_for(releasing, 15) in (True, False)
        finally:
            proxy.resume()
            await client.close()

    try:
        asyncio.run(scenario())
    finally:
        with connect() as admin:
            for name in resources:
                admin.execute("SELECT lease_force_release(%s)", (name,))


def test_a_stopped_election_ends_wait_elected_and_releases_a_lease_past_its_local_deadline(clients, conn, resource):
    holder = clients(holder="incumbent").lease(resource, ttl=30)
    election = clients(holder="hopeful").election(resource, ttl=30, wait=30).start()
    waited = {}
    waiter = threading.Thread(target=lambda: waited.setdefault("lease", election.wait_elected()))
    waiter.start()
    assert election.stop() is None
    waiter.join(10)
    assert not waiter.is_alive() and waited["lease"] is None
    assert holder.release() is True

    # A leader whose lease ran out by its own clock only (the server still has it) resigns for real.
    leader = clients(holder="leader").election(resource, ttl=30).start()
    term = leader.wait_elected(10)
    term._inner._valid_until = time.monotonic() - 1  # as if the renewals had stalled
    assert not term.held and not term.released
    assert leader.stop() == term.token
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0


def test_closing_a_client_ends_a_call_another_thread_waits_in(clients, conn, resource):
    clients(holder="incumbent").lease(resource, ttl=30)
    client = pglease.Client(dsn(), holder="closing", listen=False)
    outcome = {}

    def wait():
        try:
            outcome["lease"] = client.try_acquire(resource, ttl=30, wait=60)
        except BaseException as error:  # noqa: BLE001 - the test looks at what came
            outcome["error"] = error

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pglease closing%%' "
                               "AND wait_event_type = 'Extension'") == 1, what="the acquire to wait")
    client.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert "lease" not in outcome and outcome["error"] is not None
    with pytest.raises(pglease.LeaseUsageError):
        client.info(resource)

