#!/usr/bin/env bash
# Tests the Debian package the way a user gets it: `apt-get install ./file.deb`, a server with
# the library preloaded, CREATE EXTENSION, a lease acquired, the expiry worker running, then
# `apt-get remove` and every file of the package gone.
#
#   tests/package/install-test.sh [postgresql-15-lease_<version>_<arch>.deb]
#
# Without an argument it builds the package with scripts/package.sh ($LEASE_PACKAGE_FLAGS are
# passed on, e.g. --debug). Run as root or a sudoer. It replaces the system's installed lease
# extension and removes it at the end: reinstall a development build afterwards
# (`cargo pgrx install`). The server runs in $LEASE_RUN_DIR/package-test (default /tmp/lease) on
# 127.0.0.1:$LEASE_PACKAGE_TEST_PORT (default 54328). Ends with "package test: PASS" or
# "package test: FAIL: <why>" and exits non-zero on failure.
source "$(dirname "$0")/../../scripts/common.sh"

PACKAGE=postgresql-$PG_MAJOR-lease
PORT=${LEASE_PACKAGE_TEST_PORT:-54328}
CLUSTER=package-test
EXT_DIR=$("$PG_CONFIG" --sharedir)/extension
LIB_DIR=$("$PG_CONFIG" --pkglibdir)
verdict=""

fail() {
    verdict="package test: FAIL: $*"
    exit 1
}

# On any exit: stop the server, never leave the package installed, print the verdict.
finish() {
    local status=$?
    cluster_destroy "$CLUSTER" || true
    if package_installed; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "$PACKAGE" >/dev/null || true
    fi
    [ -n "$verdict" ] || verdict="package test: FAIL: a command failed (exit status $status)"
    echo "$verdict"
}

package_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$PACKAGE" 2>/dev/null)" = "ii " ]
}

# sql_in DATABASE QUERY...: runs each QUERY, prints the results unaligned.
sql_in() {
    local database=$1 query commands=()
    shift
    for query in "$@"; do commands+=(-c "$query"); done
    "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$database" "${commands[@]}"
}

sql() { sql_in postgres "$@"; }

# expect WHAT ACTUAL EXPECTED
expect() {
    [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
}

# wait_for WHAT QUERY EXPECTED: polls QUERY until it returns EXPECTED, for at most 30 seconds.
wait_for() {
    local deadline=$((SECONDS + 30)) actual
    actual=$(sql "$2")
    while [ "$actual" != "$3" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$1: still '$actual' after 30 s, expected '$3'"
        sleep 0.1
        actual=$(sql "$2")
    done
}

# The versions the scripts among FILES make available: each install script's (lease--1.0.sql),
# and both ends of each upgrade step (lease--1.0--1.1.sql), since PostgreSQL installs a version
# without a script of its own through a step.
versions_of() {
    grep -oE '/lease--[^/]+\.sql$' | sed 's|^/lease--||; s|\.sql$||; s|--|\n|' | sort -u | xargs
}

install_package() {
    local deb=$1
    say "installing $deb"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall "$deb" >/dev/null
    package_installed || fail "$PACKAGE is not installed after apt-get install"
    expect "installed version" "$(dpkg-query -W -f='${Version}' "$PACKAGE")" "$(dpkg-deb -f "$deb" Version)"
}

# Checks the installed files: the library, the control file, the current version's script and
# every sql/lease--*.sql of this tree.
check_files() {
    local file script
    for file in "$LIB_DIR/lease.so" "$EXT_DIR/lease.control" "$EXT_DIR/lease--$VERSION.sql"; do
        grep -qxF "$file" <<<"$FILES" || fail "the package does not ship $file"
    done
    for script in "$ROOT"/sql/lease--*.sql; do
        [ -e "$script" ] || continue
        grep -qxF "$EXT_DIR/$(basename "$script")" <<<"$FILES" || fail "the package does not ship sql/$(basename "$script")"
    done
    while read -r file; do
        [ -f "$file" ] || fail "$file is listed by dpkg -L but not installed"
    done <<<"$FILES"
}

use_extension() {
    say "starting a server with the packaged library preloaded on 127.0.0.1:$PORT"
    cluster_destroy "$CLUSTER"
    cluster_start "$CLUSTER" "$PORT" "fsync = off"
    expect "shared_preload_libraries" "$(sql 'SHOW shared_preload_libraries')" "lease"
    sql 'CREATE EXTENSION lease'
    expect "extension version" "$(sql "SELECT extversion FROM pg_extension WHERE extname = 'lease'")" "$VERSION"
    expect "available versions" \
        "$(sql "SELECT version FROM pg_available_extension_versions WHERE name = 'lease'" | sort | xargs)" \
        "$(versions_of <<<"$FILES")"
    local token
    token=$(sql "SELECT lease_acquire('package-test', 'install-test', '1 minute')")
    [[ "$token" =~ ^[1-9][0-9]*$ ]] || fail "lease_acquire returned '$token', expected a token"
    expect "lease_check with the new token" "$(sql "SELECT lease_check('package-test', $token)")" "t"
    wait_for "expiry worker" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease expirer'" 1
    check_upgrade
    cluster_destroy "$CLUSTER"
}

# From the oldest version the package ships, ALTER EXTENSION UPDATE must reach the current one.
check_upgrade() {
    local oldest
    oldest=$(versions_of <<<"$FILES" | tr ' ' '\n' | sort -V | head -n 1)
    [ "$oldest" != "$VERSION" ] || return 0
    say "updating the extension from $oldest to $VERSION in a new database"
    sql 'CREATE DATABASE package_upgrade'
    sql_in package_upgrade "CREATE EXTENSION lease VERSION '$oldest'" 'ALTER EXTENSION lease UPDATE'
    expect "version after ALTER EXTENSION lease UPDATE" \
        "$(sql_in package_upgrade "SELECT extversion FROM pg_extension WHERE extname = 'lease'")" "$VERSION"
}

remove_package() {
    say "removing $PACKAGE"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq "$PACKAGE" >/dev/null
    ! package_installed || fail "$PACKAGE is still installed after apt-get remove"
    local file
    while read -r file; do
        [ ! -f "$file" ] || fail "$file is still there after apt-get remove"
    done <<<"$FILES"
}

trap finish EXIT
# shellcheck disable=SC2086 # LEASE_PACKAGE_FLAGS holds several words
DEB=${1:-$("$ROOT/scripts/package.sh" ${LEASE_PACKAGE_FLAGS:-})}
[ -f "$DEB" ] || fail "no package file '$DEB'"
DEB=$(realpath "$DEB")
install_package "$DEB"
FILES=$(dpkg -L "$PACKAGE" | while read -r path; do [ -d "$path" ] || echo "$path"; done)
VERSION=$(sed -n "s/^default_version = '\(.*\)'\$/\1/p" "$EXT_DIR/lease.control")
check_files
use_extension
remove_package
verdict="package test: PASS ($(basename "$DEB"))"
