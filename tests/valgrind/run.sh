#!/usr/bin/env bash
# Runs the extension under valgrind memcheck and reports the errors that involve it.
#
# Starts a throwaway cluster whose postmaster (and so every backend, the launcher and the expiry
# workers it forks) runs under valgrind, then runs against it as a client: the SQL contract
# (tests/regress, pg_regress), the interleavings (tests/isolation, pg_isolation_regress), a
# multi-connection workload (tests/valgrind/workload.py) and, unless --quick, the client tests
# that keep the server running (tests/client). Stops the server and sorts every valgrind report
# (tests/valgrind/collect.py, checked first by tests/valgrind/test_collect.py); PostgreSQL's own
# noise is suppressed by tests/valgrind/postgres.supp.
#
# Not part of scripts/test.sh: it takes 15-30 minutes. Needs valgrind and an installed build of
# the extension (the debug build gives file:line in the reports). Run by hand:
#   tests/valgrind/run.sh [--quick]
# Ends with "valgrind: N error reports involving lease.so, M suppressed PostgreSQL-internal
# reports, ..." and exits non-zero if N > 0, if a report was neither suppressed nor the
# extension's, or if a server process crashed. Test failures caused by the slowness (a lease
# that expired before the next step) are printed but do not fail the run.
# Settings: LEASE_RUN_DIR (clusters; default /tmp/lease), LEASE_VALGRIND_PORT (default 54450).
source "$(dirname "$0")/../../scripts/common.sh"

PORT=${LEASE_VALGRIND_PORT:-54450}
NAME=valgrind
DIR=$RUN_DIR/$NAME
HERE=$ROOT/tests/valgrind
QUICK=false
[ "${1:-}" = --quick ] && QUICK=true
# Client tests that neither restart the server nor start other servers or programs.
CLIENT_TESTS=(test_events test_fence test_hostile test_races test_session_bound test_stats test_upgrade
    test_waiting test_worker)

psql_as_client() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"
}

# A fresh data directory (the extension preloaded), with valgrind's suppressions and log
# directory next to it, all owned by the server's user.
init_cluster() {
    cluster_destroy "$NAME"
    as_root mkdir -p "$DIR/valgrind"
    as_root install -m 644 "$HERE/postgres.supp" "$DIR/postgres.supp"
    as_root chown -R "$SERVER_USER" "$DIR"
    as_server_user "$PG_BIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # Only the database postgres gets an expiry worker, as in scripts/test.sh: the SQL and
    # isolation tests sweep their own databases. Autovacuum off: it only adds CPU load here.
    printf '%s\n' "port = $PORT" "listen_addresses = '127.0.0.1'" "unix_socket_directories = '$DIR'" \
        "shared_preload_libraries = 'lease'" "lease.database = 'postgres'" "fsync = off" "jit = off" \
        "autovacuum = off" | as_server_user tee -a "$DIR/data/postgresql.conf" >/dev/null
}

# Starts the postmaster under valgrind; every process it forks stays under valgrind and logs to
# its own file valgrind/valgrind.<pid>.log.
start_under_valgrind() {
    say "starting PostgreSQL under valgrind on 127.0.0.1:$PORT (logs in $DIR/valgrind)"
    as_server_user valgrind --tool=memcheck --trace-children=yes --track-origins=yes --read-var-info=no \
        --leak-check=no --num-callers=40 --vgdb=no --show-error-list=yes \
        --error-markers=VALGRINDERROR-BEGIN,VALGRINDERROR-END --suppressions="$DIR/postgres.supp" \
        --log-file="$DIR/valgrind/valgrind.%p.log" "$PG_BIN/postgres" -D "$DIR/data" >"$DIR/server.log" 2>&1 &
    SERVER_JOB=$!
    wait_until 600 "the server to accept connections" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres
}

# Stops the server and waits for valgrind to finish the postmaster's log (it writes its
# summary after the postmaster has removed its pid file, which is all pg_ctl waits for).
stop_server() {
    if as_root test -f "$DIR/data/postmaster.pid"; then
        as_server_user "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 600 stop >/dev/null || true
    fi
    if [ -n "${SERVER_JOB:-}" ]; then
        wait "$SERVER_JOB" || true
    fi
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every second until it succeeds.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out after $seconds s waiting for $what" >&2
            return 1
        fi
        sleep 1
    done
}

