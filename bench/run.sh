#!/usr/bin/env bash
# Benchmarks, side by side on one server in one run (pgbench, prepared statements):
#   core: acquire+release cycles on random resources (1..100000) with the extension, a
#         hand-written lease table, and pg_advisory_lock/unlock, at 1, 8 and 32 clients,
#         with synchronous_commit on and off.
# Usage: bench/run.sh [seconds per run, default 5]. Writes bench/results/core.md.
source "$(dirname "$0")/../scripts/common.sh"

DURATION=${1:-5}
ROUNDS=${LEASE_BENCH_ROUNDS:-3}
PORT=${LEASE_BENCH_PORT:-54327}
read -r -a CLIENTS <<< "${LEASE_BENCH_CLIENTS:-1 8 32}"
read -r -a SYNC_MODES <<< "${LEASE_BENCH_SYNC:-on off}"
VARIANTS=(lease table advisory)
OUT=$ROOT/bench/results/core.md
RAW=$ROOT/bench/results/core.raw

setup_machine
install_extension --release
cluster_destroy bench
cluster_start bench "$PORT" "shared_buffers = 512MB" "max_connections = 100" "max_wal_size = 4GB" \
    "log_min_messages = warning"
trap 'cluster_stop bench' EXIT
psql_bench=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${psql_bench[@]}" -f "$ROOT/bench/core/setup.sql"

: > "$RAW"
declare -A tps failed
# One pgbench run: prints "cycles/s failed-transactions".
run_variant() {
    local variant=$1 clients=$2 sync=$3 key=$4
    # TRUNCATE (not VACUUM ANALYZE) leaves both tables "never analyzed", so neither side's
    # generic plans are made from the statistics of an empty table.
    "${psql_bench[@]}" -c "TRUNCATE lease.leases, bench_leases" -c "CHECKPOINT"
    local threads=$(( clients < 2 ? 1 : 2 ))
    local log
    log=$(PGOPTIONS="-c synchronous_commit=$sync" "$PG_BIN/pgbench" -n -M prepared -T "$DURATION" \
        -c "$clients" -j "$threads" -h 127.0.0.1 -p "$PORT" -U postgres \
        -f "$ROOT/bench/core/$variant.sql" postgres 2>&1) || { echo "$log" >&2; exit 1; }
    { echo "== $key"; echo "$log"; } >> "$RAW"
    echo "$log" | awk '/^tps = / {tps = $3} /number of failed transactions/ {failed = $5} END {printf "%.0f %d", tps, failed}'
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# Each configuration runs every variant ROUNDS times, in a rotated order each round, and
# reports the median: the machine's drift hits all variants alike.
for sync in "${SYNC_MODES[@]}"; do
    for clients in "${CLIENTS[@]}"; do
        declare -A samples=()
        for round in $(seq 1 "$ROUNDS"); do
            for i in 0 1 2; do
                variant=${VARIANTS[$(( (i + round) % 3 ))]}
                key="$sync/$clients/$variant"
                read -r cycles failures <<< "$(run_variant "$variant" "$clients" "$sync" "$key")"
                samples[$variant]+=" $cycles"
                failed[$key]=$(( ${failed[$key]:-0} + failures ))
            done
        done
        for variant in "${VARIANTS[@]}"; do
            key="$sync/$clients/$variant"
            # shellcheck disable=SC2086
            tps[$key]=$(median ${samples[$variant]})
            printf '%-9s clients=%-3s synchronous_commit=%-3s median %8s cycles/s (runs:%s)  failed=%s\n' \
                "$variant" "$clients" "$sync" "${tps[$key]}" "${samples[$variant]}" "${failed[$key]:-0}"
        done
        unset samples
    done
done

{
    echo "| synchronous_commit | clients | lease (cycles/s) | hand-written table | advisory locks | lease / table | failed |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for sync in "${SYNC_MODES[@]}"; do
        for clients in "${CLIENTS[@]}"; do
            l=${tps[$sync/$clients/lease]} t=${tps[$sync/$clients/table]} a=${tps[$sync/$clients/advisory]}
            f=$(( ${failed[$sync/$clients/lease]:-0} + ${failed[$sync/$clients/table]:-0} + ${failed[$sync/$clients/advisory]:-0} ))
            ratio=$(awk -v l="$l" -v t="$t" 'BEGIN {printf "%.2f", l / t}')
            echo "| $sync | $clients | $l | $t | $a | $ratio | $f |"
        done
    done
    echo
    echo "Median of $ROUNDS interleaved runs of $DURATION s each; pgbench -M prepared; one acquire and one"
    echo "release per cycle on a random resource out of 100,000; $(nproc) cores; PostgreSQL"
    echo "$("$PG_BIN/postgres" --version | awk '{print $3}'), release build; $(date -u +%Y-%m-%d)."
} > "$OUT"
echo
cat "$OUT"
