"""Minimum holds (lease_release with keep_for, ShedLock's lockAtLeastFor) and data stored with a
lease (lease_acquire's data, lease_set_data, lease.notify_data), 0.5.0."""

import datetime

import pytest

from conftest import Background, connect, is_waiting_for_lease, one, reload_settings, sqlstate_of, wait_for

NAME_PREFIX = "kd"

SESSION_LOCK_SPACE = 0x4C53
PLAIN_RELEASED_KEYS = {"seq", "event", "resource", "holder", "token", "at"}
KEPT_RELEASED_KEYS = PLAIN_RELEASED_KEYS | {"expires_at"}
ACQUIRED_KEYS = {"seq", "event", "resource", "holder", "token", "expires_at", "at"}
EXPIRED_KEYS = {"seq", "event", "reason", "resource", "holder", "token", "expires_at", "at"}



def iso(timestamp):
    return timestamp.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wait_past(conn, timestamp, what="the server clock"):
    wait_for(lambda: one(conn, "SELECT clock_timestamp() > %s", (timestamp,)), what=what)


def marker(conn, listener, name):
    token = one(conn, "SELECT lease_acquire(%s, 'marker', '1 min')", (name,))
    one(conn, "SELECT lease_release(%s, %s)", (name, token))
    listener.until(lambda got: any(e["resource"] == name and e["event"] == "released" for e in got),
                   what=f"marker {name}")


def summary(events):
    return [(e["event"], e.get("reason"), e["holder"], e["token"]) for e in events]


def json_of_bytes(size, char="x"):
    """A JSON string value whose compact form ({"k":"..."}) is `size` bytes."""
    filler = size - len('{"k":""}')
    width = len(char.encode())
    assert filler % width == 0
    return '{"k": "' + char * (filler // width) + '"}'




# --- keep_for -----------------------------------------------------------------------------


def test_a_minimum_hold_keeps_everyone_out_until_it_ends(conn, name, listener):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
    acquired_at = one(conn, "SELECT acquired_at FROM lease_info(%s)", (resource,))
    assert one(conn, "SELECT lease_release(%s, %s, '1.5 s')", (resource, token)) is True
    kept_until = acquired_at + datetime.timedelta(seconds=1.5)
    info = conn.execute("SELECT holder, token, expires_at, released_at IS NOT NULL, released_at >= acquired_at, "
                        "lifeline, session_pid FROM lease_info(%s)", (resource,)).fetchone()
    assert info == ("h", token, kept_until, True, True, None, None)
    active = conn.execute("SELECT token, expires_at, released_at IS NOT NULL FROM lease.active WHERE resource = %s",
                          (resource,)).fetchone()
    assert active == (token, kept_until, True)
    # nobody, the holder included, gets it meanwhile; the token no longer holds it
    assert one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,)) is None
    assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
    assert one(conn, "SELECT count(*) FROM lease_acquire_any(ARRAY[%s], 'other', '1 min')", (resource,)) == 0
    assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is False
    assert one(conn, "SELECT lease_renew(%s, %s)", (resource, token)) is False
    assert one(conn, "SELECT lease_renew(%s, %s, '1 hour')", (resource, token)) is False
    assert one(conn, "SELECT lease_set_data(%s, %s, '{\"x\": 1}')", (resource, token)) is False
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is False
    assert one(conn, "SELECT lease_release(%s, %s, '1 min')", (resource, token)) is False
    assert one(conn, "SELECT lease_release(%s, %s, NULL)", (resource, token)) is False
    # unchanged by the refused calls
    assert conn.execute("SELECT token, expires_at, data FROM lease_info(%s)", (resource,)).fetchone() \
        == (token, kept_until, None)
    # the worker removes it when the hold ends
    listener.until(lambda got: any(e["resource"] == resource and e["event"] == "expired" for e in got),
                   what="the end of the hold")
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
    new = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
    assert new > token
    marker(conn, listener, name + "marker")
    events = listener.events_for(resource)
    assert summary(events) == [("acquired", None, "h", token), ("released", None, "h", token),
                               ("expired", "ttl", "h", token), ("acquired", None, "h", new)]
    released, expired = events[1], events[2]
    assert set(released) == KEPT_RELEASED_KEYS
    assert released["expires_at"] == iso(kept_until)
    assert set(expired) == EXPIRED_KEYS
    assert expired["expires_at"] == iso(kept_until)
    assert expired["at"] >= expired["expires_at"]
    one(conn, "SELECT lease_release(%s, %s)", (resource, new))


