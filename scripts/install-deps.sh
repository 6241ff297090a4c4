#!/bin/sh
# Everything pg_oauth needs from Debian 12 to build, install, test and demo it.
# Idempotent; run as root.  Skips apt entirely when all packages are present.
set -eu

PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-plpython3-15 postgresql-contrib
libkrb5-dev libssl-dev python3 python3-venv python3-pip make gcc openssl pgbouncer"

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

# Debian starts a default cluster on install; it is not ours, but harmless.
# Our servers run as this unprivileged user (PostgreSQL refuses root).
if ! id pgoauth >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/pgoauth --create-home --shell /bin/sh pgoauth
fi
