"""Races between callers on one resource, checked by invariants, not by timing."""

import random
import threading

from conftest import connect, one

ROUNDS = 40
RACERS = 8


def race(functions):
    """Runs each function on its own connection, all released at once; returns their results."""
    barrier = threading.Barrier(len(functions))
    results = [None] * len(functions)
    errors = []
    connections = [connect() for _ in functions]

    def run(index, function):
        try:
            barrier.wait()
            results[index] = function(connections[index])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for connection in connections:
        connection.close()
    assert not errors, errors
    return results


def test_concurrent_acquirers_get_exactly_one_grant():
    for round_number in range(ROUNDS):
        resource = f"race:acquire:{round_number}"
        tokens = race(
            [lambda c, i=i: one(c, "SELECT lease_acquire(%s, %s, '1 min')", (resource, f"h{i}")) for i in range(RACERS)]
        )
        granted = [t for t in tokens if t is not None]
        assert len(granted) == 1, tokens
        with connect() as conn:
            assert one(conn, "SELECT token FROM lease_info(%s)", (resource,)) == granted[0]


def test_renew_and_takeover_never_both_succeed():
    rng = random.Random(7)
    outcomes = set()
    for round_number in range(ROUNDS * 2):
        resource = f"race:renew:{round_number}"
        with connect() as conn:
            token = one(conn, "SELECT lease_acquire(%s, 'old', '3 ms')", (resource,))
        delay = rng.choice([0.0, 0.001, 0.002, 0.003, 0.004])

        def renew(c):
            c.execute("SELECT pg_sleep(%s)", (delay,))
            return one(c, "SELECT lease_renew(%s, %s, '1 min')", (resource, token))

        def take_over(c):
            c.execute("SELECT pg_sleep(0.003)")
            return one(c, "SELECT lease_acquire(%s, 'new', '1 min')", (resource,))

        renewed, new_token = race([renew, take_over])
        assert not (renewed and new_token is not None), (renewed, new_token)
        with connect() as conn:
            holder = one(conn, "SELECT holder FROM lease_info(%s)", (resource,))
        assert holder == ("old" if renewed else "new" if new_token else None)
        outcomes.add((renewed, new_token is not None))
    # both orders happened at least once, so the race was real
    assert (True, False) in outcomes or (False, True) in outcomes


def test_release_and_takeover_never_both_succeed():
    for round_number in range(ROUNDS):
        resource = f"race:release:{round_number}"
        with connect() as conn:
            token = one(conn, "SELECT lease_acquire(%s, 'old', '2 ms')", (resource,))

        def release(c):
            return one(c, "SELECT lease_release(%s, %s)", (resource, token))

        def take_over(c):
            c.execute("SELECT pg_sleep(0.002)")
            return one(c, "SELECT lease_acquire(%s, 'new', '1 min')", (resource,))

        released, new_token = race([release, take_over])
        # a takeover after a release is fine; a release after a takeover must fail
        if new_token is not None and released:
            with connect() as conn:
                assert one(conn, "SELECT holder FROM lease_info(%s)", (resource,)) == "new"


def test_tokens_strictly_increase_under_concurrency():
    def grab(c, i):
        tokens = []
        for n in range(50):
            tokens.append(one(c, "SELECT lease_acquire(%s, 'h', '1 min')", (f"race:tokens:{i}:{n}",)))
        return tokens

    results = race([lambda c, i=i: grab(c, i) for i in range(RACERS)])
    for tokens in results:
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    everything = [t for tokens in results for t in tokens]
    assert len(set(everything)) == len(everything)
