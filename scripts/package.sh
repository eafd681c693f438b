#!/usr/bin/env bash
# Builds the Debian package postgresql-15-lease from the output of `cargo pgrx package`:
#
#   ./scripts/package.sh           # release build (several minutes from scratch)
#   ./scripts/package.sh --debug   # debug build: quicker, for tests only
#
# Arguments go to `cargo pgrx package`.
# The package holds lease.so, lease.control, the generated lease--<version>.sql and every
# sql/lease--*.sql (scripts of older versions, upgrade steps). It is written to
# target/debian/postgresql-15-lease_<version>-<revision>_<arch>.deb; stdout gets only that path,
# progress goes to stderr. Install it with `apt install ./<file>.deb`.
# Environment: LEASE_DEB_REVISION (default 1), LEASE_DEB_MAINTAINER (default: the author of the
# last commit), SOURCE_DATE_EPOCH (default: the time of the last commit).
source "$(dirname "$0")/common.sh"

PACKAGE=postgresql-$PG_MAJOR-lease
REVISION=${LEASE_DEB_REVISION:-1}
OUT_DIR=$ROOT/target/debian
STAGE=$OUT_DIR/$PACKAGE

exec 3>&1 1>&2 # keep stdout for the package's path

# Runs `cargo pgrx package` into an empty $STAGE, so no file of an earlier build is left in it.
build_into_stage() {
    rm -rf "$STAGE"
    mkdir -p "$STAGE"
    say "building the extension ($*)"
    (cd "$ROOT" && cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$STAGE" "$@")
}

# The version the build wrote into lease.control ('@CARGO_VERSION@' comes from Cargo.toml).
extension_version() {
    sed -n "s/^default_version = '\(.*\)'\$/\1/p" "$EXT_DIR/lease.control"
}

# Adds every sql/lease--*.sql; the script pgrx generated for the current version wins over a
# file of the same name in sql/.
add_sql_scripts() {
    local script name
    for script in "$ROOT"/sql/lease--*.sql; do
        [ -e "$script" ] || continue
        name=$(basename "$script")
        if [ "$name" = "lease--$VERSION.sql" ]; then
            echo "note: sql/$name not shipped: the generated script of version $VERSION is" >&2
            continue
        fi
        install -m 0644 "$script" "$EXT_DIR/$name"
    done
}

add_copyright() {
    local doc=$STAGE/usr/share/doc/$PACKAGE
    mkdir -p "$doc"
    cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lease

Files: *
Copyright: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y) $MAINTAINER_NAME
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy of this software
 and associated documentation files (the "Software"), to deal in the Software without
 restriction, including without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all copies or
 substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
 BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
 NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
EOF
}

# Debian modes: directories 0755, everything else (the shared library too) 0644.
normalize_modes() {
    find "$STAGE" -type d -exec chmod 0755 {} +
    find "$STAGE" -type f -exec chmod 0644 {} +
}

# The shared libraries lease.so links against, as Debian dependencies ("libc6 (>= 2.34), ...").
library_depends() {
    if ! command -v dpkg-shlibdeps >/dev/null; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >/dev/null
    fi
    local work
    work=$(mktemp -d)
    mkdir "$work/debian"
    printf 'Source: lease\n\nPackage: %s\nArchitecture: any\n' "$PACKAGE" >"$work/debian/control"
    (cd "$work" && dpkg-shlibdeps -O "$LIB_DIR/lease.so" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    rm -rf "$work"
}

write_control() {
    local installed_kb library_deps
    installed_kb=$(du -sk --apparent-size "$STAGE" | cut -f1)
    library_deps=$(library_depends)
    [ -n "$library_deps" ] || { echo "dpkg-shlibdeps found no dependencies of lease.so" >&2; exit 1; }
    mkdir -p "$STAGE/DEBIAN"
    cat >"$STAGE/DEBIAN/control" <<EOF
Package: $PACKAGE
Version: $DEB_VERSION
Architecture: $(dpkg --print-architecture)
Maintainer: $MAINTAINER
Installed-Size: $installed_kb
Depends: postgresql-$PG_MAJOR, $library_deps
Section: database
Priority: optional
Description: fenced, time-limited leases for PostgreSQL $PG_MAJOR
 The lease extension gives applications leases: the exclusive, time-limited
 right of one holder to one resource, acquired, renewed and released with SQL.
 Each grant carries a fencing token that only grows, and lease_check() fences
 a write in the same transaction as the write itself. A background worker
 expires leases on time and every change is announced with NOTIFY.
 .
 Add 'lease' to shared_preload_libraries, restart PostgreSQL, then run
 CREATE EXTENSION lease.
EOF
    (cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
        >"$STAGE/DEBIAN/md5sums"
    chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/md5sums"
}

setup_machine
build_into_stage "$@"
EXT_DIR=$STAGE$("$PG_CONFIG" --sharedir)/extension
LIB_DIR=$STAGE$("$PG_CONFIG" --pkglibdir)
VERSION=$(extension_version)
[ -f "$EXT_DIR/lease--$VERSION.sql" ] || { echo "no lease--$VERSION.sql in $EXT_DIR" >&2; exit 1; }
DEB_VERSION=${VERSION//-/\~}-$REVISION # Debian sorts 0.2.0~rc1 before 0.2.0
MAINTAINER=${LEASE_DEB_MAINTAINER:-$(git -C "$ROOT" log -1 --format='%an <%ae>')}
MAINTAINER_NAME=${MAINTAINER% <*}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}

say "assembling $PACKAGE $DEB_VERSION"
add_sql_scripts
strip --strip-unneeded "$LIB_DIR/lease.so"
add_copyright
normalize_modes
write_control
DEB=$OUT_DIR/${PACKAGE}_${DEB_VERSION}_$(dpkg --print-architecture).deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
dpkg-deb --contents "$DEB"
if command -v lintian >/dev/null; then lintian "$DEB" || true; fi
echo "$DEB" >&3
