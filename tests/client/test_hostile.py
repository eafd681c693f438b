"""Hostile input: thousands of calls with random arguments to every function. Every error must
be one of the documented SQLSTATEs, nothing may be left half-done, and the server must stay up."""

import random

import psycopg

from conftest import connect, one

# The API's own errors, and PostgreSQL's for interval text it cannot parse or represent.
DOCUMENTED = {"22004", "22023", "55000", "22007", "22008", "22015"}
CALLS = 3000


def random_text(rng):
    kind = rng.random()
    if kind < 0.1:
        return None
    if kind < 0.2:
        return ""
    if kind < 0.3:
        return " " * rng.randint(1, 5) + "\t\n"
    if kind < 0.4:
        return "x" * rng.choice([255, 256, 257, 511, 512, 513, 10_000])
    alphabet = "abc:/\"'\\\n\t\r\x01\x1f\x7fé€日😀%_*"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


def random_interval(rng):
    return rng.choice([
        None, "0", "1 ms", "-1 s", "30 s", "1 day", "1 day 1 s", "2 days", "1 month", "-1 month 40 days",
        "1000000 years", "infinity", "-infinity", "nonsense", "1 fortnight", "99999999999 s", "00:00:00.000001",
    ])


def random_wait(rng):
    # waits stay short: a random holder may really have to wait for a random lease
    return rng.choice([None, None, None, "0", "-1 s", "5 ms", "-infinity", "nonsense", "-99999999999 s"])


def random_token(rng):
    return rng.choice([None, 0, -1, 1, 2**31, 2**48, 2**63 - 1, -(2**63), rng.randint(1, 10**6)])


def test_random_calls_raise_only_documented_errors():
    rng = random.Random(20261126)
    calls = [
        ("SELECT lease_acquire(%s, %s, %s::interval, %s::interval, %s)",
         lambda: (random_text(rng), random_text(rng), random_interval(rng), random_wait(rng),
                  rng.choice([None, False, True]))),
        ("SELECT lease_renew(%s, %s, %s::interval)", lambda: (random_text(rng), random_token(rng), random_interval(rng))),
        ("SELECT lease_release(%s, %s)", lambda: (random_text(rng), random_token(rng))),
        ("SELECT lease_check(%s, %s)", lambda: (random_text(rng), random_token(rng))),
        ("SELECT lease_assert(%s, %s)", lambda: (random_text(rng), random_token(rng))),
        ("SELECT count(*) FROM lease_info(%s)", lambda: (random_text(rng),)),
        ("SELECT lease_force_release(%s)", lambda: (random_text(rng),)),
        ("SELECT lease_sweep(%s)", lambda: (rng.choice([None, -1, 0, 1, 5, 2**31 - 1]),)),
    ]
    seen = {}
    with connect() as conn:
        conn.execute("SET lease.default_ttl = '50ms'")
        for _ in range(CALLS):
            sql, make = rng.choice(calls)
            try:
                conn.execute(sql, make())
                outcome = "ok"
            except psycopg.errors.QueryCanceled:
                raise
            except psycopg.Error as error:
                outcome = error.sqlstate
                assert outcome in DOCUMENTED, (sql, outcome, error)
            seen[outcome] = seen.get(outcome, 0) + 1
        assert one(conn, "SELECT 1") == 1
        # every change was either made whole or not at all: rows are well formed
        assert one(conn, "SELECT count(*) FROM lease.leases WHERE expires_at < acquired_at OR token <= 0 "
                         "OR resource = '' OR octet_length(resource) > 512 OR octet_length(holder) > 256") == 0
        conn.execute("DELETE FROM lease.leases WHERE holder <> 'marker'")
    assert seen.get("ok", 0) > CALLS // 10 and {"22004", "22023"} <= set(seen), seen
