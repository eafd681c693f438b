#!/usr/bin/env bash
# What a cycle costs the server, in measures that do not move with the machine's speed: CPU
# instructions in the backend that runs the cycles (callgrind), heap and index pages touched
# and WAL bytes per cycle, for the extension, ShedLock's schema, the hand-written
# table and advisory locks (the pgbench scripts of bench/core/, one client), and ShedLock's
# statements on its table with the expiry indexed (what updating rows in place costs a table
# whose expiries must be found).
# Usage: bench/core/cost.sh PORT [cycles, default 2000]. Starts a server of its own (cluster
# "cost" under LEASE_RUN_DIR) whose postmaster runs under valgrind, so every backend it forks is
# counted; writes RESULTS/cost.md (LEASE_BENCH_RESULTS, default bench/results).
# Each variant runs WARM cycles on one connection and then WARM + CYCLES on another: the
# difference of the two backends' instruction counts over CYCLES is the cost of a cycle, with
# connection start and exit, and the first calls' catalog lookups, taken out. LEASE_COST_VARIANTS
# runs only some variants; the callgrind files stay in the cluster's directory, for
# callgrind_annotate, and the variant's pairs of files are listed on standard error.
source "$(dirname "$0")/../../scripts/common.sh"

PORT=$1
CYCLES=${2:-2000}
WARM=300
RESULTS=${LEASE_BENCH_RESULTS:-$ROOT/bench/results}
OUT=$RESULTS/cost.md
read -r -a VARIANTS <<< "${LEASE_COST_VARIANTS:-lease shedlock shedlock_indexed table advisory}"
declare -A TABLE=([lease]=lease.leases [shedlock]=public.shedlock [shedlock_indexed]=public.shedlock_indexed
    [table]=public.bench_leases)

install_debian_packages valgrind
DIR=$RUN_DIR/cost
CALLGRIND=$DIR/callgrind
cluster_destroy cost
# Created and set up normally, then run under valgrind.
# No autovacuum: its workers would exit during the runs and be counted as the client (the
# tables are truncated or vacuumed before each variant instead).
cluster_start cost "$PORT" "shared_buffers = 512MB" "max_wal_size = 4GB" "log_min_messages = warning" \
    "autovacuum = off"
psql_cost=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${psql_cost[@]}" -f "$ROOT/bench/core/setup.sql" >/dev/null 2>&1
cluster_stop cost
as_root mkdir -p "$CALLGRIND"
as_root chown "$SERVER_USER" "$CALLGRIND"
as_server_user valgrind --tool=callgrind --callgrind-out-file="$CALLGRIND/%p" \
    "$PG_BIN/postgres" -D "$DIR/data" > "$DIR/valgrind.log" 2>&1 &
stop_server() {
    as_server_user "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
    [ -z "${SCRIPTS:-}" ] || rm -rf "$SCRIPTS"
}
trap stop_server EXIT
for _ in $(seq 1 600); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.2; done
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" || { echo "the server under valgrind did not start" >&2; exit 1; }

# script_of VARIANT: its pgbench script. shedlock_indexed runs ShedLock's statements on the table
# of that name (bench/core/setup.sql), where each update changes an indexed column.
SCRIPTS=$(mktemp -d)
sed -E 's/(INTO|UPDATE) shedlock /\1 shedlock_indexed /' "$ROOT/bench/core/shedlock.sql" > "$SCRIPTS/shedlock_indexed.sql"
script_of() {
    if [ -f "$SCRIPTS/$1.sql" ]; then echo "$SCRIPTS/$1.sql"; else echo "$ROOT/bench/core/$1.sql"; fi
}

# quiet: waits until no other client backend is connected and every backend that has gone has
# written its file (a backend's file is written when it exits).
quiet() {
    local file
    for _ in $(seq 1 600); do
        [ "$("${psql_cost[@]}" -At -c "SELECT count(*) FROM pg_stat_activity
                                       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")" = 0 ] && break
        sleep 0.2
    done
    for file in $(as_root ls "$CALLGRIND"); do
        as_root kill -0 "$file" 2>/dev/null && continue   # still running (the server's processes)
        for _ in $(seq 1 600); do as_root grep -qs '^totals:' "$CALLGRIND/$file" && break; sleep 0.2; done
    done
}

