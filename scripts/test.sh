#!/usr/bin/env bash
# The test suite, from a fresh machine: set-up, then the layers, in this order
#   0. static: cargo fmt --check, cargo clippy (pgrx features, -D warnings), and the layering
#      check of the Rust modules (scripts/check-layers.py, after its self-test in tests/static);
#   1. unit: #[pg_test] unit tests inside a server, and plain #[test]s (cargo pgrx test);
#   2. regress: the SQL contract: tests/regress/sql/*.sql against tests/regress/expected/*.out
#      (pg_regress, as a client of a throwaway server run by an ordinary OS user), and
#      isolation: the interleavings: tests/isolation/specs/*.spec (pg_isolation_regress, likewise);
#   3. client: out-of-process tests with a real client over several connections (tests/client,
#      pytest);
#   3a. clients: the client libraries against the test server, PgBouncer and failures:
#      clients/python/tests (pytest) and clients/typescript/test (node --test);
#   3b. ha: a Patroni cluster (etcd, two nodes) under load, its primary killed twice (tests/ha,
#      pytest);
#   4. package: the Debian package: built, installed with apt, used and removed (tests/package).
# Usage (tests/README.md has more):
#   scripts/test.sh                         every layer
#   scripts/test.sh regress isolation       only the layers named
#   scripts/test.sh tests/client/test_fence.py tests/regress/sql/api.sql
#                                           only these files (pytest node ids work too)
#   scripts/test.sh unit:NAME               only the unit tests whose name contains NAME
# Ends with one line "summary: N passed, M failed"; exits non-zero if anything failed.
source "$(dirname "$0")/common.sh"

LAYERS=(static unit regress isolation client clients ha package)

usage() {
    cat <<'USAGE'
usage: scripts/test.sh [LAYER | TEST]...
  LAYER   static, unit, regress, isolation, client, clients, ha or package: runs that whole layer
  TEST    tests/regress/sql/NAME.sql, tests/isolation/specs/NAME.spec,
          tests/client/FILE.py, clients/python/tests/FILE.py
          (or a pytest node id FILE.py::TEST): runs only those tests of
          their layer (00_setup.sql always runs first in regress);
          unit:NAME: only the unit tests whose name contains NAME
Without arguments every layer runs. The last line is "summary: N passed, M failed".
USAGE
}

# What to run: a layer is absent, "all", or "some" (then only the picked tests).
declare -A layer=()
regress_items=()
isolation_items=()
client_items=()
clients_items=()
unit_filter=""

# pick LAYER ITEM: runs ITEM of LAYER, unless the whole layer was asked for.
pick() {
    [ "${layer[$1]:-}" = all ] && return
    layer[$1]=some
    case $1 in
        regress) regress_items+=("$2") ;;
        isolation) isolation_items+=("$2") ;;
        client) client_items+=("$2") ;;
        clients) clients_items+=("$2") ;;
    esac
}

