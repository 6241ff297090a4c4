#!/bin/sh
# What pg_oauth needs from Debian (12, or 13, or a root of scripts/pg-root.sh), as root;
# idempotent, skips apt when all is there.
#   install-deps.sh MAJOR          a server: build and install (make deps)
#   install-deps.sh MAJOR --test   also tests, demo and benchmarks (make test-deps)
set -eu

major=${1:?usage: $0 MAJOR [--test]}
case "$major" in
    *[!0-9]*) echo "usage: $0 MAJOR [--test]" >&2; exit 2 ;;
esac
test=false
case "${2:-}" in
    --test) test=true ;;
    "") ;;
    *) echo "usage: $0 MAJOR [--test]" >&2; exit 2 ;;
esac

# PGXS headers; libpq-be.h includes gssapi.h (libkrb5-dev); the validator's PL/Python;
# pip for make install; make-ssl-cert for the DBA guide's certificate. The contrib modules
# the tests load (auto_explain, test_decoding) are in postgresql-MAJOR itself.
PACKAGES="postgresql-$major postgresql-server-dev-$major postgresql-plpython3-$major
postgresql-client-$major libkrb5-dev libssl-dev gcc make python3 python3-pip ssl-cert"
# the test virtualenv, the poolers the tests and benchmarks put in front of a cluster
# (tests/poolers.py), dpkg-shlibdeps for make deb, a JDK and pgjdbc for the JDBC plugin
# (client/java)
TEST_PACKAGES="python3-venv pgbouncer pgpool2 dpkg-dev default-jdk-headless libpostgresql-jdbc-java"
# psql's OAuth device flow (OAUTHBEARER tests) is a library of its own from 18 on
if [ "$major" -ge 18 ]; then
    TEST_PACKAGES="$TEST_PACKAGES libpq-oauth"
fi
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
