#!/usr/bin/env bash
# A counting semaphore: 32 clients on one resource of capacity 4, the extension's permits
# (lease_acquire(..., capacity => 4, wait => '10 s'), fenced with lease_assert, released with
# lease_release) against a hand-written semaphore of 4 slot rows claimed with SELECT ... FOR UPDATE
# SKIP LOCKED in a transaction held for the work, polling while none is free. The two alternate in
# every round (the order rotated between rounds); medians are reported
# (bench/coordination/semaphore.py says what is measured: most holders at one instant, FIFO
# inversions, handover latency).
# Needs the permits of lease_acquire (its capacity argument): without them it stops at once with
# an error saying so.
# Usage: bench/coordination/semaphore.sh [seconds per run, default 10]. Prints a Markdown table and
# writes it to bench/results/coordination-semaphore-DATE.md.
# Environment: LEASE_BENCH_ROUNDS (3), SEMAPHORE_CLIENTS (32), SEMAPHORE_CAPACITY (4),
# SEMAPHORE_HOLD_MS (5), SEMAPHORE_POLL_MS (10), COORD_SYNC (synchronous_commit of the clients: on);
# and those of bench/lifelines/server.sh (LEASE_BENCH_PORT, LEASE_BENCH_RESULTS, LEASE_BENCH_BUILD,
# LEASE_RUN_DIR).
# A smoke run: LEASE_BENCH_ROUNDS=1 bench/coordination/semaphore.sh 3
source "$(dirname "$0")/../lifelines/server.sh"

COORDINATION_DIR=$ROOT/bench/coordination
DURATION=${1:-10}
OUT=$RESULTS/coordination-semaphore-$STAMP.md
start_server coordination
say "semaphore: ${SEMAPHORE_CLIENTS:-32} clients, capacity ${SEMAPHORE_CAPACITY:-4}, ${LEASE_BENCH_ROUNDS:-3} rounds of $DURATION s per variant"
"$VENV/bin/python" "$COORDINATION_DIR/semaphore.py" "$PORT" "$DURATION" "$OUT.tmp"
{ cat "$OUT.tmp"; describe_run; } > "$OUT"
rm -f "$OUT.tmp"
describe_run
echo "written to ${OUT#"$ROOT"/}"
