#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, then the three layers
#   1. #[pg_test] unit tests inside a server (cargo pgrx test);
#   2. the SQL contract: tests/regress/sql/*.sql against tests/regress/expected/*.out
#      (pg_regress, as a client of a throwaway server run by an ordinary OS user), and the
#      interleavings: tests/isolation/specs/*.spec (pg_isolation_regress, likewise);
#   3. out-of-process tests with a real client over several connections (tests/client, pytest);
#   4. the Debian package: built, installed with apt, used and removed (tests/package).
# Ends with one line "summary: N passed, M failed"; exits non-zero if anything failed.
source "$(dirname "$0")/common.sh"

PORT=${LEASE_TEST_PORT:-54329}
LOG_DIR=${LEASE_TEST_LOG_DIR:-$ROOT/target/test-logs}
mkdir -p "$LOG_DIR"
passed=0
failed=0
count() { passed=$((passed + $1)); failed=$((failed + $2)); }

setup_machine
setup_python

say "layer 1: #[pg_test] unit tests"
as_root rm -rf "$RUN_DIR/pgrx-test"
as_root mkdir -p "$RUN_DIR/pgrx-test"
as_root chown "$SERVER_USER" "$RUN_DIR/pgrx-test"
set +e
(cd "$ROOT" && cargo pgrx test pg$PG_MAJOR --runas "$SERVER_USER" --pgdata "$RUN_DIR/pgrx-test/data") 2>&1 | tee "$LOG_DIR/pg_test.log"
unit_status=${PIPESTATUS[0]}
set -e
unit_passed=$({ grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$LOG_DIR/pg_test.log" || true; } | { grep -oE '[0-9]+' || true; } | awk '{s+=$1} END {print s+0}')
unit_failed=$({ grep -oE '[0-9]+ failed' "$LOG_DIR/pg_test.log" || true; } | awk '{s+=$1} END {print s+0}')
[ "$unit_status" = 0 ] || [ "$unit_failed" -gt 0 ] || unit_failed=1
count "$unit_passed" "$unit_failed"

install_extension
say "starting the test server on 127.0.0.1:$PORT"
cluster_destroy test
# Only the database postgres gets an expiry worker: the SQL and isolation tests sweep their own
# databases themselves (tests/client/test_databases.py lifts the restriction). Prepared
# transactions are on for tests/client/test_edges.py.
cluster_start test "$PORT" "fsync = off" "log_min_messages = warning" "lease.database = 'postgres'" "max_prepared_transactions = 5"
trap 'cluster_stop test; cluster_stop test-standby; cluster_destroy load' EXIT

# run_suite TOOL DIR SUFFIX DATABASE: runs every tests/DIR/*SUFFIX file with pg_regress or
# pg_isolation_regress (TOOL) as a client of the test server, in a fresh DATABASE (created with
# the extension for isolation specs; the SQL files create it themselves), and counts results.
run_suite() {
    local tool=$1 dir=$2 suffix=$3 database=$4
    local name=$tool tool_dir=regress
    [ "$tool" = pg_isolation_regress ] && tool_dir=isolation
    local out=$LOG_DIR/$name
    rm -rf "$out"
    mkdir -p "$out"
    local items
    items=$(cd "$ROOT/tests/$dir" && find . -name "*$suffix" | sed "s|^\./||; s|$suffix\$||" | sort)
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $database" -c "CREATE DATABASE $database"
    if [ "$tool" = pg_isolation_regress ]; then
        "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d "$database" -c 'CREATE EXTENSION lease'
    fi
    set +e
    # shellcheck disable=SC2086
    "$(dirname "$($PG_CONFIG --pgxs)")/../test/$tool_dir/$tool" \
        --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres --bindir="$PG_BIN" \
        --inputdir="$ROOT/tests/${dir%/*}" --outputdir="$out" --dbname="$database" \
        $items 2>&1 | tee "$LOG_DIR/$name.log"
    local status=${PIPESTATUS[0]}
    set -e
    local suite_total suite_failed
    suite_total=$(echo "$items" | wc -w)
    suite_failed=$(grep -cE '^(not ok|test .*\.\.\. FAILED)' "$LOG_DIR/$name.log" || true)
    [ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
    if [ "$status" != 0 ] && [ "$suite_failed" = 0 ]; then suite_failed=1; fi
    count $((suite_total - suite_failed)) "$suite_failed"
}

say "layer 2: SQL contract (pg_regress)"
run_suite pg_regress regress/sql .sql lease_regress

say "layer 2b: interleavings (pg_isolation_regress)"
run_suite pg_isolation_regress isolation/specs .spec lease_isolation

say "layer 3: out-of-process tests (pytest)"
set +e
LEASE_TEST_PORT=$PORT LEASE_TEST_DIR="$RUN_DIR/test" LEASE_RUN_DIR="$RUN_DIR" LEASE_SERVER_USER="$SERVER_USER" \
    LEASE_TEST_LOG_DIR="$LOG_DIR" \
    "$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/client" 2>&1 | tee "$LOG_DIR/pytest.log"
set -e
py_passed=$(tail -n 1 "$LOG_DIR/pytest.log" | { grep -oE '[0-9]+ passed' || true; } | awk '{s+=$1} END {print s+0}')
py_failed=$(tail -n 1 "$LOG_DIR/pytest.log" | { grep -oE '[0-9]+ (failed|error|errors)' || true; } | awk '{s+=$1} END {print s+0}')
[ "$py_passed" -gt 0 ] || [ "$py_failed" -gt 0 ] || py_failed=1
count "$py_passed" "$py_failed"

say "layer 4: the Debian package (tests/package/install-test.sh)"
# Last on purpose: removing the package removes the system's lease.so, which the layers above
# use; the development build is installed again afterwards.
set +e
LEASE_RUN_DIR="$RUN_DIR" LEASE_SERVER_USER="$SERVER_USER" "$ROOT/tests/package/install-test.sh" 2>&1 \
    | tee "$LOG_DIR/package.log"
package_status=${PIPESTATUS[0]}
set -e
install_extension >/dev/null 2>&1
if [ "$package_status" = 0 ] && tail -n 1 "$LOG_DIR/package.log" | grep -q '^package test: PASS'; then
    count 1 0
else
    count 0 1
fi

echo
echo "summary: $passed passed, $failed failed"
[ "$failed" = 0 ]
