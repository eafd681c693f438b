"""Leader election with the lease extension and its Python client (clients/python, `pglease`).

Every candidate runs this program. The client's election campaigns in the background (queued on
`lease_acquire(..., wait => ...)`, first come first served), renews the leader's lease at a third
of the ttl on a connection of its own, and marks the lease lost the moment a renewal is refused,
an event says it was revoked, released or expired, or its own clock says the ttl ran out. This
program does the leader's work: every write is fenced by the token on the program's own
connection (here: its row in leader_terms), so even a leader that stalled past its lease cannot
act after a successor began.

Run (after `psql -f schema.sql` and `pip install ./clients/python`), in several terminals:
    python3 leader.py [--dsn DSN] [--name NAME] [--resource R] [--ttl SECONDS] [--session-bound]
Without --dsn, libpq's PG* environment variables choose the server. SIGTERM or Ctrl-C: a
leader releases its lease before exiting, so a successor takes over at once.
"""

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psycopg

try:
    import pglease
except ImportError:  # not installed: use the copy in this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "src"))
    import pglease


def say(args, message):
    print(f"{args.name}: {message}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="lease-based leader election candidate")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG* variables)")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="this candidate's name")
    parser.add_argument("--resource", default="leader:demo", help="the lease the candidates compete for")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease ttl in seconds")
    parser.add_argument("--session-bound", action="store_true", help="end the lease with the leader's session too")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM steps down like Ctrl-C
    client = pglease.Client(args.dsn, holder=args.name, application_name=f"leader {args.name}")
    election = client.election(args.resource, ttl=args.ttl, session_bound=args.session_bound)
    try:
        election.start()
        say(args, f"candidate for {args.resource}")
        while True:
            lease = election.wait_elected()
            try:
                with psycopg.connect(args.dsn, application_name=f"leader {args.name} work") as conn:
                    lead(conn, args, lease)
            except psycopg.OperationalError as error:
                say(args, f"connection failed: {error}; reconnecting in 1 s")
                time.sleep(1)
    except KeyboardInterrupt:
        token = election.stop()  # resigns: releases the lease if it leads
        if token is not None:
            say(args, f"released token {token}: True")
        client.close()
        say(args, "exiting")
        return 0


def lead(conn, args, lease):
    """Leads until the lease is lost; says why it stopped."""
    reason = "the lease ended before the term began"
    try:
        if write_fenced(conn, lease, "INSERT INTO leader_terms (resource, token, candidate) VALUES (%s, %s, %s)",
                        (args.resource, lease.token, args.name)):
            say(args, f"leading {args.resource} with token {lease.token}")
            reason = hold(conn, args, lease)
    except KeyboardInterrupt:
        reason = "shutting down"
        raise
    except psycopg.Error as error:
        reason = f"database error: {error}"
        raise
    finally:
        say(args, f"stopped leading (token {lease.token}): {reason}")


def hold(conn, args, lease):
    """The leader's periodic work, a fenced write every third of the ttl, until the lease is lost;
    returns why leadership ended."""
    while not lease.lost.wait(args.ttl / 3):
        if not write_fenced(conn, lease, "UPDATE leader_terms SET last_seen_at = clock_timestamp() "
                                         "WHERE resource = %s AND token = %s", (args.resource, lease.token)):
            return "fenced write refused"
    return describe(lease.loss)


def write_fenced(conn, lease, statement, params):
    """One transaction: the fence (lease_assert with the token), then the write; both commit
    together, or the fence refuses and nothing is written."""
    try:
        with conn.transaction():
            lease.fence(conn)
            conn.execute(statement, params)
        return True
    except pglease.LeaseLost:
        return False


def describe(loss):
    if loss is None:
        return "released"
    if loss.from_event:
        return f"{loss.cause} (event)"
    return {
        "refused": "renewal refused",
        "deadline": "the lease ran out before it could be renewed",
        "session_ended": "the session the lease was bound to ended",
    }.get(loss.cause, str(loss))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
