"""Lifelines through a real PgBouncer in transaction pooling mode: nothing of a lifeline lives in
a database session, so one opened through one client connection is renewed, attached to, fenced
on and closed through others, each transaction on whichever server connection the pooler
hands it; and its leases lapse together when the renewals stop."""

import datetime
import threading

import pytest

from conftest import PORT, Listener, one, wait_for
from support import PgBouncer

NAME_PREFIX = "llpgb"

POOL_SIZE = 3
CLIENTS = 6


@pytest.fixture(scope="module")
def bouncer():
    started = PgBouncer(PORT, pool_size=POOL_SIZE)
    yield started
    started.stop()


@pytest.fixture
def clients(bouncer):
    """More client connections through PgBouncer than it has server connections."""
    made = [bouncer.connect() for _ in range(CLIENTS)]
    yield made
    for client in made:
        client.close()



def marker(conn, listener, name):
    token = one(conn, "SELECT lease_acquire(%s, 'marker', '1 min')", (name,))
    one(conn, "SELECT lease_release(%s, %s)", (name, token))
    listener.until(lambda got: any(e["resource"] == name and e["event"] == "released" for e in got),
                   what=f"marker {name}")


def backend_pids_of(clients, rounds=3):
    """The server backends that served the clients' transactions, a few rounds each, with
    transactions held open concurrently so that the pooler must use several servers."""
    pids = set()
    for _ in range(rounds):
        opened = []
        for client in clients[:POOL_SIZE]:
            client.autocommit = False
            pids.add(one(client, "SELECT pg_backend_pid()"))
            opened.append(client)
        for client in opened:
            client.rollback()
            client.autocommit = True
    return pids