def test_a_waiter_is_granted_when_the_hold_ends(conn, name):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
    assert one(conn, "SELECT lease_release(%s, %s, '1 s')", (resource, token)) is True
    kept_until = one(conn, "SELECT expires_at FROM lease_info(%s)", (resource,))
    waiter = Background(lambda c: one(c, "SELECT lease_acquire(%s, 'waiter', '1 min', wait => '30 s')", (resource,)))
    wait_for(lambda: is_waiting_for_lease(conn, waiter.pid), what="the waiter to wait")
    new = waiter.result()
    assert new > token
    info = conn.execute("SELECT holder, released_at, acquired_at >= %s FROM lease_info(%s)",
                        (kept_until, resource)).fetchone()
    assert info == ("waiter", None, True)
    # the holder itself waits likewise
    assert one(conn, "SELECT lease_release(%s, %s, '800 ms')", (resource, new)) is True
    kept_until = one(conn, "SELECT expires_at FROM lease_info(%s)", (resource,))
    again = one(conn, "SELECT lease_acquire(%s, 'waiter', '1 min', wait => '30 s')", (resource,))
    assert again > new
    assert one(conn, "SELECT acquired_at >= %s FROM lease_info(%s)", (kept_until, resource)) is True
    one(conn, "SELECT lease_release(%s, %s)", (resource, again))


@pytest.mark.parametrize("keep_for", ["served", "null", "zero"])
def test_a_hold_already_served_is_a_plain_release(conn, name, listener, keep_for):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
    interval = None
    if keep_for == "served":
        interval = "300 ms"
        acquired_at = one(conn, "SELECT acquired_at FROM lease_info(%s)", (resource,))
        wait_past(conn, acquired_at + datetime.timedelta(milliseconds=300))
    elif keep_for == "zero":
        interval = "0 s"
    assert one(conn, "SELECT lease_release(%s, %s, %s::interval)", (resource, token, interval)) is True
    assert one(conn, "SELECT count(*) FROM lease.leases WHERE resource = %s", (resource,)) == 0
    assert one(conn, "SELECT lease_release(%s, %s, %s::interval)", (resource, token, interval)) is False
    new = one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,))
    assert new > token
    marker(conn, listener, name + "marker")
    events = listener.events_for(resource)
    assert summary(events) == [("acquired", None, "h", token), ("released", None, "h", token),
                               ("acquired", None, "other", new)]
    assert set(events[1]) == PLAIN_RELEASED_KEYS
    one(conn, "SELECT lease_release(%s, %s)", (resource, new))


@pytest.mark.parametrize("keep_for", ["-1 s", "-1 microsecond", "1 day 1 second", "2 mons"])
def test_bad_keep_for_is_rejected_and_changes_nothing(conn, name, keep_for):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
    assert sqlstate_of(conn, "SELECT lease_release(%s, %s, %s::interval)", (resource, token, keep_for)) == "22023"
    assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is True
    assert one(conn, "SELECT released_at FROM lease_info(%s)", (resource,)) is None
    assert sqlstate_of(conn, "SELECT lease_release(%s, NULL, '1 s')", (resource,)) == "22004"
    assert sqlstate_of(conn, "SELECT lease_release(NULL, %s, '1 s')", (token,)) == "22004"
    assert sqlstate_of(conn, "SELECT lease_release(%s, 0, '1 s')", (resource,)) == "22023"
    assert one(conn, "SELECT lease_release(%s, %s, '1 s')", (resource, token + 1000000)) is False
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is True