expirer_running() {
    [ "$(psql_as_client -d postgres -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease expirer'")" = 1 ]
}

# run_suite TOOL DIR SUFFIX DATABASE: every tests/DIR/*SUFFIX file, as scripts/test.sh runs them.
run_suite() {
    local tool=$1 dir=$2 suffix=$3 database=$4 tool_dir=regress
    [ "$tool" = pg_isolation_regress ] && tool_dir=isolation
    local items
    items=$(cd "$ROOT/tests/$dir" && find . -name "*$suffix" | sed "s|^\./||; s|$suffix\$||" | sort)
    psql_as_client -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $database" \
        -c "CREATE DATABASE $database"
    [ "$tool" = pg_isolation_regress ] && psql_as_client -d "$database" -c 'CREATE EXTENSION lease'
    # shellcheck disable=SC2086
    "$(dirname "$($PG_CONFIG --pgxs)")/../test/$tool_dir/$tool" \
        --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres --bindir="$PG_BIN" \
        --inputdir="$ROOT/tests/${dir%/*}" --outputdir="$DIR/$tool" --dbname="$database" $items \
        2>&1 | tee "$DIR/$tool.log" | grep -E '^(test|not ok|ok| All| [0-9]+ of)' || true
}

LIBRARY=$($PG_CONFIG --pkglibdir)/lease.so
library_identity() { stat -c '%i %y' "$LIBRARY" 2>/dev/null || echo missing; }
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
test -f "$LIBRARY" || { echo "the extension is not installed" >&2; exit 2; }
setup_python
say "self-test of the report sorter (tests/valgrind/test_collect.py)"
"$VENV/bin/pytest" -q -p no:cacheprovider "$HERE/test_collect.py" | tail -n 1
init_cluster
library_at_start=$(library_identity)
echo "library: $LIBRARY, installed ${library_at_start#* }, $(readelf -n "$LIBRARY" | grep -o 'Build ID: .*')"
trap stop_server EXIT
start_under_valgrind

say "the expiry worker of the database postgres"
psql_as_client -d postgres -c 'CREATE EXTENSION lease' -c "SELECT lease_release('valgrind:start', lease_acquire('valgrind:start', 'run.sh'))" >/dev/null
wait_until 300 "the expiry worker" expirer_running

say "SQL contract (pg_regress)"
run_suite pg_regress regress/sql .sql lease_regress
say "interleavings (pg_isolation_regress)"
run_suite pg_isolation_regress isolation/specs .spec lease_isolation

say "workload (tests/valgrind/workload.py)"
"$VENV/bin/python" "$HERE/workload.py" --port "$PORT" 2>&1 | tee "$DIR/workload.log" || true

if [ "$QUICK" = false ]; then
    say "client tests (tests/client: ${CLIENT_TESTS[*]})"
    client_files=()
    for test in "${CLIENT_TESTS[@]}"; do client_files+=("$ROOT/tests/client/$test.py"); done
    LEASE_TEST_PORT=$PORT LEASE_TEST_DIR="$DIR" LEASE_RUN_DIR="$RUN_DIR" LEASE_SERVER_USER="$SERVER_USER" \
        "$VENV/bin/pytest" -q -p no:cacheprovider "${client_files[@]}" >"$DIR/pytest.log" 2>&1 || true
    tail -n 1 "$DIR/pytest.log"
fi

say "stopping the server; collecting valgrind's reports"
stop_server
trap - EXIT
as_root chmod -R a+rX "$DIR/valgrind"
status=0
"$VENV/bin/python" "$HERE/collect.py" --logs "$DIR/valgrind" --reports "$DIR/reports.txt" \
    --server-log "$DIR/server.log" || status=$?
# Every process keeps the build the postmaster preloaded (PostgreSQL finds the library by its
# path among those already loaded), but calls made while an install had unlinked the file fail
# with "could not access file": test failures, not valgrind's.
if [ "$(library_identity)" != "$library_at_start" ]; then
    echo "note: $LIBRARY was reinstalled during the run; the server kept the build it started with"
fi
exit "$status"
