"""Tokens are never reused: across a clean restart, a crash, and a crash that loses
asynchronously committed grants."""

from conftest import connect, one, pg_ctl, wait_for


def restart(mode):
    pg_ctl("-m", mode, "-w", "stop")
    pg_ctl("-w", "-t", "60", "-l", pg_ctl_log(), "start")
    wait_for(server_accepts, what="the server to accept connections")


def pg_ctl_log():
    from conftest import DATA_DIR
    import os

    return os.path.join(os.path.dirname(DATA_DIR), "server.log")


def server_accepts():
    try:
        with connect() as conn:
            return one(conn, "SELECT NOT pg_is_in_recovery()")
    except Exception:
        return False


def grant_many(prefix, count, synchronous_commit="on"):
    with connect() as conn:
        conn.execute(f"SET synchronous_commit = {synchronous_commit}")
        return [one(conn, "SELECT lease_acquire(%s, 'h', '1 hour')", (f"{prefix}:{n}",)) for n in range(count)]


def test_committed_leases_and_tokens_survive_a_crash():
    tokens = grant_many("durable", 20)
    restart("immediate")
    with connect() as conn:
        kept = dict(conn.execute("SELECT resource, token FROM lease.leases WHERE resource LIKE 'durable:%'").fetchall())
        assert kept == {f"durable:{n}": t for n, t in enumerate(tokens)}
        assert one(conn, "SELECT lease_acquire('durable:after', 'h')") > max(tokens)


def test_tokens_increase_across_a_clean_restart():
    before = max(grant_many("clean", 5))
    restart("fast")
    assert max(grant_many("clean-after", 1)) > before


def test_tokens_are_not_reused_after_a_crash_with_synchronous_commit_off():
    # With synchronous_commit = off the last grants may be lost in a crash, but their token
    # numbers must never be handed out again.
    seen = grant_many("async", 200, synchronous_commit="off")
    restart("immediate")
    after = grant_many("async-after", 1)[0]
    assert after > max(seen)