def test_a_hold_detaches_the_lease_from_its_lifeline(conn, name, listener):
    resource, other = name + "r", name + "other"
    lifeline = one(conn, "SELECT lease_lifeline_open(%s, '400 ms')", (name + "ll",))
    token = one(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s, data => '{\"d\": 1}')", (resource, lifeline))
    other_token = one(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (other, lifeline))
    lifeline_expiry = one(conn, "SELECT expires_at FROM lease.lifelines WHERE id = %s", (lifeline,))
    acquired_at = one(conn, "SELECT acquired_at FROM lease_info(%s)", (resource,))
    assert one(conn, "SELECT lease_release(%s, %s, '3 s')", (resource, token)) is True
    kept_until = acquired_at + datetime.timedelta(seconds=3)
    assert conn.execute("SELECT lifeline, expires_at, released_at IS NOT NULL FROM lease_info(%s)",
                        (resource,)).fetchone() == (None, kept_until, True)
    assert one(conn, "SELECT leases FROM lease.live_lifelines WHERE id = %s", (lifeline,)) == 1
    # the lifeline lapses and is swept; the kept row stays until its own end
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.lifelines WHERE id = %s", (lifeline,)) == 0,
             what="the lifeline to be swept")
    assert one(conn, "SELECT clock_timestamp() < %s", (kept_until,)) is True, "the test ran too slowly"
    assert conn.execute("SELECT token, expires_at FROM lease_info(%s)", (resource,)).fetchone() == (token, kept_until)
    assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
    listener.until(lambda got: any(e["resource"] == resource and e["event"] == "expired" for e in got),
                   what="the end of the hold")
    marker(conn, listener, name + "marker")
    events = listener.events_for(resource)
    # the release names the lifeline the lease leaves; the end of the hold does not
    assert [(e["event"], e.get("reason"), e["token"], e.get("lifeline")) for e in events] == [
        ("acquired", None, token, lifeline), ("released", None, token, lifeline), ("expired", "ttl", token, None)]
    assert events[1]["expires_at"] == iso(kept_until)
    assert events[2]["expires_at"] == iso(kept_until)
    assert [(e["event"], e.get("reason"), e["token"]) for e in listener.events_for(other)] == [
        ("acquired", None, other_token), ("expired", "lifeline_expired", other_token)]
    assert listener.events_for(other)[1]["expires_at"] == iso(lifeline_expiry)


def test_a_hold_outlives_a_closed_lifeline(conn, name):
    resource = name + "r"
    lifeline = one(conn, "SELECT lease_lifeline_open(%s, '1 min')", (name + "ll",))
    token = one(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (resource, lifeline))
    assert one(conn, "SELECT lease_release(%s, %s, '1 min')", (resource, token)) is True
    assert one(conn, "SELECT lease_lifeline_close(%s)", (lifeline,)) == 0
    assert conn.execute("SELECT token, lifeline, released_at IS NOT NULL FROM lease_info(%s)",
                        (resource,)).fetchone() == (token, None, True)
    assert one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,)) is None


