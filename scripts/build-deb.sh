#!/bin/sh
# make deb: a Debian package of everything `make install` installs for the PostgreSQL
# that PG_CONFIG names, pyhook's Python dependencies included: pip runs here, at build
# time, so the server that installs the package needs neither pip nor the network.
#
#   PG_CONFIG=... SERVER_PYTHON=... sh scripts/build-deb.sh
#
# writes dist/postgresql-<major>-pg-oauth_<version>_<arch>.deb and prints its path last.
# Debian's PostgreSQL (pg_config's pkglibdir /usr/lib/postgresql/<major>/lib): depends on
# postgresql-<major> and its PL/Python, pg-oauth in /usr/bin. Any other (built from
# source): depends on nothing of PostgreSQL, pg-oauth in pg_config's bindir.
# DEB_VERSION overrides the version. The maintainer ("Name <email>") is DEB_MAINTAINER,
# else the git identity (user.name, user.email) where one is set, else DEFAULT_MAINTAINER:
# a build machine needs no git identity.
set -eu

DEFAULT_MAINTAINER="pg_oauth developers <root@localhost>"

cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-pg_config}
SERVER_PYTHON=${SERVER_PYTHON:-/usr/bin/python3}
MAKE=${MAKE:-make}

fail() { echo "build-deb: $*" >&2; failed=1; exit 1; }
# the net under set -e: a command that fails without fail() still says what was going on
failed=
step="starting"
trap 'rc=$?; [ "$rc" = 0 ] || [ -n "$failed" ] || echo "build-deb: failed (exit $rc) while $step" >&2' EXIT

