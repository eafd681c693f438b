# Shared by scripts/run.sh, scripts/test.sh and bench/run.sh: one-time machine set-up and
# throwaway PostgreSQL clusters. PostgreSQL refuses to run as root, so every server runs as
# $LEASE_SERVER_USER (default: postgres), whoever calls these scripts (root or a sudoer).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=15
# LEASE_PG_CONFIG and LEASE_PG_BIN: another (relocated) copy of the installation, e.g. for
# bench/ab.sh to swap libraries without touching the one other servers use.
PG_CONFIG=${LEASE_PG_CONFIG:-/usr/bin/pg_config}
PG_BIN=${LEASE_PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}
PGRX_VERSION=0.18.1
SERVER_USER=${LEASE_SERVER_USER:-postgres}
RUN_DIR=${LEASE_RUN_DIR:-/tmp/lease}
VENV=$ROOT/.venv
# Where cargo pgrx init records pg_config; the pgrx-pg-sys build script of every cargo build
# (cargo pgrx's, and cargo clippy's in scripts/test.sh) reads it to find PostgreSQL's headers.
PGRX_CONFIG=${PGRX_HOME:-$HOME/.pgrx}/config.toml
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs a command as the server's OS user, from a directory that user can enter.
as_server_user() {
    (cd / && as_root sudo -u "$SERVER_USER" "$@")
}

# install_debian_packages PACKAGE...: installs those of the packages that are not installed yet.
install_debian_packages() {
    local package missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Installs what building and testing need; skips what is already there.
setup_machine() {
    install_debian_packages postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev sudo gcc make
    if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
        say "installing cargo-pgrx $PGRX_VERSION (takes a few minutes)"
        # Without optimisation: the tool only drives cargo and writes the schema (the same
        # files), and it compiles in half the time (146 s against 294 s on 2 cores).
        CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_LTO=false \
            CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
            cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "$PGRX_CONFIG"; then
        say "registering PostgreSQL $PG_MAJOR with pgrx"
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
    fi
}

# The Rust tools of the static checks (scripts/test.sh static): rustfmt and clippy, added to
# the toolchain with rustup if missing.
setup_lints() {
    if ! cargo fmt --version >/dev/null 2>&1; then
        say "installing rustfmt"
        rustup component add rustfmt
    fi
    if ! cargo clippy --version >/dev/null 2>&1; then
        say "installing clippy"
        rustup component add clippy
    fi
}

# A Python environment with the client library the out-of-process tests use.
setup_python() {
    if [ ! -x "$VENV/bin/pytest" ]; then
        say "creating $VENV with psycopg and pytest"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'psycopg[binary]==3.2.*' 'pytest==8.*'
    fi
}

# What the high-availability layer needs (scripts/test.sh ha): Debian's Patroni and etcd. Their
# services are not used: the tests start their own processes, as the server's user, on free
# loopback ports.
setup_ha() {
    install_debian_packages patroni etcd-server
}

# Builds the extension and installs it into the system PostgreSQL ($1: extra cargo pgrx flags).
install_extension() {
    say "building and installing the extension"
    local sudo_flag=()
    [ "$(id -u)" = 0 ] || sudo_flag=(--sudo)
    # Running servers have the old library mapped: unlink it rather than let the install
    # overwrite it in place, which would change the code under their feet.
    as_root rm -f "$($PG_CONFIG --pkglibdir)/lease.so"
    (cd "$ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "${sudo_flag[@]}" "$@")
    # Scripts of earlier versions and version steps (pgrx installs only the steps).
    as_root install -m 644 "$ROOT"/sql/lease--*.sql "$($PG_CONFIG --sharedir)/extension/"
}

# cluster_start NAME PORT [postgresql.conf lines...]: starts (creating it if needed) a cluster
# in $RUN_DIR/NAME, listening on 127.0.0.1:PORT and on a socket in that directory.
cluster_start() {
    local name=$1 port=$2
    shift 2
    local dir=$RUN_DIR/$name
    as_root mkdir -p "$dir"
    as_root chown "$SERVER_USER" "$dir"
    if ! as_root test -f "$dir/data/PG_VERSION"; then
        as_server_user "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
        {
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$dir'"
            echo "shared_preload_libraries = 'lease'"
            for line in "$@"; do echo "$line"; done
        } | as_server_user tee -a "$dir/data/postgresql.conf" >/dev/null
    fi
    if ! as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    fi
}

cluster_stop() {
    local dir=$RUN_DIR/$1
    if as_root test -f "$dir/data/postmaster.pid"; then
        as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
}

cluster_destroy() {
    cluster_stop "$1"
    as_root rm -rf "${RUN_DIR:?}/$1"
}

# The client libraries' layer (scripts/test.sh clients). Each step is skipped when already done.
# The Python client (clients/python) installed into $VENV, again whenever its sources change.
setup_python_client() {
    setup_python
    local stamp=$VENV/.pglease-sources digest
    digest=$(cd "$ROOT/clients/python" && find pyproject.toml README.md src -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ] || ! "$VENV/bin/python" -c 'import pglease' 2>/dev/null; then
        say "installing the Python client (clients/python) into $VENV"
        "$VENV/bin/pip" install -q --force-reinstall --no-deps "$ROOT/clients/python"
        echo "$digest" >"$stamp"
    fi
}

# PgBouncer (Debian's, 1.18), which the client tests start in transaction pooling mode.
setup_pgbouncer() {
    install_debian_packages pgbouncer
}

# The TypeScript client (clients/typescript): its packages as locked (npm ci, only when the lock
# file changed) and compiled with tsc into clients/typescript/dist.
setup_typescript_client() {
    local dir=$ROOT/clients/typescript
    if ! command -v npm >/dev/null; then
        echo "setup_typescript_client: node and npm are needed (Debian: apt install nodejs npm)" >&2
        return 1
    fi
    if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed" 2>/dev/null; then
        say "installing the TypeScript client's packages (npm ci)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"
    fi
    (cd "$dir" && npx --no-install tsc -p .)
}
