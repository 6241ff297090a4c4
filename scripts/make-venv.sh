#!/bin/sh
# The test/demo virtualenv, built from the interpreter PL/Python embeds so that
# pyhook runs under the same Python, and the same library versions, in tests as in
# the server; with the client and the development tools beside pyhook.
#   make-venv.sh [DIR]   DIR relative to the checkout, .venv unless given
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/${1:-.venv}"
stamp="$venv/.pg_oauth-requirements"
# made again when the requirements change, or a package's own file (pip writes what it
# registers, pg-oauth's subcommands, at install time)
want=$(cat "$here/requirements.txt" "$here/requirements-dev.txt" "$here/constraints.txt" \
    "$here/setup.py" "$here/client/pyproject.toml" "$here/devtools/pyproject.toml" \
    | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    /usr/bin/python3 -m venv "$venv"
    # the versions make install puts on the server (constraints.txt), test tools as ranges
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" \
        -r "$here/requirements-dev.txt" -c "$here/constraints.txt"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$here"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$here/client"
    # the development tools (devtools/: the dev issuer, pg-oauth mint, ...), which no
    # server gets
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$here/devtools"
    echo "$want" > "$stamp"
fi