def test_a_hold_detaches_the_lease_from_its_session(conn, name, listener):
    resource = name + "r"
    holder = connect()
    pid = holder.info.backend_pid
    token = one(holder, "SELECT lease_acquire(%s, 'h', '1 min', NULL, true)", (resource,))
    assert one(holder, "SELECT lease_release(%s, %s, '1500 ms')", (resource, token)) is True
    assert one(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = %s AND pid = %s",
               (SESSION_LOCK_SPACE, pid)) == 0
    assert conn.execute("SELECT session_pid, application_name, released_at IS NOT NULL FROM lease_info(%s)",
                        (resource,)).fetchone() == (None, None, True)
    kept_until = one(conn, "SELECT expires_at FROM lease_info(%s)", (resource,))
    assert one(conn, "SELECT pg_terminate_backend(%s)", (pid,)) is True
    wait_for(lambda: one(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 0,
             what="the holder's backend to exit")
    holder.close()
    if one(conn, "SELECT clock_timestamp() < %s", (kept_until,)):
        assert one(conn, "SELECT token FROM lease_info(%s)", (resource,)) == token
        assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min')", (resource,)) is None
    listener.until(lambda got: any(e["resource"] == resource and e["event"] == "expired" for e in got),
                   what="the end of the hold")
    marker(conn, listener, name + "marker")
    assert summary(listener.events_for(resource)) == [("acquired", None, "h", token), ("released", None, "h", token),
                                                      ("expired", "ttl", "h", token)]


def test_a_hold_rolled_back_with_its_savepoint_leaves_the_lease_held(conn, name, listener):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min')", (resource,))
    with connect(autocommit=False) as tx:
        tx.execute("SAVEPOINT s")
        assert one(tx, "SELECT lease_release(%s, %s, '1 min')", (resource, token)) is True
        tx.execute("ROLLBACK TO SAVEPOINT s")
        tx.commit()
    assert conn.execute("SELECT token, released_at FROM lease_info(%s)", (resource,)).fetchone() == (token, None)
    assert one(conn, "SELECT lease_check(%s, %s)", (resource, token)) is True
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is True
    marker(conn, listener, name + "marker")
    assert [e["event"] for e in listener.events_for(resource)] == ["acquired", "released"]
    assert set(listener.events_for(resource)[1]) == PLAIN_RELEASED_KEYS


# --- data ---------------------------------------------------------------------------------


def test_data_is_stored_replaced_and_removed(conn, name):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => %s::jsonb)",
                (resource, '{"a": 1e5, "b": [1, "two", null], "c": {"d": true}}'))
    expected = {"a": 100000, "b": [1, "two", None], "c": {"d": True}}
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == expected
    assert one(conn, "SELECT data::text FROM lease_info(%s)", (resource,)) == \
        '{"a": 100000, "b": [1, "two", null], "c": {"d": true}}'
    assert one(conn, "SELECT data FROM lease.active WHERE resource = %s", (resource,)) == expected
    assert one(conn, "SELECT lease_set_data(%s, %s, '[\"replaced\"]')", (resource, token)) is True
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == ["replaced"]
    assert one(conn, "SELECT lease_set_data(%s, %s, '42')", (resource, token)) is True
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == 42
    assert one(conn, "SELECT lease_set_data(%s, %s, NULL)", (resource, token)) is True
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) is None
    # a JSON null is data, not the absence of it
    assert one(conn, "SELECT lease_set_data(%s, %s, 'null')", (resource, token)) is True
    assert one(conn, "SELECT data::text FROM lease_info(%s)", (resource,)) == "null"
    # a wrong token changes nothing
    assert one(conn, "SELECT lease_set_data(%s, %s, '1')", (resource, token + 1000000)) is False
    assert one(conn, "SELECT lease_set_data(%s, %s, '1')", (name + "nothing", token)) is False
    assert one(conn, "SELECT data::text FROM lease_info(%s)", (resource,)) == "null"
    # the token holds on: set_data does not touch the expiry
    before = one(conn, "SELECT expires_at FROM lease_info(%s)", (resource,))
    assert one(conn, "SELECT lease_set_data(%s, %s, '{}')", (resource, token)) is True
    assert one(conn, "SELECT expires_at FROM lease_info(%s)", (resource,)) == before
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is True
    assert one(conn, "SELECT lease_set_data(%s, %s, '{}')", (resource, token)) is False


@pytest.mark.parametrize("sql, sqlstate", [
    ("SELECT lease_set_data(NULL, 1, '{}')", "22004"),
    ("SELECT lease_set_data('kd:bad', NULL, '{}')", "22004"),
    ("SELECT lease_set_data('kd:bad', 0, '{}')", "22023"),
    ("SELECT lease_set_data('kd:bad', -1, '{}')", "22023"),
    ("SELECT lease_set_data('', 1, '{}')", "22023"),
])
def test_set_data_bad_arguments(conn, sql, sqlstate):
    assert sqlstate_of(conn, sql) == sqlstate


def test_data_limit_is_512_bytes_of_compact_json(conn, name):
    resource = name + "r"
    assert one(conn, "SELECT length(%s::jsonb::text)", (json_of_bytes(512),)) == 513  # text has a space
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => %s::jsonb)", (resource, json_of_bytes(512)))
    assert token is not None
    assert one(conn, "SELECT data->>'k' FROM lease_info(%s)", (resource,)) == "x" * 504
    assert sqlstate_of(conn, "SELECT lease_set_data(%s, %s, %s::jsonb)", (resource, token, json_of_bytes(513))) \
        == "22023"
    assert one(conn, "SELECT data->>'k' FROM lease_info(%s)", (resource,)) == "x" * 504
    # counted in bytes: two-byte characters
    assert one(conn, "SELECT lease_set_data(%s, %s, %s::jsonb)", (resource, token, json_of_bytes(512, "é"))) is True
    assert sqlstate_of(conn, "SELECT lease_set_data(%s, %s, %s::jsonb)",
                       (resource, token, json_of_bytes(514, "é"))) == "22023"
    # compact: the spaces jsonb prints are not counted (511 bytes compact, 765 as jsonb text)
    array = "[" + ", ".join(["1"] * 255) + "]"
    assert one(conn, "SELECT length(%s::jsonb::text)", (array,)) == 765
    assert one(conn, "SELECT lease_set_data(%s, %s, %s::jsonb)", (resource, token, array)) is True
    too_long = "[" + ", ".join(["1"] * 256) + "]"
    assert sqlstate_of(conn, "SELECT lease_set_data(%s, %s, %s::jsonb)", (resource, token, too_long)) == "22023"
    assert one(conn, "SELECT jsonb_array_length(data) FROM lease_info(%s)", (resource,)) == 255
    # at acquire: refused and nothing granted
    other = name + "other"
    assert sqlstate_of(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => %s::jsonb)",
                       (other, json_of_bytes(513))) == "22023"
    assert sqlstate_of(conn, "SELECT * FROM lease_acquire_any(ARRAY[%s], 'h', '1 min', data => %s::jsonb)",
                       (other, json_of_bytes(513))) == "22023"
    assert one(conn, "SELECT count(*) FROM lease_info(%s)", (other,)) == 0
    # a re-acquire with too much data changes nothing either
    assert sqlstate_of(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => %s::jsonb)",
                       (resource, json_of_bytes(513))) == "22023"
    assert one(conn, "SELECT jsonb_array_length(data) FROM lease_info(%s)", (resource,)) == 255
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is True


