#!/usr/bin/env bash
# Heartbeat benchmark: keeping LIFELINES_LEASES leases (100,000) of LIFELINES_HOLDERS holders (100)
# alive with a 10 s ttl renewed every 3.33 s, per lease (one statement per holder and period)
# against one lifeline per holder, and an idle server as the floor; same server, same run, same
# wall time per phase (bench/lifelines/heartbeat.py: what each phase does and measures).
# Usage: bench/lifelines/heartbeat.sh. Prints a Markdown table and writes it to
# bench/results/lifelines-heartbeat-DATE.md.
# Environment: LIFELINES_HOLDERS, LIFELINES_LEASES, LIFELINES_TTL (10), LIFELINES_SECONDS (30),
# LIFELINES_PHASES ("batch lifeline idle"; "pipeline" adds pipelined per-lease calls),
# LIFELINES_ROUNDS (1), LIFELINES_SYNC (synchronous_commit of the holders: on); and those of
# bench/lifelines/server.sh (LEASE_BENCH_PORT, ...).
# A smoke run: LIFELINES_LEASES=10000 LIFELINES_SECONDS=10 bench/lifelines/heartbeat.sh
source "$(dirname "$0")/server.sh"

HOLDERS=${LIFELINES_HOLDERS:-100}
OUT=$RESULTS/lifelines-heartbeat${LIFELINES_SYNC:+-sync-$LIFELINES_SYNC}-$STAMP.md
start_server lifelines "max_connections = $(( HOLDERS + 50 ))"
say "heartbeat: ${LIFELINES_LEASES:-100000} leases, $HOLDERS holders, ${LIFELINES_SECONDS:-30} s per phase"
"$VENV/bin/python" "$LIFELINES_DIR/heartbeat.py" "$PORT" "$OUT.tmp"
{ cat "$OUT.tmp"; describe_run; } > "$OUT"
rm -f "$OUT.tmp"
echo "$(describe_run)"
echo "written to ${OUT#"$ROOT"/}"