for arg in "$@"; do
    case $arg in
        -h | --help)
            usage
            exit 0
            ;;
        static | unit | regress | isolation | client | clients | ha | package) layer[$arg]=all ;;
        unit:?*)
            if [ -n "$unit_filter" ]; then
                echo "test.sh: one unit:NAME at a time" >&2
                exit 2
            fi
            unit_filter=${arg#unit:}
            [ "${layer[unit]:-}" = all ] || layer[unit]=some
            ;;
        *)
            file=${arg%%::*}
            node=${arg#"$file"}
            if [ -e "$file" ]; then
                path=$(realpath "$file")
            elif [ -e "$ROOT/$file" ]; then
                path=$(realpath "$ROOT/$file")
            else
                echo "test.sh: no such layer or test file: $arg" >&2
                usage >&2
                exit 2
            fi
            case $path in
                "$ROOT"/tests/regress/sql/*.sql) pick regress "$(basename "$path" .sql)" ;;
                "$ROOT"/tests/isolation/specs/*.spec) pick isolation "$(basename "$path" .spec)" ;;
                "$ROOT"/tests/client/test_*.py) pick client "$path$node" ;;
                "$ROOT"/clients/python/tests/test_*.py) pick clients "$path$node" ;;
                *)
                    echo "test.sh: not a test file of a layer: $arg" >&2
                    usage >&2
                    exit 2
                    ;;
            esac
            ;;
    esac
done
if [ $# = 0 ]; then
    for name in "${LAYERS[@]}"; do layer[$name]=all; done
fi
wants() { [ -n "${layer[$1]:-}" ]; }

PORT=${LEASE_TEST_PORT:-54329}
LOG_DIR=${LEASE_TEST_LOG_DIR:-$ROOT/target/test-logs}
mkdir -p "$LOG_DIR"
passed=0
failed=0
count() { passed=$((passed + $1)); failed=$((failed + $2)); }
# took PART: the seconds since the previous part ended, for the time by part printed at the end
# (what a fresh run costs, part by part: README "Testing").
times=()
part_ended=$SECONDS
took() {
    times+=("$1 $((SECONDS - part_ended)) s")
    part_ended=$SECONDS
}

setup_machine
took "machine set-up"
if wants static || wants client; then setup_python; fi
# PgBouncer: the client libraries' tests, and tests/client/test_lifelines_pgbouncer.py.
if wants client || wants clients; then setup_pgbouncer; fi
if wants clients; then
    setup_python_client
    [ "${layer[clients]}" = some ] || setup_typescript_client
fi
took "test tools"

# static_check NAME COMMAND...: runs COMMAND in the repository (output to the screen and to
# LOG_DIR/static-NAME.log) and counts it as one check, passed if it exits with status 0.
static_check() {
    local name=$1 status
    shift
    say "static: $name"
    set +e
    (cd "$ROOT" && "$@") 2>&1 | tee "$LOG_DIR/static-$name.log"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" = 0 ]; then
        count 1 0
    else
        echo "static: $name FAILED (exit status $status)"
        count 0 1
    fi
}

if wants static; then
    say "layer 0: static checks (format, lints, module layers)"
    setup_lints
    static_check fmt cargo fmt --check
    # The same features as the unit tests (cargo pgrx test builds with pg15 and pg_test). Like
    # every cargo build of a pgrx crate, the pgrx-pg-sys build script finds pg_config in the
    # pgrx config that setup_machine wrote ($PGRX_CONFIG); PGRX_PG_CONFIG_PATH is left unset on
    # purpose, as cargo pgrx leaves it, or each switch between the two would rerun bindgen.
    static_check clippy cargo clippy --features "pg$PG_MAJOR pg_test" --no-default-features --all-targets \
        -- -D warnings
    static_check check-layers-selftest "$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/static"
    static_check check-layers "$VENV/bin/python" "$ROOT/scripts/check-layers.py"
    took static
fi

if wants unit; then
    say "layer 1: #[pg_test] unit tests"
    as_root rm -rf "$RUN_DIR/pgrx-test"
    as_root mkdir -p "$RUN_DIR/pgrx-test"
    as_root chown "$SERVER_USER" "$RUN_DIR/pgrx-test"
    unit_args=()
    [ -z "$unit_filter" ] || unit_args=("$unit_filter")
    set +e
    (cd "$ROOT" && cargo pgrx test pg$PG_MAJOR --runas "$SERVER_USER" --pgdata "$RUN_DIR/pgrx-test/data" \
        "${unit_args[@]}") 2>&1 | tee "$LOG_DIR/pg_test.log"
    unit_status=${PIPESTATUS[0]}
    set -e
    unit_passed=$({ grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$LOG_DIR/pg_test.log" || true; } | { grep -oE '[0-9]+' || true; } | awk '{s+=$1} END {print s+0}')
    unit_failed=$({ grep -oE '[0-9]+ failed' "$LOG_DIR/pg_test.log" || true; } | awk '{s+=$1} END {print s+0}')
    [ "$unit_status" = 0 ] || [ "$unit_failed" -gt 0 ] || unit_failed=1
    # A name that matches no test runs nothing: that is a mistake, not a pass.
    [ -z "$unit_filter" ] || [ "$unit_passed" -gt 0 ] || [ "$unit_failed" -gt 0 ] || unit_failed=1
    count "$unit_passed" "$unit_failed"
    took unit
fi

if wants regress || wants isolation || wants client || wants clients; then
    # The clients layer alone tests the client libraries against the installed extension; it
    # builds and installs one only when there is none.
    # LEASE_SKIP_INSTALL=1 runs against the library installed already (runs side by side).
    if [ -z "${LEASE_SKIP_INSTALL:-}" ] && { wants regress || wants isolation || wants client || [ ! -f "$($PG_CONFIG --pkglibdir)/lease.so" ]; }; then
        install_extension
    fi
    say "starting the test server on 127.0.0.1:$PORT"
    cluster_destroy test
    # Only the database postgres gets an expiry worker: the SQL and isolation tests sweep their own
    # databases themselves (tests/client/test_databases.py lifts the restriction). Prepared
    # transactions are on for tests/client/test_edges.py.
    cluster_start test "$PORT" "fsync = off" "log_min_messages = warning" "lease.database = 'postgres'" "max_prepared_transactions = 5"
    trap 'cluster_stop test; cluster_stop test-standby; cluster_destroy load' EXIT
    took "build and install"
fi

# run_suite TOOL DIR SUFFIX DATABASE [ITEM...]: runs the tests/DIR/*SUFFIX files (only the ITEMs
# given, names without the suffix, if any) with pg_regress or pg_isolation_regress (TOOL) as a
# client of the test server, in a fresh DATABASE (created with the extension for isolation specs;
# the SQL files create it themselves), and counts results.
run_suite() {
    local tool=$1 dir=$2 suffix=$3 database=$4
    shift 4
    local name=$tool tool_dir=regress
    [ "$tool" = pg_isolation_regress ] && tool_dir=isolation
    local out=$LOG_DIR/$name
    rm -rf "$out"
    mkdir -p "$out"
    local items
    if [ $# -gt 0 ]; then
        items=$(printf '%s\n' "$@")
    else
        items=$(cd "$ROOT/tests/$dir" && find . -name "*$suffix" | sed "s|^\./||; s|$suffix\$||" | sort)
    fi
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

if wants regress; then
    say "layer 2: SQL contract (pg_regress)"
    if [ "${layer[regress]}" = all ]; then
        run_suite pg_regress regress/sql .sql lease_regress
    else
        # 00_setup creates the extension and the roles every other file uses: always first.
        picked=(00_setup)
        for item in "${regress_items[@]}"; do
            [ "$item" = 00_setup ] || picked+=("$item")
        done
        run_suite pg_regress regress/sql .sql lease_regress "${picked[@]}"
    fi
    took regress
fi

if wants isolation; then
    say "layer 2b: interleavings (pg_isolation_regress)"
    if [ "${layer[isolation]}" = all ]; then
        run_suite pg_isolation_regress isolation/specs .spec lease_isolation
    else
        run_suite pg_isolation_regress isolation/specs .spec lease_isolation "${isolation_items[@]}"
    fi
    took isolation
fi

if wants client; then
    say "layer 3: out-of-process tests (pytest)"
    client_targets=("$ROOT/tests/client")
    [ "${layer[client]}" = all ] || client_targets=("${client_items[@]}")
    set +e
    LEASE_TEST_PORT=$PORT LEASE_TEST_DIR="$RUN_DIR/test" LEASE_RUN_DIR="$RUN_DIR" LEASE_SERVER_USER="$SERVER_USER" \
        LEASE_TEST_LOG_DIR="$LOG_DIR" \
        "$VENV/bin/pytest" -q -p no:cacheprovider "${client_targets[@]}" 2>&1 | tee "$LOG_DIR/pytest.log"
    set -e
    py_passed=$(tail -n 1 "$LOG_DIR/pytest.log" | { grep -oE '[0-9]+ passed' || true; } | awk '{s+=$1} END {print s+0}')
    py_failed=$(tail -n 1 "$LOG_DIR/pytest.log" | { grep -oE '[0-9]+ (failed|error|errors)' || true; } | awk '{s+=$1} END {print s+0}')
    [ "$py_passed" -gt 0 ] || [ "$py_failed" -gt 0 ] || py_failed=1
    count "$py_passed" "$py_failed"
    took client
fi

if wants clients; then
    say "layer 3a: the client libraries (clients/python: pytest; clients/typescript: node --test)"
    clients_targets=("$ROOT/clients/python/tests")
    [ "${layer[clients]}" = all ] || clients_targets=("${clients_items[@]}")
    set +e
    LEASE_TEST_PORT=$PORT LEASE_SERVER_USER="$SERVER_USER" \
        "$VENV/bin/pytest" -q -p no:cacheprovider --rootdir "$ROOT/clients/python" "${clients_targets[@]}" 2>&1 \
        | tee "$LOG_DIR/clients-python.log"
    set -e
    py_passed=$(tail -n 1 "$LOG_DIR/clients-python.log" | { grep -oE '[0-9]+ passed' || true; } | awk '{s+=$1} END {print s+0}')
    py_failed=$(tail -n 1 "$LOG_DIR/clients-python.log" | { grep -oE '[0-9]+ (failed|error|errors)' || true; } | awk '{s+=$1} END {print s+0}')
    [ "$py_passed" -gt 0 ] || [ "$py_failed" -gt 0 ] || py_failed=1
    count "$py_passed" "$py_failed"
    if [ "${layer[clients]}" = all ]; then
        set +e
        (cd "$ROOT/clients/typescript" && LEASE_TEST_PORT=$PORT LEASE_SERVER_USER="$SERVER_USER" \
            node --test --test-reporter=tap dist/test/*.test.js) 2>&1 | tee "$LOG_DIR/clients-typescript.log"
        ts_status=${PIPESTATUS[0]}
        set -e
        ts_passed=$({ grep -E '^# pass [0-9]+' "$LOG_DIR/clients-typescript.log" || true; } | tail -n 1 | awk '{print $3+0}')
        ts_failed=$({ grep -E '^# fail [0-9]+' "$LOG_DIR/clients-typescript.log" || true; } | tail -n 1 | awk '{print $3+0}')
        ts_passed=${ts_passed:-0}
        ts_failed=${ts_failed:-0}
        if [ "$ts_status" != 0 ] && [ "$ts_failed" = 0 ]; then ts_failed=1; fi
        [ "$ts_passed" -gt 0 ] || [ "$ts_failed" -gt 0 ] || ts_failed=1
        count "$ts_passed" "$ts_failed"
    fi
    took clients
fi

if wants ha; then
    say "layer 3b: high availability (tests/ha: Patroni, etcd, pytest)"
    setup_python
    setup_ha
    # The layers above installed the build under test. Alone, this layer tests the installed
    # extension; it builds and installs one only when there is none.
    if ! wants regress && ! wants isolation && ! wants client && [ ! -f "$($PG_CONFIG --pkglibdir)/lease.so" ]; then
        install_extension
    fi
    set +e
    # The scenario takes about a minute; the timeout only ends a run that hangs.
    LEASE_RUN_DIR="$RUN_DIR" LEASE_SERVER_USER="$SERVER_USER" LEASE_TEST_LOG_DIR="$LOG_DIR" \
        timeout -k 30 600 "$VENV/bin/pytest" -q -p no:cacheprovider "$ROOT/tests/ha" 2>&1 | tee "$LOG_DIR/ha.log"
    set -e
    # Ends, by the pids it remembered, whatever a failed or killed run left running.
    "$VENV/bin/python" "$ROOT/tests/ha/cluster.py" cleanup "$RUN_DIR/ha"
    ha_passed=$(tail -n 1 "$LOG_DIR/ha.log" | { grep -oE '[0-9]+ passed' || true; } | awk '{s+=$1} END {print s+0}')
    ha_failed=$(tail -n 1 "$LOG_DIR/ha.log" | { grep -oE '[0-9]+ (failed|error|errors)' || true; } | awk '{s+=$1} END {print s+0}')
    [ "$ha_passed" -gt 0 ] || [ "$ha_failed" -gt 0 ] || ha_failed=1
    count "$ha_passed" "$ha_failed"
    took ha
fi

if wants package; then
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
fi

if wants package; then took package; fi

echo
echo "time by part: $(printf '%s, ' "${times[@]}")total $SECONDS s"
echo "summary: $passed passed, $failed failed"
[ "$failed" = 0 ]
