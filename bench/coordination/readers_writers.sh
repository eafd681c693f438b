#!/usr/bin/env bash
# Readers and writers: 30 readers (lease_acquire(..., wait => '10 s', mode => 'shared')) and 2
# writers (exclusive, with wait) on one resource, each cycle a fenced read or write and a release;
# against the same with PostgreSQL's session-level pg_advisory_lock_shared / pg_advisory_lock. The
# two alternate in every round (the order rotated between rounds); medians are reported
# (bench/coordination/readers_writers.py says what is measured: the writers' wait, bounded if
# readers do not starve them, and the readers' throughput; no writer may overlap another holder).
# Needs shared leases (lease_acquire's mode argument): without them it stops at once with an error
# saying so.
# Usage: bench/coordination/readers_writers.sh [seconds per run, default 10]. Prints a Markdown
# table and writes it to bench/results/coordination-readers-writers-DATE.md.
# Environment: LEASE_BENCH_ROUNDS (3), RW_READERS (30), RW_WRITERS (2), RW_READ_MS (1), RW_WRITE_MS
# (1), RW_WRITER_PAUSE_MS (20), COORD_SYNC (synchronous_commit of the clients: on); and those of
# bench/lifelines/server.sh (LEASE_BENCH_PORT, LEASE_BENCH_RESULTS, LEASE_BENCH_BUILD, LEASE_RUN_DIR).
# A smoke run: LEASE_BENCH_ROUNDS=1 bench/coordination/readers_writers.sh 3
source "$(dirname "$0")/../lifelines/server.sh"

COORDINATION_DIR=$ROOT/bench/coordination
DURATION=${1:-10}
OUT=$RESULTS/coordination-readers-writers-$STAMP.md
start_server coordination
say "readers and writers: ${RW_READERS:-30} readers, ${RW_WRITERS:-2} writers, ${LEASE_BENCH_ROUNDS:-3} rounds of $DURATION s per variant"
"$VENV/bin/python" "$COORDINATION_DIR/readers_writers.py" "$PORT" "$DURATION" "$OUT.tmp"
{ cat "$OUT.tmp"; describe_run; } > "$OUT"
rm -f "$OUT.tmp"
describe_run
echo "written to ${OUT#"$ROOT"/}"
