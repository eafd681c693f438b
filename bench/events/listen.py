"""Listens on lease_events while a benchmark runs; on SIGTERM prints how many events arrived
and whether the sequence numbers had gaps (events dropped by a full ring).
Usage: listen.py PORT OUTPUT_FILE"""

import json
import signal
import sys

import psycopg

port, output = int(sys.argv[1]), sys.argv[2]
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
conn = psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True)
conn.execute("LISTEN lease_events")
received = gaps = 0
last_seq = None
with open(output, "w") as ready:
    ready.write("listening\n")
idle_rounds = 0
while not stop or idle_rounds < 5:  # after SIGTERM, drain until a second passes with nothing
    got = 0
    for notify in conn.notifies(timeout=0.2):
        got += 1
        seq = json.loads(notify.payload)["seq"]
        if last_seq is not None and seq != last_seq + 1:
            gaps += seq - last_seq - 1
        last_seq = seq
        received += 1
    idle_rounds = idle_rounds + 1 if got == 0 else 0
with open(output, "w") as result:
    result.write(f"{received} {gaps}\n")
