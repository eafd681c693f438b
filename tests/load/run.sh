#!/usr/bin/env bash
# Runs the randomized load (checker.py) against a throwaway cluster of its own, with fsync on so
# that the crash in the middle of the run is a real one: creates the cluster in
# $LEASE_RUN_DIR/load on port $LEASE_LOAD_PORT (default: LEASE_TEST_PORT + 2, i.e. 54331), runs
# the program with the arguments given, and removes the cluster (it is kept, stopped, if the run
# found violations, for its server.log). Needs the extension installed (scripts/test.sh or
# scripts/run.sh do that).
#   tests/load/run.sh --seconds 600 --report load.md
source "$(dirname "$0")/../../scripts/common.sh"

PORT=${LEASE_LOAD_PORT:-$((${LEASE_TEST_PORT:-54329} + 2))}
setup_python
cluster_destroy load
cluster_start load "$PORT" "log_line_prefix = '%m [%p] %b '"
set +e
"$VENV/bin/python" "$ROOT/tests/load/checker.py" --port "$PORT" --data-dir "$RUN_DIR/load/data" "$@"
status=$?
set -e
if [ "$status" = 0 ]; then
    cluster_destroy load
else
    cluster_stop load
    echo "kept the cluster for inspection: $RUN_DIR/load (server.log)"
fi
exit "$status"
