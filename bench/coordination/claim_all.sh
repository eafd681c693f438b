#!/usr/bin/env bash
# All-or-nothing claims: 32 clients claim 2 to 8 resources each out of 16 (overlapping lists, in
# random order) with lease_acquire_all(..., wait => '5 s'), fence them all, record the hold and
# release them; against the hand-written way, pg_advisory_xact_lock on each resource's hashtext in
# sorted order in one transaction, doing the same recorded work. The two alternate in every round
# (the order rotated between rounds); medians are reported (bench/coordination/claim_all.py says
# what is measured and checked: deadlocks, partial holds and overlapping holds must all be 0).
# Usage: bench/coordination/claim_all.sh [seconds per run, default 10]. Prints a Markdown table and
# writes it to bench/results/coordination-claim-all-DATE.md.
# Environment: LEASE_BENCH_ROUNDS (3), CLAIM_ALL_CLIENTS (32), CLAIM_ALL_POOL (16), CLAIM_ALL_MIN (2),
# CLAIM_ALL_MAX (8), CLAIM_ALL_HOLD_MS (0), COORD_SYNC (synchronous_commit of the clients: on); and
# those of bench/lifelines/server.sh (LEASE_BENCH_PORT, LEASE_BENCH_RESULTS, LEASE_BENCH_BUILD,
# LEASE_RUN_DIR).
# A smoke run: LEASE_BENCH_ROUNDS=1 bench/coordination/claim_all.sh 3
source "$(dirname "$0")/../lifelines/server.sh"

COORDINATION_DIR=$ROOT/bench/coordination
DURATION=${1:-10}
OUT=$RESULTS/coordination-claim-all-$STAMP.md
start_server coordination
say "claim_all: ${CLAIM_ALL_CLIENTS:-32} clients, ${LEASE_BENCH_ROUNDS:-3} rounds of $DURATION s per variant"
"$VENV/bin/python" "$COORDINATION_DIR/claim_all.py" "$PORT" "$DURATION" "$OUT.tmp"
{ cat "$OUT.tmp"; describe_run; } > "$OUT"
rm -f "$OUT.tmp"
describe_run
echo "written to ${OUT#"$ROOT"/}"
