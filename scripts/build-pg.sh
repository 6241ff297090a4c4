#!/bin/sh
# Build PostgreSQL MAJOR from Debian's source package into /opt/pg_oauth/pg<MAJOR>
# (as root; idempotent: rebuilt only when the source package's version changes).
#
#   build-pg.sh 18            fetch postgresql-18's source, configure, build, install
#   PG_OAUTH_PG_ROOT=/x ...   install under /x/pg18 instead
#
# The build is what pg_oauth needs from a server: PL/Python on Debian's /usr/bin/python3,
# OpenSSL, and libcurl from 18 on (libpq's OAuth device flow). The source and the build
# tree are cached outside the checkout, in /var/cache/pg_oauth.
set -eu

major="${1:?usage: $0 MAJOR}"
root="${PG_OAUTH_PG_ROOT:-/opt/pg_oauth}"
prefix="$root/pg$major"
cache="${PG_OAUTH_CACHE:-/var/cache/pg_oauth}"
jobs="$(nproc 2>/dev/null || echo 2)"

# Debian's source suites that carry the newer majors (deb-src only: no binary comes
# from them). bookworm's own deb-src is there for postgresql-15's source.
src_list=/etc/apt/sources.list.d/pg-oauth-src.sources
if [ ! -f "$src_list" ]; then
    cat > "$src_list" <<'LIST'
# pg_oauth's scripts/build-pg.sh: source packages of newer PostgreSQL majors
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm trixie forky sid experimental
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
LIST
    apt-get update -qq
fi

# What building a server needs (Debian 12 packages).
build_deps="build-essential bison flex pkg-config libreadline-dev zlib1g-dev libssl-dev
libicu-dev python3-dev libkrb5-dev libcurl4-openssl-dev xz-utils bzip2"
missing=""
for p in $build_deps; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "build-pg: installing$missing"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The newest version of the source package the archive lists.
version="$(apt-cache showsrc "postgresql-$major" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n1)"
if [ -z "$version" ]; then
    apt-get update -qq
    version="$(apt-cache showsrc "postgresql-$major" | sed -n 's/^Version: //p' | sort -V | tail -n1)"
fi
[ -n "$version" ] || { echo "build-pg: no source package postgresql-$major" >&2; exit 1; }

if [ -x "$prefix/bin/pg_config" ] && [ "$(cat "$prefix/.debian-source-version" 2>/dev/null)" = "$version" ]; then
    echo "build-pg: PostgreSQL $major ($version) already in $prefix"
    exit 0
fi

upstream="${version%-*}"            # 18.6-3 -> 18.6, 19~rc1-1 -> 19~rc1
srcdir="$cache/src/$major"
mkdir -p "$srcdir"
orig="$(ls "$srcdir"/postgresql-"${major}"_"${upstream}".orig.tar.* 2>/dev/null | head -n1 || true)"
if [ -z "$orig" ]; then
    echo "build-pg: fetching postgresql-$major $version"
    # apt's sandbox user must be able to write there
    chmod 755 "$cache" "$cache/src" 2>/dev/null || true
    chown _apt "$srcdir" 2>/dev/null || true
    if ! (cd "$srcdir" && apt-get source --download-only -qq "postgresql-$major=$version" >/dev/null); then
        echo "build-pg: the archive did not serve postgresql-$major $version's source" >&2
        exit 3
    fi
    orig="$(ls "$srcdir"/postgresql-"${major}"_"${upstream}".orig.tar.* | head -n1)"
fi

build="$cache/build/$major"
rm -rf "$build"
mkdir -p "$build"
tar -xf "$orig" -C "$build" --strip-components=1

configure_flags="--prefix=$prefix --with-python --with-openssl --with-icu --with-readline
--without-llvm --enable-nls=no"
if [ "$major" -ge 18 ]; then
    configure_flags="$configure_flags --with-libcurl"
fi
echo "build-pg: building PostgreSQL $major ($version) into $prefix ($jobs jobs)"
cd "$build"
# shellcheck disable=SC2086
PYTHON=/usr/bin/python3 ./configure $configure_flags >"$build/configure.log" 2>&1 ||
    { tail -n 30 "$build/configure.log" >&2; exit 1; }
make -s -j"$jobs" >"$build/make.log" 2>&1 || { tail -n 40 "$build/make.log" >&2; exit 1; }
rm -rf "$prefix"
make -s install >"$build/install.log" 2>&1 || { tail -n 40 "$build/install.log" >&2; exit 1; }
# PL/Python, and the logical decoding plugin the replication tests use
for dir in src/pl/plpython contrib/test_decoding; do
    make -s -C "$dir" install >>"$build/install.log" 2>&1
done
echo "$version" > "$prefix/.debian-source-version"
chmod -R a+rX "$prefix"
echo "build-pg: PostgreSQL $major ($version) installed in $prefix"
