# Sourced by the lifeline benchmarks (heartbeat.sh, expiry.sh, attached.sh): the shared set-up of
# scripts/common.sh, and one throwaway server of their own, as bench/run.sh starts its: run by
# the server's OS user (postgres), listening on 127.0.0.1 only, the extension preloaded.
# Settings: LEASE_BENCH_PORT (default 54335, not bench/run.sh's 54327, so that both can run on
# one machine), LEASE_BENCH_RESULTS (default bench/results), LEASE_BENCH_BUILD (how the results
# describe the installed library; default "installed build"), LEASE_RUN_DIR.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"

LIFELINES_DIR=$ROOT/bench/lifelines
PORT=${LEASE_BENCH_PORT:-54335}
RESULTS=${LEASE_BENCH_RESULTS:-$ROOT/bench/results}
BUILD=${LEASE_BENCH_BUILD:-installed build}
STAMP=$(date -u +%Y-%m-%d)
psql_bench=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
mkdir -p "$RESULTS"

# start_server NAME [postgresql.conf lines...]: a fresh cluster NAME (under $LEASE_RUN_DIR) with
# the settings of bench/run.sh (shared_buffers = 512MB, max_wal_size = 4GB) and the extension
# created; stopped when the script exits. The extension is used as installed: no build here.
start_server() {
    local name=$1
    shift
    if [ ! -f "$($PG_CONFIG --pkglibdir)/lease.so" ]; then
        echo "the extension is not installed (scripts/run.sh or bench/run.sh installs it)" >&2
        exit 1
    fi
    cluster_destroy "$name"
    cluster_start "$name" "$PORT" "shared_buffers = 512MB" "max_wal_size = 4GB" \
        "log_min_messages = warning" "$@"
    # shellcheck disable=SC2064
    trap "cluster_stop '$name'" EXIT
    "${psql_bench[@]}" -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS lease"
    setup_python
}

# One line for the tables: machine, PostgreSQL, build, date.
describe_run() {
    echo "$(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)); PostgreSQL" \
        "$("$PG_BIN/postgres" --version | awk '{print $3}'), extension $("${psql_bench[@]}" -At -c \
        "SELECT extversion FROM pg_extension WHERE extname = 'lease'") ($BUILD); $(date -u '+%Y-%m-%d %H:%M UTC')."
}
