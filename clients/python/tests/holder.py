"""A holder process for the tests (PGLEASE_DSN is the server).

    holder.py hold RESOURCE TTL     acquire, then every 50 ms write a row of progress fenced by the
                                    lease, stopping itself (SIGSTOP) after the fifth; on loss say
                                    why and exit with status 3
    holder.py elect RESOURCE TTL NAME   campaign; say "leading TOKEN" at each term
"""

import os
import signal
import sys
import threading

import psycopg

import pglease

DSN = os.environ["PGLEASE_DSN"]


def hold(resource, ttl):
    with pglease.Client(DSN) as client, psycopg.connect(DSN) as conn:
        lease = client.lease(resource, ttl=ttl)
        print(f"token {lease.token}", flush=True)
        writes = 0
        while True:
            try:
                with conn.transaction():
                    lease.fence(conn)
                    conn.execute("INSERT INTO pglease_progress (resource, token) VALUES (%s, %s)", (resource, lease.token))
            except pglease.LeaseLost as lost:
                print(f"lost {lost.loss.cause if lost.loss else 'clock'} sqlstate={lost.sqlstate}", flush=True)
                return 3
            writes += 1
            if writes == 5:
                # Paused here, between two transactions, until the test sends SIGCONT.
                print("pausing", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
            lease.lost.wait(0.05)


def elect(resource, ttl, name):
    with pglease.Client(DSN, holder=name) as client:
        election = client.election(resource, ttl=ttl,
                                   on_elected=lambda lease: print(f"leading {lease.token}", flush=True))
        election.start()
        print("candidate", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    mode, resource, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sys.exit(hold(resource, ttl) if mode == "hold" else elect(resource, ttl, sys.argv[4]))
