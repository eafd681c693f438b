#!/usr/bin/env bash
# Two builds of the library side by side: `bench/ab.sh OLD.so NEW.so [rounds=4] [seconds=5]`.
# Each round restarts one benchmark server with each library in turn (the order alternating
# between rounds) and runs the core cycles (bench/core/lease.sql) and the hand-written table
# (bench/core/table.sql) at 1 and 8 clients, synchronous_commit off and on. Prints a Markdown
# table: medians (with the range of the rounds) and each version's ratio to the table that ran
# next to it. The extension is created at version 0.3.0, whose acquire and release every later
# library serves; with LEASE_AB_OLD_VERSION and LEASE_AB_NEW_VERSION set (e.g. 0.5.0 and 0.6.0),
# each library runs instead on a database created afresh at its own version before each of its
# runs (so each reads the table of its own version). With LEASE_AB_PUBLISH=1, each round also measures the expiry worker's CPU
# time per published event (bench/events/publish.py) and a second table compares that. Leaves
# the NEW library installed.
source "$(dirname "$0")/../scripts/common.sh"
OLD=$1 NEW=$2 ROUNDS=${3:-4} SECONDS_PER_RUN=${4:-5}
PORT=${LEASE_BENCH_PORT:-54327}
LIB=$($PG_CONFIG --pkglibdir)/lease.so
RAW=$(mktemp)
PUBLISH_RAW=$(mktemp)
use() {  # install library $1 and restart the server on it
    cluster_stop ab
    as_root rm -f "$LIB"
    as_root install -m 755 "$1" "$LIB"
    cluster_start ab "$PORT" "shared_buffers = 512MB" "max_wal_size = 4GB" "log_min_messages = warning"
}
run() {  # script clients synchronous_commit -> cycles/s
    PGOPTIONS="-c synchronous_commit=$3" "$PG_BIN/pgbench" -n -M prepared -T "$SECONDS_PER_RUN" -c "$2" -j "$2" \
        -h 127.0.0.1 -p "$PORT" -U postgres -f "$ROOT/bench/core/$1.sql" postgres 2>/dev/null \
        | awk '/^tps/ {printf "%d", $3}'
}
psql_ab=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "SET client_min_messages = warning")
# fresh_database VERSION: the extension dropped and created again at VERSION, with the baseline.
fresh_database() {
    "${psql_ab[@]}" -c "DROP TABLE IF EXISTS bench_leases" -c "DROP EXTENSION IF EXISTS lease" \
        -c "CREATE EXTENSION lease VERSION '$1'" -f "$ROOT/bench/core/setup.sql" >/dev/null
}
cluster_destroy ab
use "$OLD"
fresh_database "${LEASE_AB_OLD_VERSION:-0.3.0}"
for round in $(seq 1 "$ROUNDS"); do
    order="old new"
    [ $((round % 2)) = 0 ] && order="new old"
    for version in $order; do
        if [ "$version" = old ]; then use "$OLD"; else use "$NEW"; fi
        if [ -n "${LEASE_AB_NEW_VERSION:-}" ]; then
            if [ "$version" = old ]; then fresh_database "$LEASE_AB_OLD_VERSION"; else fresh_database "$LEASE_AB_NEW_VERSION"; fi
        fi
        "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "TRUNCATE lease.leases, bench_leases"
        for sync in on off; do
            for clients in 1 8; do
                echo "$version $sync $clients $(run lease "$clients" "$sync") $(run table "$clients" "$sync")" >> "$RAW"
            done
        done
        if [ "${LEASE_AB_PUBLISH:-0}" = 1 ]; then
            echo "$version $("$VENV/bin/python" "$ROOT/bench/events/publish.py" "$PORT")" >> "$PUBLISH_RAW"
        fi
    done
done
cluster_destroy ab
# The last round may have ended on the old library.
as_root rm -f "$LIB"
as_root install -m 755 "$NEW" "$LIB"
python3 - "$RAW" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    version, sync, clients, lease, table = line.split()
    runs[(sync, int(clients))][version].append((int(lease), int(table)))
print("| synchronous_commit | clients | old lease (cycles/s) | new lease (cycles/s) | new / old | old lease / table | new lease / table | runs each |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for (sync, clients), by in sorted(runs.items(), key=lambda item: (item[0][0] != "on", item[0][1])):
    median = {v: statistics.median(l for l, _ in by[v]) for v in by}
    span = {v: f"{min(l for l, _ in by[v])}-{max(l for l, _ in by[v])}" for v in by}
    ratio = {v: statistics.median(l / t for l, t in by[v]) for v in by}
    print(f"| {sync} | {clients} | {median['old']:.0f} ({span['old']}) | {median['new']:.0f} ({span['new']}) | "
          f"{median['new'] / median['old']:.2f} | {ratio['old']:.2f} | {ratio['new']:.2f} | {len(by['old'])} |")
PY
if [ "${LEASE_AB_PUBLISH:-0}" = 1 ]; then
    python3 - "$PUBLISH_RAW" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    version, *fields = line.split()
    for field in fields:
        name, value = field.split("=")
        runs[name][version].append(float(value))
print()
print("| expiry worker, publishing | old (median, range) | new (median, range) | new / old | runs each |")
print("|---|---:|---:|---:|---:|")
for name in ("cpu_us_per_event", "events_per_s"):
    by = runs[name]
    median = {v: statistics.median(by[v]) for v in by}
    span = {v: f"{min(by[v]):g}-{max(by[v]):g}" for v in by}
    print(f"| {name} | {median['old']:g} ({span['old']}) | {median['new']:g} ({span['new']}) | "
          f"{median['new'] / median['old']:.2f} | {len(by['old'])} |")
PY
fi
rm -f "$RAW" "$PUBLISH_RAW"
