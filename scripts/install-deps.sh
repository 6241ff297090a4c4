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
# Programs of daemons the tests run themselves, on loopback (monitoring/): Debian's
# prometheus-postgres-exporter, and promtool for the alert rules — a package of its own
# from Debian 13 on, inside prometheus before (Debian 12); chosen once apt's lists are
# fresh, below.
DAEMON_PACKAGES=""
need_promtool=false
if $test; then
    DAEMON_PACKAGES="prometheus-postgres-exporter"
    command -v promtool >/dev/null 2>&1 || need_promtool=true
fi
# psql's OAuth device flow (OAUTHBEARER tests) is a library of its own from 18 on
if [ "$major" -ge 18 ]; then
    TEST_PACKAGES="$TEST_PACKAGES libpq-oauth"
fi
if $test; then
    PACKAGES="$PACKAGES $TEST_PACKAGES"
fi

not_installed() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf ' %s' "$p"
    done
}
# shellcheck disable=SC2086
missing=$(not_installed $PACKAGES)
# shellcheck disable=SC2086
missing_daemons=$(not_installed $DAEMON_PACKAGES)
export DEBIAN_FRONTEND=noninteractive
if [ -n "$missing$missing_daemons" ] || $need_promtool; then
    apt-get update -qq
fi
if $need_promtool; then
    if apt-cache show promtool >/dev/null 2>&1; then
        missing_daemons="$missing_daemons promtool"
    else
        missing_daemons="$missing_daemons prometheus"
    fi
fi
if [ -n "$missing" ]; then
    echo "pg_oauth: installing$missing"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Their packages would start the system's own instance (the exporter on port 9187 of every
# interface, Prometheus on 9090); in a root that runs on the host's network and outlives
# the command. invoke-rc.d and deb-systemd-invoke both ask policy-rc.d first: one that
# refuses every start is put in place for this install only (unless one is there, as in
# containers), and the services are left disabled at boot.
if [ -n "$missing_daemons" ]; then
    echo "pg_oauth: installing$missing_daemons (their services not started)"
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# pg_oauth install-deps.sh: no service starts during this install\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=true
        trap 'rm -f "$policy"' EXIT
    fi
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing_daemons >/dev/null
    if $own_policy; then
        rm -f "$policy"
        trap - EXIT
    fi
    for service in prometheus-postgres-exporter prometheus; do
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable --quiet "$service" 2>/dev/null || true
        fi
        if [ -e "/etc/init.d/$service" ] && command -v update-rc.d >/dev/null 2>&1; then
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
fi

# Tests, demo and benchmarks run throwaway servers as this unprivileged user
# (PostgreSQL refuses root); a production server has no use for it.
if $test && ! id pgoauth >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/pgoauth --create-home --shell /bin/sh pgoauth
fi
