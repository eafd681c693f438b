"""Leader election with the lease extension and psycopg 3.

Every candidate runs this program. Candidates queue on one lease with
`lease_acquire(..., wait => ...)`; the one granted leads. The leader renews at a third of the
ttl, LISTENs to lease_events while it leads, and stops leading the moment a renewal fails, its
lease is announced as revoked, released or expired, or its own clock says the lease ran out.
Everything the leader does in the database is fenced by its token (here: its row in
leader_terms), so even a leader that stalled past its lease cannot act after a successor began.

Run (after `psql -f schema.sql`), in several terminals:
    python3 leader.py [--dsn DSN] [--name NAME] [--resource R] [--ttl SECONDS] [--session-bound]
Without --dsn, libpq's PG* environment variables choose the server. SIGTERM or Ctrl-C: a
leader releases its lease before exiting, so a successor takes over at once.
"""

import argparse
import json
import os
import signal
import socket
import sys
import time
from datetime import timedelta

import psycopg

CHANNEL = "lease_events"  # lease.notify_channel
ENDINGS = {"released", "expired", "revoked"}


def say(args, message):
    print(f"{args.name}: {message}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="lease-based leader election candidate")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG* variables)")
    parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="this candidate's name")
    parser.add_argument("--resource", default="leader:demo", help="the lease the candidates compete for")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease ttl in seconds")
    parser.add_argument("--session-bound", action="store_true", help="end the lease with the leader's session too")
    args = parser.parse_args(argv)
    args.ttl_interval = timedelta(seconds=args.ttl)
    return args


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM steps down like Ctrl-C
    try:
        while True:
            try:
                with psycopg.connect(args.dsn, autocommit=True, application_name=f"leader {args.name}") as conn:
                    campaign(conn, args)
            except psycopg.OperationalError as error:
                say(args, f"connection failed: {error}; reconnecting in 1 s")
                time.sleep(1)
    except KeyboardInterrupt:
        say(args, "exiting")
        return 0


def campaign(conn, args):
    """Queues for the lease (one ttl at a time) and leads whenever it is granted."""
    say(args, f"candidate for {args.resource}")
    try:
        while True:
            token = conn.execute(
                "SELECT lease_acquire(%s, %s, %s, wait => %s, session_bound => %s)",
                (args.resource, args.name, args.ttl_interval, args.ttl_interval, args.session_bound),
            ).fetchone()[0]
            if token is not None:
                lead(conn, args, token, valid_until=time.monotonic() + args.ttl)
    except KeyboardInterrupt:
        step_down(conn, args)
        raise


def lead(conn, args, token, valid_until):
    """Leads until the lease is lost; says why it stopped."""
    conn.execute(f"LISTEN {CHANNEL}")
    try:
        if record_term(conn, args, token):
            say(args, f"leading {args.resource} with token {token}")
            reason = hold(conn, args, token, valid_until)
        else:
            reason = "the lease ended before the term began"
    except KeyboardInterrupt:
        reason = "shutting down"
        raise
    except psycopg.Error as error:
        reason = f"database error: {error}"
        raise
    finally:
        say(args, f"stopped leading (token {token}): {reason}")
    conn.execute(f"UNLISTEN {CHANNEL}")


def step_down(conn, args):
    """Releases the lease if this candidate holds it, so a successor need not wait for the ttl.
    Also covers a grant that arrived together with the signal (its answer was discarded)."""
    try:
        for (token,) in conn.execute(
            "SELECT token FROM lease_info(%s) WHERE holder = %s AND owner = current_user", (args.resource, args.name)
        ).fetchall():
            released = conn.execute("SELECT lease_release(%s, %s)", (args.resource, token)).fetchone()[0]
            say(args, f"released token {token}: {released}")
    except psycopg.Error as error:
        say(args, f"could not release (the lease will expire): {error}")


def hold(conn, args, token, valid_until):
    """Waits for events between renewals; returns why leadership ended."""
    period = args.ttl / 3
    next_renewal = time.monotonic() + period
    while True:
        for notify in conn.notifies(timeout=max(0.0, next_renewal - time.monotonic()), stop_after=1):
            event = json.loads(notify.payload)
            if event["resource"] == args.resource and event["token"] == token and event["event"] in ENDINGS:
                return f"{event['event']} (event)"
        if time.monotonic() < next_renewal:
            continue
        if time.monotonic() >= valid_until:
            return "the lease ran out before it could be renewed"
        sent = time.monotonic()
        if not renew(conn, args, token):
            return "renewal refused"
        valid_until = sent + args.ttl
        next_renewal = sent + period
        if not heartbeat(conn, args, token):
            return "fenced write refused"


def renew(conn, args, token):
    return conn.execute("SELECT lease_renew(%s, %s, %s)", (args.resource, token, args.ttl_interval)).fetchone()[0]


def record_term(conn, args, token):
    """Starts this term's row, only if the token still holds the lease (the fence)."""
    cursor = conn.execute(
        "INSERT INTO leader_terms (resource, token, candidate) SELECT %s, %s, %s WHERE lease_check(%s, %s)",
        (args.resource, token, args.name, args.resource, token),
    )
    return cursor.rowcount == 1


def heartbeat(conn, args, token):
    """The leader's periodic work: a fenced write that proves it still leads."""
    cursor = conn.execute(
        "UPDATE leader_terms SET last_seen_at = clock_timestamp() "
        "WHERE resource = %s AND token = %s AND lease_check(resource, token)",
        (args.resource, token),
    )
    return cursor.rowcount == 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