# instructions_of VARIANT N: runs N cycles on one connection and prints that backend's
# instruction count (its callgrind file is written when it exits).
instructions_of() {
    local before after file count max=0
    quiet
    before=$(as_root ls "$CALLGRIND" | sort)
    "$PG_BIN/pgbench" -n -M prepared -t "$2" -c 1 -h 127.0.0.1 -p "$PORT" -U postgres \
        -f "$(script_of "$1")" postgres >/dev/null
    quiet
    # The backends that ran meanwhile: pgbench's first connection, the client's, ours (quiet's);
    # the client's counts the most.
    after=$(comm -13 <(echo "$before") <(as_root ls "$CALLGRIND" | sort))
    for file in $after; do
        count=$(as_root awk '/^totals:/ {print $2}' "$CALLGRIND/$file")
        [ "${count:-0}" -gt "$max" ] && max=$count
    done
    echo "$1: $2 cycles: $CALLGRIND/$(grep -l "^totals: $max\$" $(for f in $after; do echo "$CALLGRIND/$f"; done) | head -1 | xargs basename)" >&2
    echo "$max"
}

# io_of VARIANT: heap pages and index pages touched (hits and reads) of the variant's table so
# far, and the WAL position.
io_of() {
    local table=${TABLE[$1]:-}
    "${psql_cost[@]}" -At -F ' ' -c "SELECT pg_stat_clear_snapshot()" -c "
        SELECT coalesce((SELECT heap_blks_hit + heap_blks_read FROM pg_statio_all_tables
                         WHERE relid = nullif('$table', '')::regclass), 0),
               coalesce((SELECT idx_blks_hit + idx_blks_read FROM pg_statio_all_tables
                         WHERE relid = nullif('$table', '')::regclass), 0),
               pg_current_wal_lsn()" | tail -1
}

{
    echo "| variant | instructions per cycle | heap pages touched per cycle | index pages touched per cycle | WAL bytes per cycle |"
    echo "|---|---:|---:|---:|---:|"
} > "$OUT"
for variant in "${VARIANTS[@]}"; do
    start=(-c CHECKPOINT)
    case $variant in
        shedlock*) start=(-v table="$variant" -f "$ROOT/bench/core/steady.sql") ;;
    esac
    "${psql_cost[@]}" -c "TRUNCATE lease.leases, bench_leases" "${start[@]}" >/dev/null
    warm=$(instructions_of "$variant" "$WARM")
    read -r heap0 index0 lsn0 <<< "$(io_of "$variant")"
    full=$(instructions_of "$variant" $(( WARM + CYCLES )))
    read -r heap1 index1 lsn1 <<< "$(io_of "$variant")"
    wal=$("${psql_cost[@]}" -At -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')")
    # Pages and WAL of the second run include its WARM cycles: per cycle over WARM + CYCLES.
    awk -v v="$variant" -v w="$warm" -v f="$full" -v n="$CYCLES" -v t="$(( WARM + CYCLES ))" \
        -v h="$(( heap1 - heap0 ))" -v i="$(( index1 - index0 ))" -v a="$wal" \
        'BEGIN {printf "| %s | %.0f | %.1f | %.1f | %.0f |\n", v, (f - w) / n, h / t, i / t, a / t}' >> "$OUT"
done
{
    echo
    echo "One client; the instructions of the backend that runs the cycles (callgrind: the difference"
    echo "between runs of $WARM and $(( WARM + CYCLES )) cycles, each on a fresh connection, over $CYCLES); pages"
    echo "touched in the variant's own table and its indexes (pg_statio_all_tables) and the server's WAL"
    echo "(commit records included) per cycle of the second run; PostgreSQL"
    echo "$("$PG_BIN/postgres" --version | awk '{print $3}'); $(date -u +%Y-%m-%d)."
} >> "$OUT"
cat "$OUT"
