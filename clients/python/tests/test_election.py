"""Leader election: one leader at a time, resignation hands over at once, a killed leader
process is replaced within the ttl, and the leader is observable (lease_info and events)."""

import signal
import threading
import time

import pglease
from conftest import one, wait_for


def test_one_candidate_leads_and_a_resignation_hands_over_at_once(clients, conn, resource):
    elected, lost, events = [], [], []
    first = clients(holder="first").election(resource, ttl=1.5, on_elected=elected.append,
                                             on_lost=lambda lease, loss: lost.append(loss)).start()
    leader = first.wait_elected(10)
    assert leader is not None and first.is_leader and leader.holder.startswith("first#")
    second = clients(holder="second").election(resource, ttl=1.5, on_change=events.append).start()
    assert second.wait_elected(2.5) is None  # one leader, past a ttl: renewed in the background
    assert not second.is_leader
    seen = second.leader()
    assert (seen.holder, seen.token) == (leader.holder, leader.token)
    wait_for(lambda: elected == [leader], what="on_elected")

    resigned_at = time.monotonic()
    assert first.stop() == leader.token
    successor = second.wait_elected(10)
    assert time.monotonic() - resigned_at < 1.5  # released: no ttl to wait for
    assert successor.token > leader.token and second.terms == 1
    assert successor.holder.startswith("second#")
    assert (second.leader().holder, second.leader().token) == (successor.holder, successor.token)
    wait_for(lambda: [(e.event, e.holder, e.token) for e in events] == [
        ("released", leader.holder, leader.token), ("acquired", successor.holder, successor.token)],
        timeout=10, what="events")
    assert lost == []  # a resignation is not a loss
    assert second.stop() == successor.token
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (resource,)) == 0


def test_a_revoked_leader_steps_down_and_campaigns_again(clients, conn, resource):
    lost = threading.Event()
    election = clients(holder="solo").election(resource, ttl=60, on_lost=lambda lease, loss: lost.set()).start()
    term = election.wait_elected(10)
    assert one(conn, "SELECT lease_force_release(%s)", (resource,)) is True
    assert lost.wait(10) and term.loss.cause == "revoked"
    again = wait_for(lambda: election.lease if election.lease is not term and election.is_leader else None,
                     what="a second term")
    assert again.token > term.token and election.terms == 2
    assert election.stop() == again.token


def test_a_killed_leader_process_is_replaced_within_the_ttl(clients, conn, resource, programs):
    ttl, margin = 2.0, 2.0
    leader = programs("elect", resource, str(ttl), "doomed")
    token = int(leader.line(r"leading (\d+)")[1])
    follower = clients(holder="follower").election(resource, ttl=ttl).start()
    assert one(conn, "SELECT holder FROM lease_info(%s)", (resource,)).startswith("doomed#")
    killed_at = time.monotonic()
    leader.signal(signal.SIGKILL)
    successor = follower.wait_elected(ttl + margin)
    assert successor is not None, "no new leader within the ttl and a margin"
    assert time.monotonic() - killed_at <= ttl + margin
    assert successor.token > token
    assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is False
    assert follower.stop() == successor.token