def test_a_lifeline_is_shared_by_pooled_client_connections(bouncer, clients, conn, name):
    listener = Listener()
    try:
        pools = [p for p in bouncer.pools() if p["database"] == "postgres"]
        assert pools and pools[0]["pool_mode"] == "transaction"
        servers = backend_pids_of(clients)
        assert 1 < len(servers) <= POOL_SIZE
        # opened through one client connection ...
        lifeline = one(clients[0], "SELECT lease_lifeline_open(%s, '1 s')", (name + "ll",))
        assert one(conn, "SELECT session_bound FROM lease.live_lifelines WHERE id = %s", (lifeline,)) is False
        # ... leases attached through all of them
        tokens = {}
        for i, client in enumerate(clients):
            for j in range(2):
                resource = f"{name}r{i}.{j}"
                tokens[resource] = one(client, "SELECT lease_acquire(%s, %s, lifeline => %s, data => %s::jsonb)",
                                       (resource, f"client-{i}", lifeline, f'{{"client": {i}}}'))
                assert tokens[resource] is not None
        assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == len(tokens)
        rows_before = conn.execute("SELECT resource, xmin::text FROM lease.leases WHERE resource LIKE %s "
                                   "ORDER BY resource", (name + "%",)).fetchall()
        # renewed through each client connection in turn, until well past the first expiry
        first_expiry = one(conn, "SELECT expires_at FROM lease.lifelines WHERE id = %s", (lifeline,))
        renewals = []

        def renew_in_turn():
            client = clients[len(renewals) % CLIENTS]
            renewals.append(one(client, "SELECT lease_lifeline_renew(%s)", (lifeline,)))
            return one(conn, "SELECT clock_timestamp() > %s + interval '1500 ms'", (first_expiry,))

        wait_for(renew_in_turn, what="1.5 s past the first expiry")
        assert len(renewals) > CLIENTS
        assert one(conn, "SELECT expires_at FROM lease.lifelines WHERE id = %s", (lifeline,)) == renewals[-1]
        assert conn.execute("SELECT resource, xmin::text FROM lease.leases WHERE resource LIKE %s "
                            "ORDER BY resource", (name + "%",)).fetchall() == rows_before
        for i, client in enumerate(clients):
            resource = f"{name}r{(i + 1) % CLIENTS}.0"  # another client's lease: fencing needs only the token
            assert one(client, "SELECT lease_check(%s, %s)", (resource, tokens[resource])) is True
            assert one(client, "SELECT lease_acquire(%s, 'intruder', '1 min')", (resource,)) is None

        # a fence inside a transaction through PgBouncer holds the close up until it commits
        fenced = f"{name}r1.0"
        writer = clients[1]
        writer.autocommit = False
        assert one(writer, "SELECT lease_check(%s, %s)", (fenced, tokens[fenced])) is True
        assert one(writer, "SELECT lease_set_data(%s, %s, '{\"fenced\": true}')", (fenced, tokens[fenced])) is True
        closed = {}
        closer = threading.Thread(target=lambda: closed.update(
            count=one(clients[2], "SELECT lease_lifeline_close(%s)", (lifeline,))), daemon=True)
        closer.start()
        wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT lease_lifeline_close%%' "
                                   "AND wait_event_type = 'Lock' AND wait_event = 'advisory'") == 1,
                 what="the close to wait for the fence")
        assert closer.is_alive()
        # the other client connections still get a server connection meanwhile (a check of the
        # fenced lease would queue behind the close)
        assert one(clients[3], "SELECT count(*) FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 1
        writer.commit()
        writer.autocommit = True
        closer.join(30)
        assert not closer.is_alive() and closed == {"count": len(tokens)}
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE %s", (name + "%",)) == 0
        for client in clients:
            assert one(client, "SELECT lease_check(%s, %s)", (fenced, tokens[fenced])) is False
        with pytest.raises(Exception) as raised:
            clients[4].execute("SELECT lease_lifeline_renew(%s)", (lifeline,))
        assert raised.value.sqlstate == "55000"
        marker(conn, listener, name + "marker")
        events = [e for e in listener.received if e["resource"] in tokens]
        assert sorted((e["resource"], e["event"], e["token"], e["lifeline"]) for e in events) == sorted(
            [(r, "acquired", t, lifeline) for r, t in tokens.items()]
            + [(r, "released", t, lifeline) for r, t in tokens.items()])
    finally:
        listener.close()


def test_leases_lapse_together_when_renewals_through_pgbouncer_stop(bouncer, clients, conn, name):
    listener = Listener()
    try:
        lifeline = one(clients[0], "SELECT lease_lifeline_open(%s, '600 ms')", (name + "ll",))
        tokens = {}
        for i, client in enumerate(clients):
            resource = f"{name}r{i}"
            tokens[resource] = one(client, "SELECT lease_acquire(%s, 'pooled', lifeline => %s)",
                                   (resource, lifeline))
        # a few renewals through different client connections, then none
        for client in clients[:3]:
            assert one(client, "SELECT lease_lifeline_renew(%s)", (lifeline,)) is not None
        expires_at = one(conn, "SELECT expires_at FROM lease.lifelines WHERE id = %s", (lifeline,))
        wait_for(lambda: one(clients[1], "SELECT clock_timestamp() > %s", (expires_at,)), what="the lapse")
        for i, client in enumerate(clients):
            resource = f"{name}r{(i + 2) % CLIENTS}"
            assert one(client, "SELECT lease_check(%s, %s)", (resource, tokens[resource])) is False
        with pytest.raises(Exception) as raised:
            clients[5].execute("SELECT lease_lifeline_renew(%s)", (lifeline,))
        assert raised.value.sqlstate == "55000"
        # another holder takes one over (or finds it swept already); the worker sweeps the rest
        taken = f"{name}r0"
        new = wait_for(lambda: one(clients[3], "SELECT lease_acquire(%s, 'successor', '1 min')", (taken,)),
                       timeout=10, what="the takeover")
        assert new > max(tokens.values())
        wait_for(lambda: one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0,
                 what="the worker to sweep the lifeline")
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE %s AND holder = 'pooled'",
                   (name + "%",)) == 0
        marker(conn, listener, name + "marker")
        expired = [e for e in listener.received if e["resource"] in tokens and e["event"] == "expired"]
        assert sorted((e["resource"], e["reason"], e["token"], e["lifeline"]) for e in expired) == sorted(
            (r, "lifeline_expired", t, lifeline) for r, t in tokens.items())
        assert {e["expires_at"] for e in expired} == {
            expires_at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        assert one(clients[3], "SELECT lease_release(%s, %s)", (taken, new)) is True
    finally:
        listener.close()
