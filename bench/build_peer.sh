#!/bin/sh
# The peer of the bearer section (bench/bearer.py): proddata/pg_oauth_validator, a C
# OAUTHBEARER validator module, built from its source with the libraries it pins, and
# installed into the Debian root of one PostgreSQL major (scripts/pg-root.sh), as root.
#
#   bench/build_peer.sh [MAJOR]      MAJOR: 18 (default) or 19
#
# The sources are paths, never downloads: CI machines reach package registries only, not
# github.com. Each is a git repository (bare or not; the pinned commit is exported from
# it), a source directory or a .tar.gz of one (used as it is):
#
#   PEER_SOURCE     proddata/pg_oauth_validator     https://github.com/proddata/pg_oauth_validator
#   LIBJWT_SOURCE   benmcollins/libjwt (>= 3.3.3)   https://github.com/benmcollins/libjwt
#   JANSSON_SOURCE  akheron/jansson                 https://github.com/akheron/jansson
#
# The commits below are the ones measured: the peer's HEAD when the side-by-side run was
# made, and the libjwt and Jansson commits its own scripts/ci/install-*.sh pin (so the
# module is built the way its authors ship it). PEER_COMMIT, LIBJWT_COMMIT and
# JANSSON_COMMIT override them.
#
# libjwt and Jansson go into a private prefix inside the root (/opt/pg_oauth-peer): the
# peer links both statically (Debian's libjansson.a is not PIC, sid's libjwt is 1.x), so
# nothing of them is installed where the root's other programs would see it. The module
# goes where the root's PostgreSQL loads modules from ($(pg_config --pkglibdir)), with a
# record of what was built beside the libraries (/opt/pg_oauth-peer/BUILD-INFO), which the
# bench prints under its table.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
major=${1:-18}
prefix=/opt/pg_oauth-peer
marker=/etc/pg_oauth-root

PEER_COMMIT=${PEER_COMMIT:-75938f95ca7d491dc8a3a05b75b64a0a623e9a60}      # 2026-08-12
LIBJWT_COMMIT=${LIBJWT_COMMIT:-602118d99d46ca5df71bda60d3df642135417f29}  # v3.3.3
JANSSON_COMMIT=${JANSSON_COMMIT:-dbb5fb3636e155fccfce4cd215de752779bd6971} # v2.15.1

fail() { echo "build_peer: $*" >&2; exit 1; }
say() { echo "build_peer: $*" >&2; }

case "$major" in
    18 | 19) ;;
    *) fail "pg_oauth_validator builds for PostgreSQL 18 and 19 only (its Makefile refuses
others), not $major" ;;
esac

# -- on the host: check and stage the sources, then build inside the root ----------------

# Where a source cannot be had, say which and where to get it, with the commit to take.
explain() {
    name=$1 var=$2 url=$3 commit=$4 why=$5
    cat >&2 <<EOF
build_peer: cannot build the peer: $var $why.
  $name is at $url (commit $commit);
  clone it where this machine can read it and set $var to that path, e.g.
    git clone $url /srv/src/$(basename "$url")
    $var=/srv/src/$(basename "$url") sh bench/build_peer.sh $major
EOF
}
missing() { explain "$@"; exit 1; }

# Put the source of $1 (a path) at $2, as of commit $3 when it is a git repository.
# Prints what was taken: "commit <sha> (<describe>)" or "unversioned <path>".
stage() {
    src=$1 dest=$2 commit=$3 var=$4 name=$5 url=$6
    mkdir -p "$dest"
    if [ -f "$src" ]; then
        case "$src" in
            *.tar.gz | *.tgz) ;;
            *) missing "$name" "$var" "$url" "$commit" "is a file, not a repository, directory or .tar.gz: $src" ;;
        esac
        tar -xzf "$src" -C "$dest" --strip-components=1 ||
            missing "$name" "$var" "$url" "$commit" "is not a readable .tar.gz: $src"
        echo "tarball $(basename "$src") sha256 $(sha256sum "$src" | cut -c1-64)"
    elif git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$src" cat-file -e "$commit^{commit}" 2>/dev/null ||
            missing "$name" "$var" "$url" "$commit" "($src) does not have commit $commit (fetch it, or set ${var%_SOURCE}_COMMIT)"
        git -C "$src" archive --format=tar "$commit" | tar -xf - -C "$dest"
        echo "commit $(git -C "$src" rev-parse "$commit^{commit}") ($(git -C "$src" describe --tags --always "$commit" 2>/dev/null))"
    elif [ -d "$src" ]; then
        cp -R "$src/." "$dest/"
        echo "unversioned directory $src"
    else
        missing "$name" "$var" "$url" "$commit" "is not set, or names nothing on this machine (${src:-unset})"
    fi
}

if [ "$(sed -n 's/^major=//p' "$marker" 2>/dev/null)" != "$major" ]; then
    [ "$(id -u)" = 0 ] || fail "run as root: it installs build tools and the module into the
