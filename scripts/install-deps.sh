#!/bin/sh
# What pg_oauth needs from Debian 12, as root; idempotent, skips apt when all is there.
#   install-deps.sh          a server: build and install (make deps)
#   install-deps.sh --test   also tests, demo and benchmarks (make test-deps)
set -eu

# PGXS headers; libpq-be.h includes gssapi.h (libkrb5-dev); the validator's PL/Python;
# pip for make install; make-ssl-cert for the DBA guide's certificate
PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-plpython3-15 libkrb5-dev libssl-dev
gcc make python3 python3-pip ssl-cert"
# the test virtualenv, the pooler the benchmarks measure against, dpkg-shlibdeps for make deb
TEST_PACKAGES="python3-venv pgbouncer postgresql-contrib dpkg-dev"

test=false
case "${1:-}" in
    --test) test=true ;;
    "") ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac
if $test; then
    PACKAGES="$PACKAGES $TEST_PACKAGES"
fi

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "pg_oauth: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Tests, demo and benchmarks run throwaway servers as this unprivileged user
# (PostgreSQL refuses root); a production server has no use for it.
if $test && ! id pgoauth >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/pgoauth --create-home --shell /bin/sh pgoauth
fi
