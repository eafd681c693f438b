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
#   queue:  8 workers draining a 100,000-job queue built on leases against one built on
#           SELECT ... FOR UPDATE SKIP LOCKED (bench/queue/run.sh).
# Usage: bench/run.sh [seconds per pgbench run, default 5]. Writes bench/results/*.md, the
# latency samples (expiry.json, waiting.json) and the machine and settings (machine.txt).
# Environment: LEASE_BENCH_PARTS (default "core expiry waiting queue") runs only some parts;
# LEASE_BENCH_SKIP_INSTALL=1 uses the installed build instead of building the release one;
# LEASE_BENCH_RESULTS writes the results to another directory; LEASE_BENCH_PORT, LEASE_BENCH_ROUNDS,
# LEASE_BENCH_CLIENTS, LEASE_BENCH_SYNC, LEASE_RUN_DIR.
source "$(dirname "$0")/../scripts/common.sh"

DURATION=${1:-5}
ROUNDS=${LEASE_BENCH_ROUNDS:-3}
PORT=${LEASE_BENCH_PORT:-54327}
read -r -a CLIENTS <<< "${LEASE_BENCH_CLIENTS:-1 8 32}"
read -r -a SYNC_MODES <<< "${LEASE_BENCH_SYNC:-on off}"
read -r -a PARTS <<< "${LEASE_BENCH_PARTS:-core expiry waiting queue}"
VARIANTS=(lease silent table advisory)
RESULTS=${LEASE_BENCH_RESULTS:-$ROOT/bench/results}
OUT=$RESULTS/core.md
RAW=$RESULTS/core.raw
mkdir -p "$RESULTS"

setup_machine
if [ "${LEASE_BENCH_SKIP_INSTALL:-0}" = 1 ]; then BUILD="installed build"; else
    install_extension --release
    BUILD="release build"
fi
cluster_destroy bench
cluster_start bench "$PORT" "shared_buffers = 512MB" "max_connections = 100" "max_wal_size = 4GB" \
    "log_min_messages = warning"
trap 'cluster_stop bench' EXIT
psql_bench=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${psql_bench[@]}" -f "$ROOT/bench/core/setup.sql"
setup_python

# The machine and the server's settings (those the tables do not vary), for the report.
describe_machine() {
    echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "cpus: $(nproc)"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "postgresql: $("$PG_BIN/postgres" --version | awk '{print $3}')"
    echo "extension: $BUILD"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "seconds per run: $DURATION"
    echo "rounds: $ROUNDS"
    "${psql_bench[@]}" -At -c "SELECT 'setting: ' || name || ' = ' || current_setting(name)
        FROM pg_settings WHERE source = 'configuration file' AND name NOT LIKE 'lc\_%'
          AND name NOT IN ('port', 'listen_addresses', 'unix_socket_directories', 'DateStyle', 'TimeZone',
                           'log_timezone', 'default_text_search_config', 'dynamic_shared_memory_type')
        ORDER BY name"
}
describe_machine > "$RESULTS/machine.txt"

wants() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

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

run_core() {
    : > "$RAW"
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
    LISTEN_OUT=$RESULTS/listener.txt
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
        echo "$("$PG_BIN/postgres" --version | awk '{print $3}'), $BUILD; $(date -u +%Y-%m-%d)."
        echo
        echo "With a client LISTENing on lease_events on the same machine (8 clients, synchronous_commit = off):"
        echo "$listened_cycles cycles/s; the listener received $events_received events with $events_gaps missing"
        echo "sequence numbers; the worker published $events_published and dropped $events_dropped (full ring)."
    } > "$OUT"
    echo
    cat "$OUT"
}

run_expiry() {
    say "expiry latency, sweep cost and idle cost"
    "$VENV/bin/python" "$ROOT/bench/events/expiry.py" "$PORT" 100000 10000 10 60 "$RESULTS/expiry.json" \
        > "$RESULTS/expiry.md"
    cat "$RESULTS/expiry.md"
}

run_waiting() {
    say "handover latency, session end, FIFO under contention"
    "$VENV/bin/python" "$ROOT/bench/waiting/handover.py" "$PORT" 300 30 32 10000 "$RESULTS/waiting.json" \
        > "$RESULTS/waiting.md"
    cat "$RESULTS/waiting.md"
}

run_queue() {
    say "queue: lease_acquire_any against SELECT ... FOR UPDATE SKIP LOCKED"
    LEASE_BENCH_RESULTS=$RESULTS bash "$ROOT/bench/queue/run.sh" "$PORT" "$DURATION"
}

for part in core expiry waiting queue; do
    if wants "$part"; then "run_$part"; fi
done