PostgreSQL $major root (scripts/pg-root.sh)"
    # Check all three before any work, so one run names everything that is missing.
    absent=false
    for source in "pg_oauth_validator PEER_SOURCE https://github.com/proddata/pg_oauth_validator $PEER_COMMIT" \
        "libjwt LIBJWT_SOURCE https://github.com/benmcollins/libjwt $LIBJWT_COMMIT" \
        "Jansson JANSSON_SOURCE https://github.com/akheron/jansson $JANSSON_COMMIT"; do
        # shellcheck disable=SC2086
        set -- $source
        eval "p=\${$2:-}"
        if [ -z "$p" ] || [ ! -e "$p" ]; then
            explain "$1" "$2" "$3" "$4" "is not set, or names nothing on this machine (${p:-unset})"
            absent=true
        fi
    done
    $absent && exit 1
    # the root sees the checkout and /tmp, nothing else of the host: stage in /tmp
    staging=$(mktemp -d /tmp/pg_oauth-peer.XXXXXX)
    trap 'rm -rf "$staging"' EXIT INT TERM
    # stage exits the script itself (not a subshell) when a source lacks its commit
    stage "$PEER_SOURCE" "$staging/peer" "$PEER_COMMIT" PEER_SOURCE pg_oauth_validator \
        https://github.com/proddata/pg_oauth_validator > "$staging/peer.taken"
    stage "$LIBJWT_SOURCE" "$staging/libjwt" "$LIBJWT_COMMIT" LIBJWT_SOURCE libjwt \
        https://github.com/benmcollins/libjwt > "$staging/libjwt.taken"
    stage "$JANSSON_SOURCE" "$staging/jansson" "$JANSSON_COMMIT" JANSSON_SOURCE Jansson \
        https://github.com/akheron/jansson > "$staging/jansson.taken"
    for name in peer libjwt jansson; do
        echo "$name=$(cat "$staging/$name.taken")"
    done > "$staging/sources"
    chmod -R a+rX "$staging"
    sh "$here/scripts/pg-root.sh" "$major" ensure >&2
    cd "$here"
    sh scripts/pg-root.sh "$major" run env PEER_STAGING="$staging" sh bench/build_peer.sh "$major"
    exit 0
fi

# -- inside the root of MAJOR ----------------------------------------------------------

staging=${PEER_STAGING:?build_peer: run it from the host: sh bench/build_peer.sh $major}
pg_config=/usr/lib/postgresql/$major/bin/pg_config
[ -x "$pg_config" ] || fail "no $pg_config in this root"

# cmake builds libjwt and Jansson; pkg-config is how libjwt's CMakeLists and the peer's
# Makefile find them; the peer links libcurl and OpenSSL from Debian, dynamically.
packages="cmake pkgconf libcurl4-openssl-dev libssl-dev"
need=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    say "installing$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $need >/dev/null || fail "apt-get install$need failed"
fi

build=$(mktemp -d /var/tmp/pg_oauth-peer-build.XXXXXX)
trap 'rm -rf "$build"' EXIT INT TERM
rm -rf "$prefix"
mkdir -p "$prefix"

# Static, position-independent archives: the module embeds both (as the peer's CI builds
# them: scripts/ci/install-jansson.sh and install-libjwt.sh). CMAKE_INSTALL_LIBDIR=lib:
# the peer's Makefile asks pkg-config for the libdir and expects libjwt.a in it.
cmake_static() {
    cmake -S "$1" -B "$2" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DBUILD_SHARED_LIBS=OFF \
        -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib "$@" >"$2.log" 2>&1 &&
        cmake --build "$2" --parallel 2 >>"$2.log" 2>&1 &&
        cmake --install "$2" >>"$2.log" 2>&1 || { tail -n 40 "$2.log" >&2; return 1; }
}
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"

say "building Jansson"
cmake_static "$staging/jansson" "$build/jansson" -DJANSSON_BUILD_SHARED_LIBS=OFF \
    -DJANSSON_BUILD_DOCS=OFF -DJANSSON_EXAMPLES=OFF -DJANSSON_WITHOUT_TESTS=ON \
    -DCMAKE_POLICY_VERSION_MINIMUM=3.5 || fail "Jansson did not build (log above)"
say "building libjwt"
cmake_static "$staging/libjwt" "$build/libjwt" -DEXCLUDE_DEPRECATED=ON -DWITH_GNUTLS=OFF \
    -DWITH_JSON_C=OFF -DWITH_LIBCURL=OFF -DWITH_MBEDTLS=OFF -DWITH_TESTS=OFF \
    -DCMAKE_C_FLAGS=-Wno-stringop-truncation || fail "libjwt did not build (log above)"
pkg-config --atleast-version=3.3.3 libjwt ||
    fail "libjwt $(pkg-config --modversion libjwt) is older than the 3.3.3 the peer needs"

# with_llvm=no: Debian's server is built with LLVM, so PGXS would also make JIT bitcode,
# which needs clang; the validator is not SQL and gains nothing from it.
say "building pg_oauth_validator for PostgreSQL $major"
cp -R "$staging/peer" "$build/peer"
make -C "$build/peer" PG_CONFIG="$pg_config" with_llvm=no all >"$build/peer.log" 2>&1 ||
    { tail -n 40 "$build/peer.log" >&2; fail "pg_oauth_validator did not build (log above)"; }
make -C "$build/peer" PG_CONFIG="$pg_config" with_llvm=no install >>"$build/peer.log" 2>&1 ||
    { tail -n 40 "$build/peer.log" >&2; fail "pg_oauth_validator did not install (log above)"; }
module="$($pg_config --pkglibdir)/pg_oauth_validator.so"
nm -D "$module" | grep -q ' T _PG_oauth_validator_module_init' ||
    fail "$module does not export _PG_oauth_validator_module_init"

{
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "postgresql=$($pg_config --version | sed 's/^PostgreSQL //')"
    cat "$staging/sources"
    echo "libjwt_version=$(pkg-config --modversion libjwt)"
    echo "jansson_version=$(pkg-config --modversion jansson)"
    echo "libcurl=$(dpkg-query -W -f='${Version}' libcurl4-openssl-dev)"
    echo "openssl=$(dpkg-query -W -f='${Version}' libssl-dev)"
    echo "module=$module"
} > "$prefix/BUILD-INFO"
say "installed $module; built from:"
cat "$prefix/BUILD-INFO"
