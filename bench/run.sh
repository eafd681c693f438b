#!/usr/bin/env bash
# Benchmarks, side by side on one server in one run:
#   core:   acquire+release cycles on random resources (1..100000) with the extension (events
#           on, and with lease.notify = off), a hand-written lease table, and
#           pg_advisory_lock/unlock, at 1, 8 and 32 clients, synchronous_commit on and off
#           (pgbench, prepared statements); then the same cycles with a client LISTENing on
#           the same machine, which counts the events and checks for gaps.
#   expiry: latency from expires_at to the expired notification, sweep cost, idle cost
#           (bench/events/expiry.py).
#   waiting: handover latency against a 50 ms polling client, session end to next holder,
#           32 waiters handing one resource over 10,000 times (bench/waiting/handover.py).
# Usage: bench/run.sh [seconds per pgbench run, default 5]. Writes bench/results/*.md.
source "$(dirname "$0")/../scripts/common.sh"

DURATION=${1:-5}
ROUNDS=${LEASE_BENCH_ROUNDS:-3}
PORT=${LEASE_BENCH_PORT:-54327}
read -r -a CLIENTS <<< "${LEASE_BENCH_CLIENTS:-1 8 32}"
read -r -a SYNC_MODES <<< "${LEASE_BENCH_SYNC:-on off}"
VARIANTS=(lease silent table advisory)
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
setup_python
declare -A tps failed
# One pgbench run: prints "cycles/s failed-transactions".
run_variant() {
    local variant=$1 clients=$2 sync=$3 key=$4
    # TRUNCATE (not VACUUM ANALYZE) leaves both tables "never analyzed", so neither side's
    # generic plans are made from the statistics of an empty table.
    "${psql_bench[@]}" -c "TRUNCATE lease.leases, bench_leases" -c "CHECKPOINT"
    local threads=$(( clients < 2 ? 1 : 2 ))
    local script=$variant notify=on log
    if [ "$variant" = silent ]; then script=lease notify=off; fi
    "${psql_bench[@]}" -c "ALTER SYSTEM SET lease.notify = $notify" -c "SELECT pg_reload_conf()" >/dev/null
    log=$(PGOPTIONS="-c synchronous_commit=$sync" "$PG_BIN/pgbench" -n -M prepared -T "$DURATION" \
        -c "$clients" -j "$threads" -h 127.0.0.1 -p "$PORT" -U postgres \
        -f "$ROOT/bench/core/$script.sql" postgres 2>&1) || { echo "$log" >&2; exit 1; }
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
            for i in "${!VARIANTS[@]}"; do
                variant=${VARIANTS[$(( (i + round) % ${#VARIANTS[@]} ))]}
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

# Delivery: the same cycles with a client listening (a Python process on these same cores).
LISTEN_OUT=$ROOT/bench/results/listener.txt
rm -f "$LISTEN_OUT"
read -r published_before <<< "$("${psql_bench[@]}" -At -c "SELECT published FROM lease_event_stats()")"
"$VENV/bin/python" "$ROOT/bench/events/listen.py" "$PORT" "$LISTEN_OUT" &
listener_pid=$!
until [ -s "$LISTEN_OUT" ]; do sleep 0.1; done
read -r listened_cycles _ <<< "$(run_variant lease 8 off listened)"
kill -TERM "$listener_pid"
wait "$listener_pid"
read -r events_received events_gaps < "$LISTEN_OUT"
read -r events_published events_dropped <<< "$("${psql_bench[@]}" -At -F ' ' -c "SELECT published - $published_before, dropped FROM lease_event_stats()")"

{
    echo "| synchronous_commit | clients | lease (cycles/s) | lease, lease.notify = off | throughput lost to events | hand-written table | advisory locks | lease / table | failed |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for sync in "${SYNC_MODES[@]}"; do
        for clients in "${CLIENTS[@]}"; do
            l=${tps[$sync/$clients/lease]} s=${tps[$sync/$clients/silent]}
            t=${tps[$sync/$clients/table]} a=${tps[$sync/$clients/advisory]}
            f=0
            for variant in "${VARIANTS[@]}"; do f=$(( f + ${failed[$sync/$clients/$variant]:-0} )); done
            ratio=$(awk -v l="$l" -v t="$t" 'BEGIN {printf "%.2f", l / t}')
            cost=$(awk -v l="$l" -v s="$s" 'BEGIN {printf "%.1f%%", 100 * (s - l) / s}')
            echo "| $sync | $clients | $l | $s | $cost | $t | $a | $ratio | $f |"
        done
    done
    echo
    echo "Median of $ROUNDS interleaved runs of $DURATION s each; pgbench -M prepared; one acquire and one"
    echo "release per cycle on a random resource out of 100,000; $(nproc) cores; PostgreSQL"
    echo "$("$PG_BIN/postgres" --version | awk '{print $3}'), release build; $(date -u +%Y-%m-%d)."
    echo
    echo "With a client LISTENing on lease_events on the same machine (8 clients, synchronous_commit = off):"
    echo "$listened_cycles cycles/s; the listener received $events_received events with $events_gaps missing"
    echo "sequence numbers; the worker published $events_published and dropped $events_dropped (full ring)."
} > "$OUT"
echo
cat "$OUT"

say "expiry latency, sweep cost and idle cost"
"$VENV/bin/python" "$ROOT/bench/events/expiry.py" "$PORT" 100000 10000 10 60 > "$ROOT/bench/results/expiry.md"
cat "$ROOT/bench/results/expiry.md"

say "handover latency, session end, FIFO under contention"
"$VENV/bin/python" "$ROOT/bench/waiting/handover.py" "$PORT" 300 30 32 10000 > "$ROOT/bench/results/waiting.md"
cat "$ROOT/bench/results/waiting.md"
