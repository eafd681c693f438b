#!/usr/bin/env bash
# Lifeline expiry benchmark: a lifeline with LIFELINES_EXPIRY_LEASES (1,000) attached leases lets
# them lapse; time from its expires_at to the last `expired` event and to a waiter holding one of
# them, against as many plain leases expiring at the same moment; lifeline and plain runs
# alternate, LIFELINES_EXPIRY_RUNS (20) of each (bench/lifelines/expiry.py says what is measured).
# Usage: bench/lifelines/expiry.sh. Prints a Markdown table and writes it to
# bench/results/lifelines-expiry-DATE.md (and every run's figures to lifelines-expiry-DATE.json).
# Environment: LIFELINES_EXPIRY_RUNS, LIFELINES_EXPIRY_LEASES, LIFELINES_EXPIRY_TTL (2, seconds);
# and those of bench/lifelines/server.sh (LEASE_BENCH_PORT, ...).
# A smoke run: LIFELINES_EXPIRY_RUNS=5 bench/lifelines/expiry.sh
source "$(dirname "$0")/server.sh"

RUNS=${LIFELINES_EXPIRY_RUNS:-20}
LEASES=${LIFELINES_EXPIRY_LEASES:-1000}
TTL=${LIFELINES_EXPIRY_TTL:-2}
OUT=$RESULTS/lifelines-expiry-$STAMP.md
start_server lifelines
say "expiry: a lifeline with $LEASES leases against $LEASES plain leases, $RUNS runs each, ttl $TTL s"
"$VENV/bin/python" "$LIFELINES_DIR/expiry.py" "$PORT" "$RUNS" "$LEASES" "$TTL" "$OUT.tmp" "${OUT%.md}.json"
{ cat "$OUT.tmp"; echo "lease.max_naptime = $("${psql_bench[@]}" -At -c 'SHOW lease.max_naptime'), lease.expire_batch = $("${psql_bench[@]}" -At -c 'SHOW lease.expire_batch'); $(describe_run)"; } > "$OUT"
rm -f "$OUT.tmp"
tail -1 "$OUT"
echo "written to ${OUT#"$ROOT"/}"