command -v "$PG_CONFIG" >/dev/null || fail "no pg_config at '$PG_CONFIG' (set PG_CONFIG)"
pg_version=$("$PG_CONFIG" --version) || fail "$PG_CONFIG --version failed"
major=$(echo "$pg_version" | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')
[ -n "$major" ] || fail "no major version in '$pg_version' ($PG_CONFIG --version)"
package=postgresql-$major-pg-oauth
pkglibdir=$("$PG_CONFIG" --pkglibdir) || fail "$PG_CONFIG --pkglibdir failed"
sharedir=$("$PG_CONFIG" --sharedir) || fail "$PG_CONFIG --sharedir failed"
python_target=$sharedir/pg_oauth/python  # the Makefile's PYTHON_TARGET
if [ "$pkglibdir" = "/usr/lib/postgresql/$major/lib" ]; then
    bindir=/usr/bin
    mandir=/usr/share/man
    pg_depends="postgresql-$major, postgresql-plpython3-$major, "
else
    bindir=$("$PG_CONFIG" --bindir) || fail "$PG_CONFIG --bindir failed"
    mandir=$("$PG_CONFIG" --mandir) || fail "$PG_CONFIG --mandir failed"
    pg_depends=""
fi

[ -f LICENSE ] || fail "no LICENSE in the source tree"
ext_version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" sql/pg_oauth.control)
[ -n "$ext_version" ] || fail "no default_version in sql/pg_oauth.control"
step="reading the version and the maintainer (git, sql/pg_oauth.control)"
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
    # the commit's time (UTC) orders builds of one branch; a tree with changes says so
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
    upstream=$ext_version+git$(TZ=UTC git log -1 --date=format-local:%Y%m%d%H%M --format=%cd)
    upstream=$upstream.$(git rev-parse --short=7 HEAD)
    git diff --quiet HEAD -- || upstream=$upstream.dirty
else
    SOURCE_DATE_EPOCH=$(date +%s)
    upstream=$ext_version
fi
export SOURCE_DATE_EPOCH  # dpkg-deb: file times in the package
version=${DEB_VERSION:-$upstream-1}
if [ -n "${DEB_MAINTAINER:-}" ]; then
    maintainer=$DEB_MAINTAINER
else
    # `git config` exits 1 for a key that is not set: no identity is no error here
    git_name=$(git config user.name 2>/dev/null || true)
    git_email=$(git config user.email 2>/dev/null || true)
    if [ -n "$git_name" ] && [ -n "$git_email" ]; then
        maintainer="$git_name <$git_email>"
    else
        maintainer=$DEFAULT_MAINTAINER
    fi
fi
arch=$(dpkg --print-architecture) || fail "dpkg --print-architecture failed"
command -v dpkg-shlibdeps >/dev/null || fail "dpkg-shlibdeps is missing: apt-get install dpkg-dev"

step="making the package's tree"
# debian/<package> is the package's root, as dpkg-shlibdeps expects it
work=$PWD/build/deb
root=$work/debian/$package
doc=$root/usr/share/doc/$package
rm -rf "$work" || fail "cannot remove $work"
mkdir -p "$root/DEBIAN" "$doc" || fail "cannot create $root"

# a clean build: objects of another PG_CONFIG must not end up in the package
"$MAKE" -s clean PG_CONFIG="$PG_CONFIG" >/dev/null || fail "$MAKE clean failed"
"$MAKE" -s all PG_CONFIG="$PG_CONFIG" >/dev/null || fail "$MAKE all (the build) failed"
"$MAKE" -s install PG_CONFIG="$PG_CONFIG" SERVER_PYTHON="$SERVER_PYTHON" TOOLS_BINDIR="$bindir" \
    DESTDIR="$root" >/dev/null || fail "$MAKE install DESTDIR=$root failed"
[ -f "$root$pkglibdir/pg_oauth.so" ] && [ -d "$root$python_target/pyhook" ] \
    && [ -x "$root$bindir/pg-oauth" ] || fail "make install DESTDIR=$root left something out"

# Byte code is made by postinst for the Python that runs it, and removed by prerm (what
# Debian's python3 packages do): the package holds sources and the wheels' libraries.
find "$root" -name __pycache__ -type d -prune -exec rm -rf {} +
# as dh_strip does, the wheels' libraries too (cryptography's shrinks by a third)
find "$root" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment \
    --remove-section=.note {} + -exec chmod 644 {} +
chmod -R u=rwX,go=rX "$root"

step="finding the dependencies (python, dpkg-shlibdeps)"
# the wheels pip chose for the server's Python: a library built for its version (cffi's
# cpython-311) pins the package to that version; abi3 ones (cryptography) only need it
pyver=$("$SERVER_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pynext=$("$SERVER_PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
py_depends="python3 (>= $pyver)"
if [ -n "$(find "$root$python_target" -name '*.cpython-*.so' | head -n 1)" ]; then
    py_depends="$py_depends, python3 (<< $pynext)"
fi
# what the libraries link (libc6, libgcc-s1 for cryptography's Rust); libpq5 for
# psycopg, which loads it at run time (pg-oauth --dsn)
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$package" "$package" > "$work/debian/control"
shlibs=$(cd "$work" && find "debian/$package" -name '*.so' -print0 | sort -z \
    | xargs -0 dpkg-shlibdeps -O --warnings=0 | sed -n 's/^shlibs:Depends=//p')

step="writing the package's documents (copyright, changelog, man page)"
{
    echo "pg_oauth, built into $package by make deb (scripts/build-deb.sh) from $upstream"
    echo "for PostgreSQL $major ($pg_version)."
    echo
    echo "pg_oauth itself (the library, the SQL files, pyhook, pg-oauth), under the"
    echo "PostgreSQL License (the source tree's LICENSE):"
    echo
    sed 's/^/  /; s/^  $/  ./' LICENSE
    echo
    echo "The Python packages below were installed into $python_target"
    echo "at build time (requirements.txt at the versions of constraints.txt), each under its"
    echo "own license, whose text is in its dist-info directory there:"
    for meta in "$root$python_target"/*.dist-info/METADATA; do
        # pyhook is pg_oauth's own, under the license above
        case $(basename "$(dirname "$meta")") in pyhook-*) continue ;; esac
        echo
        # the header ends at the first empty line
        awk '/^$/ { exit } /^(Name|Version|License-Expression|License): / { print }' "$meta"
        for file in "$(dirname "$meta")"/licenses/* "$(dirname "$meta")"/LICENSE*; do
            [ -f "$file" ] && echo "  ${file#"$root"}"
        done
        case $(grep -m 1 '^License-Expression:' "$meta") in
            *LGPL-3.0*) echo "  /usr/share/common-licenses/LGPL-3" ;;
        esac
    done
} > "$doc/copyright"
gzip -9n -c README.md > "$doc/README.md.gz"
gzip -9n -c docs/dba-guide.md > "$doc/dba-guide.md.gz"
{
    echo "$package ($version) unstable; urgency=medium"
    echo
    echo "  * Built by make deb from pg_oauth $upstream."
    echo
    echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$doc/changelog.Debian.gz"

# pg-oauth(1): its --help, from the package's own files
help=$("$SERVER_PYTHON" -I -B -c 'import sys; sys.path.insert(0, sys.argv[1]); sys.argv[1:] = ["--help"]
from pg_oauth_command import main; main()' "$root$python_target")
man=$root$mandir/man1
mkdir -p "$man"
{
    echo ".TH PG-OAUTH 1 $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d) \"pg_oauth $upstream\""
    echo ".SH NAME"
    echo "pg-oauth \\- pg_oauth's commands for the server's administrators"
    echo ".SH SYNOPSIS"
    echo ".B pg-oauth"
    echo "COMMAND [options]"
    echo ".SH DESCRIPTION"
    echo ".nf"
    # roff: backslashes written as \e, a leading . or ' made plain text with \&
    echo "$help" | sed -e 's/\\/\\e/g' -e "s/^[.']/\\\\\\&&/"
    echo ".fi"
    echo ".SH SEE ALSO"
    echo "The DBA guide, in /usr/share/doc/$package/dba-guide.md.gz."
} | gzip -9n > "$man/pg-oauth.1.gz"

# what lintian says of every package built this way, and why it is so
overrides=$root/usr/share/lintian/overrides
mkdir -p "$overrides"
cat > "$overrides/$package" <<EOF
# pyhook's dependencies sit beside it in PostgreSQL's sharedir, where make install puts
# them too (pg_oauth.python_path), the wheels' compiled libraries with them
arch-dependent-file-in-usr-share [${python_target#/}/*]
# built from a source tree, never uploaded to Debian: no bug to close
initial-upload-closes-no-bugs
EOF
chmod 644 "$doc/copyright" "$doc/README.md.gz" "$doc/dba-guide.md.gz" "$doc/changelog.Debian.gz" \
    "$man/pg-oauth.1.gz" "$overrides/$package"

step="writing the maintainer scripts and control file"
cat > "$root/DEBIAN/postinst" <<EOF
#!/bin/sh
# Byte code for the server's Python: nothing is downloaded, nothing installed by pip.
set -e
if [ "\$1" = configure ]; then
    ${SERVER_PYTHON} -I -m compileall -q $python_target >/dev/null || true
fi
EOF
cat > "$root/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
# Removal (not an upgrade) refuses while a cluster of PostgreSQL $major still preloads
# pg_oauth or has token lines: without the library they would admit anyone without a
# password, or, with the session guard, no one. pg-oauth uninstall takes it out safely;
# PG_OAUTH_FORCE_REMOVE=1 removes the package anyway.
if [ "\$1" = remove ] && [ "\${PG_OAUTH_FORCE_REMOVE:-}" != 1 ] && [ -d /etc/postgresql/$major ]; then
    $bindir/pg-oauth uninstall --pending $major || {
        rc=\$?
        [ "\$rc" = 1 ] || echo "$package: not removed: could not check the clusters" \
            "(pg-oauth uninstall --pending $major: exit \$rc); PG_OAUTH_FORCE_REMOVE=1 in" \
            "the environment removes it anyway" >&2
        exit 1
    }
fi
# The byte code postinst made is no file of the package: remove it with the package.
case "\$1" in
    remove|upgrade|deconfigure)
        find $python_target -name __pycache__ -type d -prune -exec rm -rf {} + ;;
esac
EOF
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $pg_depends$py_depends, libpq5, $shlibs
Section: database
Priority: optional
Description: OAuth/OIDC JWT logins for PostgreSQL $major
 pg_oauth lets any PostgreSQL client log in with a short-lived OAuth/OIDC access
 token (a JWT) as its password. PostgreSQL itself checks the token against the
 issuer's keys (signature, expiry, issuer, audience), maps its identity to the
 roles it may use, and refuses everything else.
 .
 This package holds the extension (library and SQL files), its validator pyhook
 with PyJWT, cryptography and psycopg at the versions it was tested with, and
 the pg-oauth command (doctor, explain, check).
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

step="building the .deb (dpkg-deb)"
mkdir -p dist
rm -f "dist/${package}_"*.deb
dpkg-deb --build --root-owner-group "$root" dist/ >/dev/null
deb=dist/${package}_${version}_$arch.deb
[ -f "$deb" ] || fail "dpkg-deb did not write $deb"
echo "$PWD/$deb"
