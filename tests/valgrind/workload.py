"""A short multi-connection workload for the valgrind run (tests/valgrind/run.sh): waiting
acquires woken by release and by expiry, a session-bound lease whose holder is terminated,
events seen by a LISTENing client, the expiry worker sweeping, lease_acquire_any claimers,
the lease_fence trigger, and a few threads of mixed calls.

Every step waits for a condition with a generous deadline (the server runs 20-50x slower under
valgrind) and checks exact results. Prints one line per scenario and exits non-zero if any
failed.

    python tests/valgrind/workload.py --port 54450 [--dbname postgres]
"""

import argparse
import json
import pathlib
import random
import sys
import threading
import time
import traceback

import psycopg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "client"))
from conftest import one, wait_for  # noqa: E402  (the client tests' helpers)

DEADLINE = 300.0  # seconds: everything is slow under valgrind
ARGS = None


def connect(autocommit=True):
    return psycopg.connect(
        f"host=127.0.0.1 port={ARGS.port} user=postgres dbname={ARGS.dbname}", autocommit=autocommit
    )


def expect(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


class InThread:
    """Runs `function(connection)` on a connection of its own in a thread."""

    def __init__(self, function):
        self.connection = connect()
        self.pid = self.connection.info.backend_pid
        self.value = self.error = None
        self.thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self.thread.start()

    def _run(self, function):
        try:
            self.value = function(self.connection)
        except BaseException as error:  # re-raised by result()
            self.error = error

    def result(self):
        self.thread.join(DEADLINE)
        if self.thread.is_alive():
            raise AssertionError("background call did not finish")
        self.connection.close()
        if self.error is not None:
            raise self.error
        return self.value


class Listener:
    """A LISTENing connection that collects the parsed event payloads."""

    def __init__(self):
        self.connection = connect()
        self.connection.execute("LISTEN lease_events")
        self.received = []

    def until(self, predicate, what):
        deadline = time.monotonic() + DEADLINE
        while not predicate(self.received):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; received {self.received}")
            for notify in self.connection.notifies(timeout=0.5, stop_after=1):
                self.received.append(json.loads(notify.payload))
        return self.received

    def events_for(self, resource):
        return [(e["event"], e.get("reason"), e["token"]) for e in self.received if e["resource"] == resource]

    def close(self):
        self.connection.close()


def is_waiting(observer, pid):
    row = observer.execute(
        "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return row == ("Extension", "Extension")


def waiter(resource, holder):
    return InThread(lambda c: one(c, "SELECT lease_acquire(%s, %s, '1 min', '240 s')", (resource, holder)))


def expect_b_took_over(conn, resource, held, token):
    """Checks that waiter b holds `resource` with a token larger than `held`, then releases it."""
    expect(token > held, True, "the waiter's token is larger")
    expect(one(conn, "SELECT holder FROM lease_info(%s)", (resource,)), "b", "holder")
    one(conn, "SELECT lease_release(%s, %s)", (resource, token))


def scenario_wait_woken_by_release(conn):
    held = one(conn, "SELECT lease_acquire('vg:wait-release', 'a', '1 hour')")
    b = waiter("vg:wait-release", "b")
    wait_for(lambda: is_waiting(conn, b.pid), DEADLINE, "b to wait")
    expect(one(conn, "SELECT lease_release('vg:wait-release', %s)", (held,)), True, "release")
    expect_b_took_over(conn, "vg:wait-release", held, b.result())


def scenario_wait_woken_by_expiry(conn):
    held = one(conn, "SELECT lease_acquire('vg:wait-expiry', 'a', '2 s')")
    b = waiter("vg:wait-expiry", "b")
    expect_b_took_over(conn, "vg:wait-expiry", held, b.result())


def scenario_waiters_in_order_and_cancelled(conn):
    held = one(conn, "SELECT lease_acquire('vg:fifo', 'holder', '1 hour')")
    first = waiter("vg:fifo", "first")
    wait_for(lambda: is_waiting(conn, first.pid), DEADLINE, "first to wait")
    cancelled = InThread(lambda c: one(c, "SELECT lease_acquire('vg:fifo', 'cancelled', '1 min', '240 s')"))
    wait_for(lambda: is_waiting(conn, cancelled.pid), DEADLINE, "the second waiter to wait")
    second = waiter("vg:fifo", "second")
    wait_for(lambda: is_waiting(conn, second.pid), DEADLINE, "second to wait")
    expect(one(conn, "SELECT pg_cancel_backend(%s)", (cancelled.pid,)), True, "cancel")
    try:
        cancelled.result()
        raise AssertionError("the cancelled wait returned")
    except psycopg.errors.QueryCanceled:
        pass
    expect(one(conn, "SELECT lease_release('vg:fifo', %s)", (held,)), True, "release")
    token = first.result()
    expect(one(conn, "SELECT holder FROM lease_info('vg:fifo')"), "first", "first come, first served")
    wait_for(lambda: is_waiting(conn, second.pid), DEADLINE, "second to wait on")
    expect(one(conn, "SELECT lease_release('vg:fifo', %s)", (token,)), True, "release by first")
    last = second.result()
    expect(one(conn, "SELECT holder FROM lease_info('vg:fifo')"), "second", "then the next")
    one(conn, "SELECT lease_release('vg:fifo', %s)", (last,))


def scenario_session_bound_holder_terminated(conn):
    listener = Listener()
    holder = connect()
    pid = holder.info.backend_pid
    token = one(holder, "SELECT lease_acquire('vg:session', 'h', '1 hour', NULL, true)")
    b = waiter("vg:session", "next")
    wait_for(lambda: is_waiting(conn, b.pid), DEADLINE, "the waiter to wait")
    expect(one(conn, "SELECT pg_terminate_backend(%s)", (pid,)), True, "terminate the holder")
    new_token = b.result()
    expect(one(conn, "SELECT holder FROM lease_info('vg:session')"), "next", "holder after the session ended")
    listener.until(lambda got: len([e for e in got if e["resource"] == "vg:session"]) >= 3, "session events")
    expect(
        listener.events_for("vg:session"),
        [("acquired", None, token), ("expired", "session_ended", token), ("acquired", None, new_token)],
        "events of the session-bound lease",
    )
    listener.close()
    holder.close()
    one(conn, "SELECT lease_release('vg:session', %s)", (new_token,))


def scenario_events_and_worker_sweep(conn):
    listener = Listener()
    token = one(conn, "SELECT lease_acquire('vg:event', 'h', '1 min')")
    expect(one(conn, "SELECT lease_renew('vg:event', %s, '2 min')", (token,)), True, "renew")
    expect(one(conn, "SELECT lease_release('vg:event', %s)", (token,)), True, "release")
    with connect(autocommit=False) as tx:
        one(tx, "SELECT lease_acquire('vg:rolled-back', 'h')")
        tx.rollback()
    short = [one(conn, "SELECT lease_acquire(%s, 'h', '1 s')", (f"vg:short:{i}",)) for i in range(5)]
    # Nobody calls lease_sweep: only the worker removes these and announces their expiry.
    listener.until(
        lambda got: len([e for e in got if e["event"] == "expired" and e["resource"].startswith("vg:short:")]) == 5,
        "the worker to expire five leases",
    )
    wait_for(lambda: one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE 'vg:short:%%'") == 0,
             DEADLINE, "the expired rows to be removed")
    expect(listener.events_for("vg:event"), [("acquired", None, token), ("released", None, token)], "vg:event")
    expect(listener.events_for("vg:rolled-back"), [], "a rolled-back acquire announces nothing")
    for i, t in enumerate(short):
        expect(listener.events_for(f"vg:short:{i}"), [("acquired", None, t), ("expired", "ttl", t)], f"vg:short:{i}")
    seqs = [e["seq"] for e in listener.received]
    expect(seqs, sorted(set(seqs)), "sequence numbers increase")
    listener.close()


def scenario_acquire_any(conn):
    resources = [f"vg:job:{i}" for i in range(8)]
    one_tx = connect(autocommit=False)
    two_tx = connect(autocommit=False)
    first = one_tx.execute("SELECT resource, token FROM lease_acquire_any(%s, 'one', '1 min', 3)", (resources,)).fetchall()
    second = two_tx.execute("SELECT resource, token FROM lease_acquire_any(%s, 'two', '1 min', 3)", (resources,)).fetchall()
    one_tx.commit()
    two_tx.commit()
    expect([r for r, _ in first], resources[:3], "the first claimer's resources")
    expect([r for r, _ in second], resources[3:6], "the second claimer skips the first's")
    again = two_tx.execute("SELECT resource FROM lease_acquire_any(%s, 'two', '1 min', 10)", (resources,)).fetchall()
    two_tx.commit()
    expect([r for (r,) in again], resources[3:], "held ones are returned again, taken ones skipped")
    expect(one(conn, "SELECT count(*) FROM lease.leases WHERE resource LIKE 'vg:job:%%'"), 8, "leases")
    one_tx.close()
    two_tx.close()
    expect(one(conn, "SELECT count(*) FROM (SELECT lease_force_release(resource) FROM lease.leases "
                     "WHERE resource LIKE 'vg:job:%%') AS revoked"), 8, "revoked")


def scenario_fence_trigger(conn):
    conn.execute("DROP TABLE IF EXISTS vg_jobs")
    conn.execute("CREATE TABLE vg_jobs (id bigint PRIMARY KEY, state text NOT NULL, lease_token bigint)")
    conn.execute("INSERT INTO vg_jobs VALUES (1, 'queued', NULL), (2, 'queued', NULL)")
    conn.execute("CREATE TRIGGER vg_jobs_fence BEFORE UPDATE OR DELETE ON vg_jobs "
                 "FOR EACH ROW EXECUTE FUNCTION lease_fence('id', 'lease_token', 'vg:fenced:')")
    token = one(conn, "SELECT lease_acquire('vg:fenced:1', 'w', '1 hour')")
    conn.execute("UPDATE vg_jobs SET state = 'running', lease_token = %s WHERE id = 1", (token,))
    for statement in ("UPDATE vg_jobs SET state = 'stolen' WHERE id = 2",
                      f"UPDATE vg_jobs SET state = 'stolen', lease_token = {token} WHERE id = 2",
                      "UPDATE vg_jobs SET id = 3 WHERE id = 1"):
        try:
            conn.execute(statement)
            raise AssertionError(f"not rejected: {statement}")
        except psycopg.errors.ObjectNotInPrerequisiteState:
            pass
    expect(one(conn, "SELECT lease_release('vg:fenced:1', %s)", (token,)), True, "release")
    try:
        conn.execute("DELETE FROM vg_jobs WHERE id = 1")
        raise AssertionError("a delete with a released token passed")
    except psycopg.errors.ObjectNotInPrerequisiteState:
        pass
    try:
        conn.execute("SELECT lease_fence()")
        raise AssertionError("a direct call passed")
    except psycopg.errors.TriggeredActionException:
        pass
    expect(conn.execute("SELECT id, state FROM vg_jobs ORDER BY id").fetchall(),
           [(1, "running"), (2, "queued")], "rows")
    conn.execute("DROP TABLE vg_jobs")


def mixed_calls(conn, seed, rounds):
    """Random acquire/renew/check/release/force-release calls on a few shared resources."""
    rng = random.Random(seed)
    tokens = {}
    for _ in range(rounds):
        resource = f"vg:mixed:{rng.randrange(4)}"
        action = rng.choice(["acquire", "acquire", "renew", "check", "release", "any", "force"])
        if action == "acquire":
            tokens[resource] = one(conn, "SELECT lease_acquire(%s, %s, '300 ms')", (resource, f"h{seed}"))
        elif action == "any":
            conn.execute("SELECT * FROM lease_acquire_any(ARRAY['vg:mixed:0', 'vg:mixed:1', 'vg:mixed:2'], "
                         "%s, '200 ms', 2, %s)", (f"h{seed}", rng.random() < 0.5))
        elif action == "force":
            one(conn, "SELECT lease_force_release(%s)", (resource,))
        elif tokens.get(resource):
            one(conn, f"SELECT lease_{action}(%s, %s)", (resource, tokens[resource]))
    return True


def scenario_mixed_threads(conn):
    threads = [InThread(lambda c, seed=seed: mixed_calls(c, seed, 150)) for seed in range(4)]
    expect([t.result() for t in threads], [True] * 4, "every thread finished")
    conn.execute("SELECT lease_force_release(resource) FROM lease.leases WHERE resource LIKE 'vg:mixed:%'")


SCENARIOS = [
    scenario_wait_woken_by_release,
    scenario_wait_woken_by_expiry,
    scenario_waiters_in_order_and_cancelled,
    scenario_session_bound_holder_terminated,
    scenario_events_and_worker_sweep,
    scenario_acquire_any,
    scenario_fence_trigger,
    scenario_mixed_threads,
]


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", default="postgres")
    ARGS = parser.parse_args()
    failed = 0
    for scenario in SCENARIOS:
        name = scenario.__name__.removeprefix("scenario_")
        started = time.monotonic()
        try:
            with connect() as conn:
                scenario(conn)
            print(f"workload {name}: ok ({time.monotonic() - started:.1f} s)", flush=True)
        except Exception:
            failed += 1
            print(f"workload {name}: FAILED\n{traceback.format_exc()}", flush=True)
    print(f"workload: {len(SCENARIOS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