def test_reacquire_keeps_data_unless_given(conn, name):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => '{\"v\": 1}')", (resource,))
    assert one(conn, "SELECT lease_acquire(%s, 'h', '2 min')", (resource,)) == token
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == {"v": 1}
    assert one(conn, "SELECT lease_acquire(%s, 'h', '2 min', data => '{\"v\": 2}')", (resource,)) == token
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == {"v": 2}
    assert conn.execute("SELECT resource, token FROM lease_acquire_any(ARRAY[%s], 'h', '1 min')",
                        (resource,)).fetchall() in ([(resource, token)], [])
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == {"v": 2}
    # another holder's refused acquire does not touch it
    assert one(conn, "SELECT lease_acquire(%s, 'other', '1 min', data => '{\"v\": 3}')", (resource,)) is None
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == {"v": 2}
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is True


def test_set_data_is_fenced_out_after_a_takeover(conn, name):
    resource = name + "r"
    old = one(conn, "SELECT lease_acquire(%s, 'old', '300 ms', data => '{\"by\": \"old\"}')", (resource,))
    expires_at = one(conn, "SELECT expires_at FROM lease_info(%s)", (resource,))
    wait_past(conn, expires_at, what="the lease to expire")
    assert one(conn, "SELECT lease_set_data(%s, %s, '{\"by\": \"old, late\"}')", (resource, old)) is False
    new = one(conn, "SELECT lease_acquire(%s, 'new', '1 min', data => '{\"by\": \"new\"}')", (resource,))
    assert new > old
    assert one(conn, "SELECT lease_set_data(%s, %s, '{\"by\": \"old, later\"}')", (resource, old)) is False
    assert one(conn, "SELECT lease_set_data(%s, %s, NULL)", (resource, old)) is False
    assert conn.execute("SELECT token, data FROM lease_info(%s)", (resource,)).fetchone() == (new, {"by": "new"})
    assert one(conn, "SELECT lease_set_data(%s, %s, '{\"by\": \"new, again\"}')", (resource, new)) is True
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == {"by": "new, again"}
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, new)) is True


def test_set_data_on_an_attached_lease_ends_with_its_lifeline(conn, name):
    resource = name + "r"
    lifeline = one(conn, "SELECT lease_lifeline_open(%s, '300 ms')", (name + "ll",))
    token = one(conn, "SELECT lease_acquire(%s, 'h', lifeline => %s)", (resource, lifeline))
    assert one(conn, "SELECT lease_set_data(%s, %s, '{\"attached\": true}')", (resource, token)) is True
    assert conn.execute("SELECT lifeline, data FROM lease_info(%s)", (resource,)).fetchone() \
        == (lifeline, {"attached": True})
    expires_at = one(conn, "SELECT expires_at FROM lease.lifelines WHERE id = %s", (lifeline,))
    wait_past(conn, expires_at, what="the lifeline to lapse")
    assert one(conn, "SELECT lease_set_data(%s, %s, '{}')", (resource, token)) is False


def test_set_data_rolled_back_with_its_transaction(conn, name):
    resource = name + "r"
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => '[1]')", (resource,))
    with connect(autocommit=False) as tx:
        assert one(tx, "SELECT lease_set_data(%s, %s, '[2]')", (resource, token)) is True
        assert one(tx, "SELECT data FROM lease_info(%s)", (resource,)) == [2]
        assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == [1]
        tx.rollback()
    assert one(conn, "SELECT data FROM lease_info(%s)", (resource,)) == [1]
    assert one(conn, "SELECT lease_release(%s, %s)", (resource, token)) is True


