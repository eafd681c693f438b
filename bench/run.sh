#!/usr/bin/env bash
# Benchmarks, side by side on one server in one run:
#   core:   acquire+release cycles on random resources (1..100000) with the extension (events
#           on with nobody listening, events on with a client LISTENing on the same machine, and
#           lease.notify = off), ShedLock's schema, a hand-written lease table, and
#           pg_advisory_lock/unlock, at 1, 8 and 32 clients, synchronous_commit on and off
#           (pgbench, prepared statements), with WAL bytes per cycle; then the same cycles with
#           a client LISTENing on the same machine, which counts the events and checks for gaps.
#   cost:   what does not move with the machine's speed: CPU instructions per cycle in the
#           server backend (callgrind), pages touched and WAL per cycle (bench/core/cost.sh).
#   expiry: latency from expires_at to the expired notification, sweep cost, idle cost
#           (bench/events/expiry.py).
#   waiting: handover latency against a 50 ms polling client, session end to next holder,
#           32 waiters handing one resource over 10,000 times (bench/waiting/handover.py).
#   queue:  8 workers draining a 100,000-job queue built on leases against one built on
#           SELECT ... FOR UPDATE SKIP LOCKED, completing each job or the whole batch at once
#           (bench/queue/run.sh).
#   checks: the randomized model test and the load checker on the benchmarked build.
# Usage: bench/run.sh [seconds per pgbench run, default 5]. Writes bench/results/*.md, the
# latency samples (expiry.json, waiting.json) and the machine and settings (machine.txt).
# Environment: LEASE_BENCH_PARTS (default "core cost expiry waiting queue checks") runs only some parts;
# LEASE_BENCH_SKIP_INSTALL=1 uses the installed build instead of building the release one;
# LEASE_BENCH_RESULTS writes the results to another directory; LEASE_BENCH_PORT, LEASE_BENCH_ROUNDS,
# LEASE_BENCH_CLIENTS, LEASE_BENCH_SYNC, LEASE_RUN_DIR.
source "$(dirname "$0")/../scripts/common.sh"

DURATION=${1:-5}
ROUNDS=${LEASE_BENCH_ROUNDS:-5}
PORT=${LEASE_BENCH_PORT:-54327}
read -r -a CLIENTS <<< "${LEASE_BENCH_CLIENTS:-1 8 32}"
read -r -a SYNC_MODES <<< "${LEASE_BENCH_SYNC:-on off}"
read -r -a PARTS <<< "${LEASE_BENCH_PARTS:-core cost expiry waiting queue checks}"
VARIANTS=(lease heard silent shedlock table advisory)
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

