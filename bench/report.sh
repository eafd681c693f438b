#!/usr/bin/env bash
# The whole benchmark report in one command: runs every benchmark side by side with its
# baselines on one server (bench/run.sh: core, expiry, waiting, queue), then writes
# bench/results/report.md (machine, settings, every table) and bench/results/report.png (the
# chart) with bench/report.py, using matplotlib in the project's Python environment.
# Usage: bench/report.sh [seconds per pgbench run, default 5]. bench/run.sh's environment
# variables apply (LEASE_BENCH_SKIP_INSTALL=1, LEASE_BENCH_RESULTS, LEASE_BENCH_PORT, ...);
# LEASE_REPORT_ONLY=1 skips the benchmarks and redraws the report from the results there.
source "$(dirname "$0")/../scripts/common.sh"

MATPLOTLIB_VERSION=3.10.9
RESULTS=${LEASE_BENCH_RESULTS:-$ROOT/bench/results}

if [ "${LEASE_REPORT_ONLY:-0}" != 1 ]; then
    bash "$ROOT/bench/run.sh" "$@"
fi
setup_python
if ! "$VENV/bin/python" -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null; then
    say "installing matplotlib $MATPLOTLIB_VERSION into $VENV"
    "$VENV/bin/pip" install -q "matplotlib==$MATPLOTLIB_VERSION"
fi
"$VENV/bin/python" "$ROOT/bench/report.py" "$RESULTS"