# --- events with data ---------------------------------------------------------------------


def test_events_carry_data_only_when_notify_data_is_on(conn, name, listener):
    quiet, loud, bare, attached = (name + s for s in ("quiet", "loud", "bare", "attached"))
    # off (the default): no data in any event
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => '{\"secret\": 1}')", (quiet,))
    assert one(conn, "SELECT lease_release(%s, %s)", (quiet, token)) is True
    marker(conn, listener, name + "marker-off")
    events = listener.events_for(quiet)
    assert [e["event"] for e in events] == ["acquired", "released"]
    assert all("data" not in e for e in events)
    assert set(events[0]) == ACQUIRED_KEYS and set(events[1]) == PLAIN_RELEASED_KEYS
    reload_settings(conn, notify_data="on")
    try:
        with connect() as fresh:
            token = one(fresh, "SELECT lease_acquire(%s, 'h', '1 min', data => '{\"n\": 1e3}')", (loud,))
            assert one(fresh, "SELECT lease_set_data(%s, %s, '[\"second\"]')", (loud, token)) is True
            assert one(fresh, "SELECT lease_release(%s, %s)", (loud, token)) is True
            bare_token = one(fresh, "SELECT lease_acquire(%s, 'h', '1 min')", (bare,))
            assert one(fresh, "SELECT lease_release(%s, %s)", (bare, bare_token)) is True
            short = one(fresh, "SELECT lease_acquire(%s, 'h', '200 ms', data => '\"going\"')", (name + "short",))
            lifeline = one(fresh, "SELECT lease_lifeline_open(%s, '300 ms')", (name + "ll",))
            attached_token = one(fresh, "SELECT lease_acquire(%s, 'h', lifeline => %s, data => '{\"a\": 1}')",
                                 (attached, lifeline))
            listener.until(lambda got: len([e for e in got if e["event"] == "expired"
                                            and e["resource"] in (name + "short", attached)]) == 2,
                           what="the expiries")
            marker(fresh, listener, name + "marker-on")
    finally:
        reload_settings(conn, notify_data=None)
    events = {e["event"]: e for e in listener.events_for(loud)}
    assert events["acquired"]["data"] == {"n": 1000}
    assert set(events["acquired"]) == ACQUIRED_KEYS | {"data"}
    assert events["released"]["data"] == ["second"]
    assert set(events["released"]) == PLAIN_RELEASED_KEYS | {"data"}
    assert all("data" not in e for e in listener.events_for(bare))
    assert [(e["event"], e.get("reason"), e["token"], e.get("data")) for e in listener.events_for(name + "short")] \
        == [("acquired", None, short, "going"), ("expired", "ttl", short, "going")]
    assert [(e["event"], e.get("reason"), e["token"], e.get("data"), e.get("lifeline"))
            for e in listener.events_for(attached)] == [
        ("acquired", None, attached_token, {"a": 1}, lifeline),
        ("expired", "lifeline_expired", attached_token, {"a": 1}, lifeline)]
    # off again
    token = one(conn, "SELECT lease_acquire(%s, 'h', '1 min', data => '{\"secret\": 2}')", (quiet,))
    assert one(conn, "SELECT lease_release(%s, %s)", (quiet, token)) is True
    marker(conn, listener, name + "marker-off-again")
    assert all("data" not in e for e in listener.events_for(quiet))


def test_a_kept_release_announces_data_with_notify_data(conn, name, listener):
    resource = name + "r"
    reload_settings(conn, notify_data="on")
    try:
        with connect() as fresh:
            token = one(fresh, "SELECT lease_acquire(%s, 'h', '1 min', data => '{\"job\": 7}')", (resource,))
            assert one(fresh, "SELECT lease_release(%s, %s, '1 min')", (resource, token)) is True
            kept_until = one(fresh, "SELECT expires_at FROM lease_info(%s)", (resource,))
            marker(fresh, listener, name + "marker")
    finally:
        reload_settings(conn, notify_data=None)
    released = [e for e in listener.events_for(resource) if e["event"] == "released"]
    assert len(released) == 1
    assert released[0]["data"] == {"job": 7}
    assert released[0]["expires_at"] == iso(kept_until)
    assert set(released[0]) == KEPT_RELEASED_KEYS | {"data"}
