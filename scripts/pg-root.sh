#!/bin/sh
# A Debian root holding Debian's own binary packages of one PostgreSQL major, for the
# majors this machine's apt does not carry (as root).
#
#   pg-root.sh native            the major Debian's own packages give here (15 on Debian 12,
#                                17 on Debian 13, the root's major inside a root)
#   pg-root.sh MAJOR ensure      make the root of MAJOR, or make it again when the archive's
#                                postgresql-MAJOR changed version; print its path
#   pg-root.sh MAJOR run CMD...  run CMD as root inside it: the host's network, /tmp and the
#                                checkout at the same paths inside as outside, PG_BIN set;
#                                the unprivileged pgoauth user there runs test servers
#
#   17  Debian 13 (trixie), Debian 13's own PostgreSQL and Python 3.13
#   18  sid
#   19  sid with experimental's postgresql-19 (pinned)
#
# Roots live in $PG_OAUTH_ROOTS (/var/cache/pg_oauth/roots), outside the checkout; each is
# made by mmdebstrap from this machine's apt, with the archive this machine's own apt
# sources name (never a host written here).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
roots=${PG_OAUTH_ROOTS:-/var/cache/pg_oauth/roots}
marker=/etc/pg_oauth-root   # inside a root: its major, suite and PostgreSQL version

fail() { echo "pg-root: $*" >&2; exit 1; }

native_major() {
    if [ -f "$marker" ]; then
        sed -n 's/^major=//p' "$marker"
        return
    fi
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    case "$codename" in
        bookworm) echo 15 ;;
        trixie) echo 17 ;;
        *) echo "" ;;
    esac
}

if [ "${1:-}" = native ]; then
    native_major
    exit 0
fi

major=${1:?usage: $0 native | MAJOR ensure | MAJOR run CMD...}
action=${2:?usage: $0 MAJOR ensure | MAJOR run CMD...}
shift 2
root=$roots/pg$major

case "$major" in
    17) suite=trixie; extra_suite= ;;
    18) suite=sid; extra_suite= ;;
    19) suite=sid; extra_suite=experimental ;;
    *) fail "no Debian root for PostgreSQL $major (17, 18 and 19 have one; 15 is Debian 12's own)" ;;
esac

# What the suite and tests need inside (minbase has apt, dpkg and util-linux's runuser).
# The OAuth device flow of psql is libpq-oauth from 18 on; nodejs runs the client tests'
# identity provider and node-postgres; git lets make deb name the commit.
packages="postgresql-$major postgresql-server-dev-$major postgresql-plpython3-$major
postgresql-client-$major libkrb5-dev libssl-dev gcc make python3 python3-venv python3-pip
ca-certificates ssl-cert pgbouncer dpkg-dev nodejs procps git"
if [ "$major" -ge 18 ]; then
    packages="$packages libpq-oauth"
fi
# bump when what make_root does changes: roots made before are made again
recipe=$(printf '2 %s %s %s\n' "$suite" "$extra_suite" "$packages" | sha256sum | cut -c1-16)

# The archive this machine's apt uses for Debian itself: the first URI of a deb source
# whose suites include the host's own codename (deb822 or one-line format).
archive() {
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v want="$codename" '
            /^[[:space:]]*$/ { if (deb && ok && uri != "") { print uri; exit } deb = ok = 0; uri = ""; next }
            /^Types:/ { deb = ($0 ~ /(^|[ \t])deb([ \t]|$)/) }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) ok = 1 }
            END { if (deb && ok && uri != "") print uri }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+'"$codename"'[[:space:]].*/\2/p' "$f"
    done
}

installed_version() {
    sed -n 's/^version=//p' "$root$marker" 2>/dev/null || true
}

# The candidate version of postgresql-MAJOR the archive offers now, asked inside the root
# (its own apt lists, refreshed).
candidate_version() {
    run_inside sh -c "apt-get update -qq >/dev/null 2>&1 || true
        apt-cache policy postgresql-$major | sed -n 's/^ *Candidate: //p'"
}

