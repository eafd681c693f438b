#!/usr/bin/env bash
# The main job: sets up this machine if needed, builds and installs the extension, starts a
# local PostgreSQL 15 with it preloaded (as an ordinary OS user, on its own port), creates it,
# runs a short demo, and prints how to connect. Safe to run again: it skips what is done.
source "$(dirname "$0")/common.sh"

PORT=${LEASE_PORT:-54320}
setup_machine
install_extension --release
say "starting PostgreSQL on 127.0.0.1:$PORT (data in $RUN_DIR/demo)"
# A running server keeps the library it started with: restart it so that it runs this build.
cluster_stop demo
cluster_start demo "$PORT"
psql_demo=("$PG_BIN/psql" -X -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
"${psql_demo[@]}" -q -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION IF NOT EXISTS lease' \
    -c 'ALTER EXTENSION lease UPDATE'
say "demo"
"${psql_demo[@]}" -f "$ROOT/scripts/demo.sql"
cat <<MSG

The server keeps running. Connect with:
    psql -h 127.0.0.1 -p $PORT -U postgres
Stop it with:
    sudo -u $SERVER_USER $PG_BIN/pg_ctl -D $RUN_DIR/demo/data stop
MSG
