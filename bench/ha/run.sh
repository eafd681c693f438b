#!/usr/bin/env bash
# The failover benchmark (bench/ha/failover.py) with synchronous, then asynchronous replication.
# Installs Patroni and etcd if they are missing, and the release build unless
# LEASE_BENCH_SKIP_INSTALL=1; writes bench/results/ha.md (LEASE_BENCH_RESULTS: elsewhere).
# Usage: bench/ha/run.sh [clients, default 8] [seconds per window, default 10]
source "$(dirname "$0")/../../scripts/common.sh"

CLIENTS=${1:-8}
WINDOW=${2:-10}
RESULTS=${LEASE_BENCH_RESULTS:-$ROOT/bench/results}
mkdir -p "$RESULTS"

setup_machine
setup_python
setup_ha
if [ "${LEASE_BENCH_SKIP_INSTALL:-0}" = 1 ]; then BUILD="the installed build"; else
    install_extension --release
    BUILD="release build"
fi
# Whatever an interrupted run left running, ended by the pids it remembered.
trap '"$VENV/bin/python" "$ROOT/tests/ha/cluster.py" cleanup "$RUN_DIR/ha-bench"' EXIT
{
    echo "# Failover ($(date -u '+%Y-%m-%d %H:%M UTC'), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), $(patroni --version), etcd $(etcd --version | awk 'NR == 1 {print $3}'), $BUILD)"
    for mode in synchronous asynchronous; do
        flags=()
        [ "$mode" = synchronous ] || flags=(--asynchronous)
        LEASE_RUN_DIR="$RUN_DIR" LEASE_SERVER_USER="$SERVER_USER" \
            "$VENV/bin/python" "$ROOT/bench/ha/failover.py" --clients "$CLIENTS" --window "$WINDOW" "${flags[@]}"
    done
} | tee "$RESULTS/ha.md"