make_root() {
    command -v mmdebstrap >/dev/null || {
        echo "pg-root: installing mmdebstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            mmdebstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; } ||
            fail "cannot install mmdebstrap"
    }
    uri=$(archive | head -n1)
    [ -n "$uri" ] || fail "no Debian archive in this machine's apt sources"
    work=$(mktemp -d "$roots/.pg$major.XXXXXX")
    setup=$(mktemp -d)
    # sid and experimental: the archive's Release files may be past their Valid-Until
    printf 'Acquire::Check-Valid-Until "false";\n' > "$setup/valid-until"
    # experimental's packages of this major win over sid's; nothing else comes from it
    if [ -n "$extra_suite" ]; then
        printf 'Package: postgresql-%s* libpq5 libpq-dev libpq-oauth\nPin: release a=%s\nPin-Priority: 990\n' \
            "$major" "$extra_suite" > "$setup/pin"
    else
        : > "$setup/pin"
    fi
    sources="deb $uri $suite main"
    [ -z "$extra_suite" ] || sources="$sources
deb $uri $extra_suite main"
    # pip and npm inside verify TLS with the CA certificates this machine added
    echo "pg-root: making the PostgreSQL $major root ($suite${extra_suite:+ + $extra_suite}) in $root"
    list=$(echo "$packages" | tr -s ' \n' ',,' | sed 's/,$//')
    if ! mmdebstrap --variant=minbase --quiet \
        --aptopt="$setup/valid-until" \
        --setup-hook="mkdir -p \"\$1/etc/apt/preferences.d\" && cp $setup/pin \"\$1/etc/apt/preferences.d/pg_oauth\"" \
        --essential-hook="mkdir -p \"\$1/usr/local/share/ca-certificates\" && cp /usr/local/share/ca-certificates/*.crt \"\$1/usr/local/share/ca-certificates/\" 2>/dev/null || true" \
        --customize-hook="chroot \"\$1\" update-ca-certificates >/dev/null 2>&1 || true" \
        --customize-hook="chroot \"\$1\" useradd --system --home-dir /var/lib/pgoauth --create-home --shell /bin/sh pgoauth" \
        --include="$list" "$suite" "$work/root" "$sources" >"$work/mmdebstrap.log" 2>&1; then
        tail -n 30 "$work/mmdebstrap.log" >&2
        rm -rf "$work" "$setup"
        fail "mmdebstrap could not make the PostgreSQL $major root (log above)"
    fi
    rm -rf "$setup"
    version=$(chroot "$work/root" dpkg-query -W -f='${Version}' "postgresql-$major")
    printf 'major=%s\nsuite=%s\nversion=%s\nrecipe=%s\n' "$major" "$suite" "$version" "$recipe" \
        > "$work/root$marker"
    rm -rf "$root"
    mv "$work/root" "$root"
    rm -rf "$work"
    touch "$roots/.pg$major.checked"
    echo "pg-root: PostgreSQL $major $version in $root"
}

# CMD inside the root: a private mount namespace holds the binds, so nothing stays
# mounted on the host when CMD ends, whatever way it ends.
run_inside() {
    [ -f "$root$marker" ] || fail "no PostgreSQL $major root in $root (pg-root.sh $major ensure)"
    # the host's name resolution: hostname -f (the DBA guide's certificate) and DNS
    for f in resolv.conf hosts hostname; do
        cp "/etc/$f" "$root/etc/$f" 2>/dev/null || true
    done
    cwd=$(pwd)
    unshare --mount --propagation private -- /bin/sh -eu -c '
        root=$1; here=$2; cwd=$3; shift 3
        mount --rbind /dev "$root/dev"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --bind /tmp "$root/tmp"
        mkdir -p "$root$here"
        mount --bind "$here" "$root$here"
        if [ "$cwd" != "$here" ] && [ -d "$cwd" ]; then
            case "$cwd" in "$here"/*) ;; *) mkdir -p "$root$cwd"; mount --bind "$cwd" "$root$cwd" ;; esac
        fi
        cd "$root$cwd" 2>/dev/null || cd "$root$here"
        exec chroot "$root" /usr/bin/env -u PIP_FIND_LINKS \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            PG_BIN="$PG_BIN" /bin/sh -c "cd \"$cwd\" 2>/dev/null || cd \"$here\"; exec \"\$@\"" sh "$@"
    ' sh "$root" "$here" "$cwd" "$@"
}

mkdir -p "$roots"
case "$action" in
    ensure)
        checked=$roots/.pg$major.checked
        current=false
        [ "$(sed -n 's/^recipe=//p' "$root$marker" 2>/dev/null)" = "$recipe" ] && current=true
        if $current && [ -n "$(find "$checked" -mmin -60 2>/dev/null)" ]; then
            # the archive was asked within the hour
            echo "pg-root: PostgreSQL $major $(installed_version) in $root"
        elif $current; then
            PG_BIN=/usr/lib/postgresql/$major/bin
            export PG_BIN
            want=$(candidate_version)
            have=$(installed_version)
            touch "$checked"
            if [ -n "$want" ] && [ "$want" != "$have" ]; then
                echo "pg-root: postgresql-$major $have -> $want: the root is made again"
                make_root
            else
                echo "pg-root: PostgreSQL $major $have in $root"
            fi
        else
            make_root
        fi
        ;;
    run)
        [ $# -gt 0 ] || fail "run: no command"
        PG_BIN=/usr/lib/postgresql/$major/bin
        export PG_BIN
        run_inside "$@"
        ;;
    *) fail "unknown action $action (ensure, run)" ;;
esac
