#!/usr/bin/env bash
# Attached against plain: the acquire + release cycle of a lease attached to a lifeline
# (attached.sql: lease_acquire(..., lifeline => id), no ttl) against that of a plain lease with
# its own ttl (plain.sql, the cycle of bench/core/lease.sql), on random resources (1 of 100,000),
# side by side on one server in one run: pgbench with prepared statements, the two alternating
# in every round (the order rotated between rounds), at each client count and synchronous_commit
# setting; the medians are reported. Each client attaches to a lifeline of its own, opened
# before the runs with a 1 hour ttl (never renewed during them).
# Usage: bench/lifelines/attached.sh [seconds per run, default 5]. Prints a Markdown table and
# writes it to bench/results/lifelines-attached-DATE.md (pgbench's output to
# lifelines-attached-DATE.raw).
# Environment: LEASE_BENCH_ROUNDS (3), LEASE_BENCH_CLIENTS ("1 8"), LEASE_BENCH_SYNC ("on off");
# and those of bench/lifelines/server.sh (LEASE_BENCH_PORT, ...).
# A smoke run: LEASE_BENCH_ROUNDS=2 LEASE_BENCH_SYNC=off bench/lifelines/attached.sh 3
source "$(dirname "$0")/server.sh"

DURATION=${1:-5}
ROUNDS=${LEASE_BENCH_ROUNDS:-3}
read -r -a CLIENTS <<< "${LEASE_BENCH_CLIENTS:-1 8}"
read -r -a SYNC_MODES <<< "${LEASE_BENCH_SYNC:-on off}"
VARIANTS=(plain attached)
OUT=$RESULTS/lifelines-attached-$STAMP.md
RAW=${OUT%.md}.raw

start_server lifelines
MAX_CLIENTS=$(printf '%s\n' "${CLIENTS[@]}" | sort -n | tail -1)
# One lifeline per client, with consecutive ids (lifeline_base + client_id): opened in one
# statement, their ids are consecutive numbers of the token block this backend reserved, unless
# the block ran out among them; then once more, from a fresh block.
open_lifelines() {
    "${psql_bench[@]}" -At -c "SELECT min(id) || ' ' || (max(id) - min(id) + 1 = count(*))::int FROM (
        SELECT lease_lifeline_open('bench-client-' || i, '1 hour') AS id FROM generate_series(0, $(( MAX_CLIENTS - 1 ))) AS i) AS l"
}
read -r BASE CONSECUTIVE <<< "$(open_lifelines)"
if [ "$CONSECUTIVE" != 1 ]; then read -r BASE CONSECUTIVE <<< "$(open_lifelines)"; fi
if [ "$CONSECUTIVE" != 1 ]; then echo "could not open $MAX_CLIENTS lifelines with consecutive ids" >&2; exit 1; fi

# One pgbench run: prints "cycles/s failed-transactions".
run_variant() {
    local variant=$1 clients=$2 sync=$3 log
    "${psql_bench[@]}" -c "TRUNCATE lease.leases" -c "CHECKPOINT"
    log=$(PGOPTIONS="-c synchronous_commit=$sync" "$PG_BIN/pgbench" -n -M prepared -T "$DURATION" \
        -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" -h 127.0.0.1 -p "$PORT" -U postgres \
        -D lifeline_base="$BASE" -f "$LIFELINES_DIR/$variant.sql" postgres 2>&1) || { echo "$log" >&2; exit 1; }
    { echo "== $sync/$clients/$variant"; echo "$log"; } >> "$RAW"
    echo "$log" | awk '/^tps = / {tps = $3} /number of failed transactions/ {failed = $5} END {printf "%.0f %d", tps, failed}'
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

: > "$RAW"
declare -A tps failed
say "attached against plain: ${CLIENTS[*]} clients, synchronous_commit ${SYNC_MODES[*]}, $ROUNDS rounds of $DURATION s"
for sync in "${SYNC_MODES[@]}"; do
    for clients in "${CLIENTS[@]}"; do
        declare -A samples=()
        for round in $(seq 1 "$ROUNDS"); do
            for i in "${!VARIANTS[@]}"; do
                variant=${VARIANTS[$(( (i + round) % ${#VARIANTS[@]} ))]}
                key=$sync/$clients/$variant
                read -r cycles failures <<< "$(run_variant "$variant" "$clients" "$sync")"
                samples[$variant]+=" $cycles"
                failed[$key]=$(( ${failed[$key]:-0} + failures ))
            done
        done
        for variant in "${VARIANTS[@]}"; do
            key=$sync/$clients/$variant
            # shellcheck disable=SC2086
            tps[$key]=$(median ${samples[$variant]})
            printf '%-9s clients=%-3s synchronous_commit=%-3s median %8s cycles/s (runs:%s)  failed=%s\n' \
                "$variant" "$clients" "$sync" "${tps[$key]}" "${samples[$variant]}" "${failed[$key]}"
        done
        unset samples
    done
done
# The lifelines are still live, and none of their leases is left over.
read -r live attached_left <<< "$("${psql_bench[@]}" -At -F ' ' -c "SELECT
    (SELECT count(*) FROM lease.live_lifelines WHERE name LIKE 'bench-client-%'),
    (SELECT count(*) FROM lease.leases WHERE lifeline IS NOT NULL)")"

{
    echo "| synchronous_commit | clients | plain lease (cycles/s) | attached to a lifeline (cycles/s) | attached / plain | failed |"
    echo "|---|---:|---:|---:|---:|---:|"
    for sync in "${SYNC_MODES[@]}"; do
        for clients in "${CLIENTS[@]}"; do
            p=${tps[$sync/$clients/plain]} a=${tps[$sync/$clients/attached]}
            f=$(( ${failed[$sync/$clients/plain]} + ${failed[$sync/$clients/attached]} ))
            echo "| $sync | $clients | $p | $a | $(awk -v p="$p" -v a="$a" 'BEGIN {printf "%.2f", a / p}') | $f |"
        done
    done
    echo
    echo "Median of $ROUNDS alternating runs of $DURATION s each; pgbench -M prepared; one acquire and one"
    echo "release per cycle on a random resource out of 100,000, each client attached to a lifeline of its"
    echo "own (goal: attached / plain at least 0.90). After the runs: $live of $MAX_CLIENTS lifelines live,"
    echo "$attached_left attached leases left in the table."
    describe_run
} > "$OUT"
echo
cat "$OUT"
echo "written to ${OUT#"$ROOT"/}"