declare -A tps failed wal ratio_spread heard_spread
# One pgbench run: prints "cycles/s failed-transactions WAL-bytes-per-cycle".
run_variant() {
    local variant=$1 clients=$2 sync=$3 key=$4
    # TRUNCATE (not VACUUM ANALYZE) leaves both lease tables "never analyzed", so neither side's
    # generic plans are made from the statistics of an empty table. ShedLock's rows stay, as
    # they do for its users, in the steady state of bench/core/steady.sql.
    local start=(-c CHECKPOINT)
    [ "$variant" != shedlock ] || start=(-v table=shedlock -f "$ROOT/bench/core/steady.sql")
    "${psql_bench[@]}" -c "TRUNCATE lease.leases, bench_leases" "${start[@]}"
    local threads=$(( clients < 2 ? 1 : 2 ))
    local script=$variant notify=on log lsn listener_pid="" heard_out
    if [ "$variant" = silent ]; then script=lease notify=off; fi
    "${psql_bench[@]}" -c "ALTER SYSTEM SET lease.notify = $notify" -c "SELECT pg_reload_conf()" >/dev/null
    if [ "$variant" = heard ]; then
        # The same cycles while a client (a Python process on these same cores) receives every
        # event: the cost of events that are delivered.
        script=lease heard_out=$(mktemp)
        "$VENV/bin/python" "$ROOT/bench/events/listen.py" "$PORT" "$heard_out" &
        listener_pid=$!
        until [ -s "$heard_out" ]; do sleep 0.1; done
    fi
    lsn=$("${psql_bench[@]}" -At -c "SELECT pg_current_wal_lsn()")
    log=$(PGOPTIONS="-c synchronous_commit=$sync" "$PG_BIN/pgbench" -n -M prepared -T "$DURATION" \
        -c "$clients" -j "$threads" -h 127.0.0.1 -p "$PORT" -U postgres \
        -f "$ROOT/bench/core/$script.sql" postgres 2>&1) || { echo "$log" >&2; exit 1; }
    if [ -n "$listener_pid" ]; then
        kill -TERM "$listener_pid"
        wait "$listener_pid"
        rm -f "$heard_out"
    fi
    { echo "== $key"; echo "$log"; } >> "$RAW"
    # WAL per cycle over the whole run: the cycles' records and commit records, and whatever
    # else the server wrote meanwhile (the expiry worker's, full-page images after the checkpoint).
    local wal_bytes
    wal_bytes=$("${psql_bench[@]}" -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn')")
    echo "$log" | awk -v wal="$wal_bytes" '/^tps = / {tps = $3} /number of failed transactions/ {failed = $5}
        /number of transactions actually processed/ {split($6, n, "/"); cycles = n[1]}
        END {printf "%.0f %d %.0f", tps, failed, (cycles > 0 ? wal / cycles : 0)}'
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# The median of some ratios, and their range: "1.02 (0.91–1.10)".
spread() { echo "$(median "$@") ($(printf '%s\n' "$@" | sort -n | head -1)–$(printf '%s\n' "$@" | sort -n | tail -1))"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }

run_core() {
    : > "$RAW"
    # Each configuration runs every variant ROUNDS times, in a rotated order each round, and
    # reports the median: the machine's drift hits all variants alike. The ratio to ShedLock is
    # also taken round by round (each lease run against the ShedLock run beside it): its
    # median and its range are the spread the table reports.
    for sync in "${SYNC_MODES[@]}"; do
        for clients in "${CLIENTS[@]}"; do
            declare -A samples=() wal_samples=()
            local rounds_ratios="" heard_ratios=""
            for round in $(seq 1 "$ROUNDS"); do
                declare -A this_round=()
                for i in "${!VARIANTS[@]}"; do
                    variant=${VARIANTS[$(( (i + round) % ${#VARIANTS[@]} ))]}
                    key="$sync/$clients/$variant"
                    read -r cycles failures wal_per_cycle <<< "$(run_variant "$variant" "$clients" "$sync" "$key")"
                    samples[$variant]+=" $cycles"
                    wal_samples[$variant]+=" $wal_per_cycle"
                    this_round[$variant]=$cycles
                    failed[$key]=$(( ${failed[$key]:-0} + failures ))
                done
                rounds_ratios+=" $(ratio "${this_round[lease]}" "${this_round[shedlock]}")"
                heard_ratios+=" $(ratio "${this_round[heard]}" "${this_round[shedlock]}")"
                unset this_round
            done
            for variant in "${VARIANTS[@]}"; do
                key="$sync/$clients/$variant"
                # shellcheck disable=SC2086
                tps[$key]=$(median ${samples[$variant]})
                # shellcheck disable=SC2086
                wal[$key]=$(median ${wal_samples[$variant]})
                printf '%-9s clients=%-3s synchronous_commit=%-3s median %8s cycles/s (runs:%s)  WAL/cycle %s  failed=%s\n' \
                    "$variant" "$clients" "$sync" "${tps[$key]}" "${samples[$variant]}" "${wal[$key]}" "${failed[$key]:-0}"
            done
            # shellcheck disable=SC2086
            ratio_spread[$sync/$clients]=$(spread $rounds_ratios)
            heard_spread[$sync/$clients]=$(spread $heard_ratios)
            echo "lease / ShedLock by round:$rounds_ratios (with a client listening:$heard_ratios)"
            unset samples wal_samples
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
        echo "| synchronous_commit | clients | lease (cycles/s) | lease, a client listening | lease, lease.notify = off | throughput lost to delivered events | ShedLock's schema | hand-written table | advisory locks | lease / ShedLock (range) | lease with a client listening / ShedLock (range) | lease / table | lease / advisory | WAL bytes per cycle: lease / ShedLock / table | failed |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for sync in "${SYNC_MODES[@]}"; do
            for clients in "${CLIENTS[@]}"; do
                k=$sync/$clients
                l=${tps[$k/lease]} h=${tps[$k/heard]} s=${tps[$k/silent]} sh=${tps[$k/shedlock]}
                t=${tps[$k/table]} a=${tps[$k/advisory]}
                f=0
                for variant in "${VARIANTS[@]}"; do f=$(( f + ${failed[$k/$variant]:-0} )); done
                cost=$(awk -v h="$h" -v s="$s" 'BEGIN {printf "%.1f%%", 100 * (s - h) / s}')
                echo "| $sync | $clients | $l | $h | $s | $cost | $sh | $t | $a | ${ratio_spread[$k]} | ${heard_spread[$k]} | $(ratio "$l" "$t") | $(ratio "$l" "$a") | ${wal[$k/lease]} / ${wal[$k/shedlock]} / ${wal[$k/table]} | $f |"
            done
        done
        echo
        echo "Median of $ROUNDS interleaved runs of $DURATION s each (lease / ShedLock: the median of the"
        echo "rounds' ratios, each lease run against the ShedLock run beside it, and their range). lease: events"
        echo "on (the default) and nobody LISTENing, so none are published; a client listening: the same with"
        echo "a client receiving every event, on the same cores; pgbench"
        echo "-M prepared; one acquire and one release per cycle on a random resource out of 100,000; ShedLock's"
        echo "table holds a row for each of them from the start, as it does once its jobs have run; WAL bytes"
        echo "per cycle are the server's whole WAL during a run over its cycles; $(nproc) cores; PostgreSQL"
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

run_cost() {
    say "cost per cycle: instructions, pages, WAL"
    LEASE_BENCH_RESULTS=$RESULTS bash "$ROOT/bench/core/cost.sh" $(( PORT + 1 ))
}

run_checks() {
    say "the model test and the load checker on this build"
    local histories=${LEASE_BENCH_MODEL_HISTORIES:-200} model load
    # summary_of TEST: scripts/test.sh's last line ("summary: N passed, M failed") for one file.
    summary_of() {
        LEASE_SKIP_INSTALL=1 LEASE_MODEL_HISTORIES=$histories "$ROOT/scripts/test.sh" "$1" 2>&1 \
            | grep -o 'summary: .*' | tail -1
    }
    model=$(summary_of tests/client/test_model.py)
    load=$(summary_of tests/client/test_load.py)
    {
        echo "| check | result |"
        echo "|---|---|"
        echo "| randomized model test (\`tests/client/test_model.py\`, seed ${LEASE_MODEL_SEED:-1306}, $histories histories) | ${model:-did not run} |"
        echo "| load checker with faults (\`tests/client/test_load.py\`, ${LEASE_LOAD_SECONDS:-30} s) | ${load:-did not run} |"
    } > "$RESULTS/checks.md"
    cat "$RESULTS/checks.md"
}

run_queue() {
    say "queue: lease_acquire_any against SELECT ... FOR UPDATE SKIP LOCKED"
    LEASE_BENCH_RESULTS=$RESULTS bash "$ROOT/bench/queue/run.sh" "$PORT" "$DURATION"
}

for part in core cost expiry waiting queue checks; do
    if wants "$part"; then "run_$part"; fi
done
