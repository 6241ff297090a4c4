# pg_oauth: build (PGXS), install, test, demo, bench.
#
#   make deps            the Debian packages a server needs to build and install it (as root)
#   make                 build the extension
#   make install         install the extension, pyhook and its Python dependencies, and the
#                        pg-oauth command (explain, check, doctor) in /usr/local/bin
#   make deb             the same as a Debian package, its Python dependencies inside:
#                        dist/postgresql-<major>-pg-oauth_<version>_amd64.deb (scripts/build-deb.sh)
#   make test-deps       what tests, demo and benchmarks need on top: pgbouncer, pgpool2,
#                        python3-venv, the unprivileged pgoauth OS user that runs their
#                        servers, the venv (with the development tools of devtools/, which
#                        make install leaves out)
#   make test            everything the test suite needs (as root on Debian 12), then the suite
#   make unit-test       the tests that need no server; as any user (tests/README.md)
#   make demo            a throwaway cluster, a dev issuer, one login that works and one refused
#   make bench           login benchmarks (bench/)
#   make run CMD='...'   CMD as root where the server of PG runs, PG_BIN naming its programs

# PG is the PostgreSQL major. The machine's own (Debian 12: 15; Debian 13: 17) comes from its
# own apt; any other (17, 18, 19 on Debian 12) from Debian's binary packages of that major in
# a Debian root (scripts/pg-root.sh), made once, cached outside the checkout and made again
# when the package's version changes. Every target above, given PG=<major>, runs in that
# root with the checkout and /tmp at the same paths. PG_CONFIG=... alone works as PGXS users
# expect: that server, here.
NATIVE_PG := $(shell sh scripts/pg-root.sh native)
PG ?= $(or $(NATIVE_PG),15)
ifeq ($(origin PG_CONFIG),undefined)
ifeq ($(PG),$(NATIVE_PG))
PG_CONFIG := $(firstword $(wildcard /usr/lib/postgresql/$(PG)/bin/pg_config) pg_config)
else
IN_ROOT := $(PG)
PG_CONFIG := /nonexistent/pg_config
endif
endif

# The test virtualenv, one per machine's Python: .venv here, .venv-pg<major> in a root
# (the checkout is the same directory inside and out).
VENV ?= $(if $(wildcard /etc/pg_oauth-root),.venv-pg$(NATIVE_PG),.venv)

# The interpreter PL/Python embeds (Debian: /usr/bin/python3); pyhook and its
# dependencies must be importable by it.
SERVER_PYTHON ?= /usr/bin/python3
# Where `make install` puts the pg-oauth command for the server's administrators.
TOOLS_BINDIR ?= /usr/local/bin

MODULE_big = pg_oauth
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard pg_oauth_ext/*.c)))

MODULEDIR = extension
# The install script of default_version is assembled from one file per concern in sql/src/
# (numbered for order). Released versions are frozen in sql/pg_oauth--X.sql and upgrade
# scripts written by hand in sql/pg_oauth--X--Y.sql; all of them are installed. A frozen
# script of default_version must equal the assembly (docs/upgrades.md).
EXT_VERSION := $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" sql/pg_oauth.control)
DATA = sql/pg_oauth.control $(filter-out sql/pg_oauth--$(EXT_VERSION).sql,$(wildcard sql/pg_oauth--*.sql))
DATA_built = build/sql/pg_oauth--$(EXT_VERSION).sql
EXTRA_CLEAN = build/sql

PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare

.PHONY: install-python install-tools uninstall-python deb deps test-deps node-deps venv test unit-test unit-venv demo bench lint run root

# PGXS is only there once postgresql-server-dev-$(PG) is installed; `make test` and
# `make demo` install it first and then call make again. A pg_config alone (Debian's
# /usr/bin/pg_config comes with the client packages) is not enough: pgxs.mk must exist.
PGXS_MK := $(if $(shell command -v $(PG_CONFIG) 2>/dev/null),$(shell $(PG_CONFIG) --pgxs 2>/dev/null))
ifneq ($(wildcard $(PGXS_MK)),)
PYTHON_TARGET := $(shell $(PG_CONFIG) --sharedir)/pg_oauth/python
PG_CPPFLAGS = -DPG_OAUTH_DEFAULT_PYTHON_PATH='"$(PYTHON_TARGET)"'
# `make clean install TRACE=1`: every token login logs the time of each of its
# phases (bench/trace_profile.py); for profiling only, never for production.
ifdef TRACE
PG_CPPFLAGS += -DPG_OAUTH_TRACE
endif
# No JIT bitcode: it needs clang, and the hot path is not SQL.
override with_llvm = no
PGXS := $(PGXS_MK)
include $(PGXS)

install: install-python install-tools
uninstall: uninstall-python

# every object sees the shared-memory layout, and is built for one server: switching
# PG_CONFIG rebuilds them all
PG_STAMP := .built-for-pg
$(shell v="$$($(PG_CONFIG) --version) $$($(PG_CONFIG) --includedir-server)"; \
	[ "$$(cat $(PG_STAMP) 2>/dev/null)" = "$$v" ] || echo "$$v" > $(PG_STAMP))
$(OBJS): pg_oauth_ext/pg_oauth.h $(PG_STAMP)
EXTRA_CLEAN += $(PG_STAMP)

build/sql/pg_oauth--$(EXT_VERSION).sql: $(sort $(wildcard sql/src/*.sql)) sql/pg_oauth.control
	mkdir -p build/sql
	cat $(filter sql/src/%,$^) > $@.tmp
	@if [ -f sql/pg_oauth--$(EXT_VERSION).sql ] && ! cmp -s $@.tmp sql/pg_oauth--$(EXT_VERSION).sql; then \
		echo "sql/src/ changed, but $(EXT_VERSION) is released (sql/pg_oauth--$(EXT_VERSION).sql is frozen):" \
			"move default_version on and write the upgrade script (docs/upgrades.md)" >&2; \
		rm -f $@.tmp; exit 1; fi
	mv $@.tmp $@

# pyhook and its dependencies, at the exact versions of constraints.txt, go into a
# directory of their own, put first on sys.path by the workers (pg_oauth.python_path)
# and by the pg-oauth command, so the system Python is untouched. pip installs pyhook
# itself (setup.py), so that its metadata names the subcommands it brings to pg-oauth; from
# a fresh copy, as setuptools would pack whatever an earlier build left in build/lib. The
# command is the client's pg_oauth_command (the standard library only), without the client.
PYHOOK_SOURCE = build/pyhook-source
EXTRA_CLEAN += $(PYHOOK_SOURCE)
install-python:
	rm -rf '$(DESTDIR)$(PYTHON_TARGET).new' $(PYHOOK_SOURCE)
	mkdir -p $(PYHOOK_SOURCE)
	cp -r setup.py LICENSE pyhook $(PYHOOK_SOURCE)/
	$(SERVER_PYTHON) -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
		--root-user-action=ignore --target '$(DESTDIR)$(PYTHON_TARGET).new' \
		-r requirements.txt -c constraints.txt ./$(PYHOOK_SOURCE)
	cp client/pg_oauth_command.py '$(DESTDIR)$(PYTHON_TARGET).new/'
	find '$(DESTDIR)$(PYTHON_TARGET).new' -name __pycache__ -prune -exec rm -rf {} +
	$(SERVER_PYTHON) -m compileall -q '$(DESTDIR)$(PYTHON_TARGET).new' >/dev/null || true
	rm -rf '$(DESTDIR)$(PYTHON_TARGET)'
	mv '$(DESTDIR)$(PYTHON_TARGET).new' '$(DESTDIR)$(PYTHON_TARGET)'
	chmod -R a+rX '$(DESTDIR)$(PYTHON_TARGET)'

# The operator commands on PATH: the server's Python with that directory first.
install-tools:
	mkdir -p '$(DESTDIR)$(TOOLS_BINDIR)'
	sed -e 's|@SERVER_PYTHON@|$(SERVER_PYTHON)|' -e 's|@PYTHON_TARGET@|$(PYTHON_TARGET)|' \
		scripts/pg-oauth.in > '$(DESTDIR)$(TOOLS_BINDIR)/pg-oauth'
	chmod 755 '$(DESTDIR)$(TOOLS_BINDIR)/pg-oauth'

uninstall-python:
	rm -rf '$(DESTDIR)$(PYTHON_TARGET)' '$(DESTDIR)$(TOOLS_BINDIR)/pg-oauth'
endif

# What `make install` installs, for the PostgreSQL of PG_CONFIG, as a .deb in dist/: the
# wheels are fetched here, so the servers that install it need no pip and no network.
ifndef IN_ROOT
deb:
	PG_CONFIG='$(PG_CONFIG)' SERVER_PYTHON='$(SERVER_PYTHON)' MAKE='$(MAKE)' sh scripts/build-deb.sh

# What a server needs to build and install pg_oauth (Debian packages only).
deps:
	sh scripts/install-deps.sh $(PG)

# On top: the test tools, the unprivileged OS user for throwaway servers, the venv.
test-deps:
	sh scripts/install-deps.sh $(PG) --test
	sh scripts/make-venv.sh $(VENV)

venv: test-deps
endif

# npm packages of the client tests (oidc-provider, node-postgres), from the lockfile; on
# the host, also for a root (which has node but no npm)
NODE_DEPS = tests/client/node/node_modules/.package-lock.json
node-deps: $(NODE_DEPS)
$(NODE_DEPS): tests/client/node/package-lock.json tests/client/node/package.json
	npm ci --prefix tests/client/node --no-audit --no-fund --loglevel=error

# Unit tests need neither PostgreSQL nor root: as root the test venv of PG (test-deps),
# otherwise this machine's own venv, made without apt (python3-venv must be there).
IS_ROOT := $(filter 0,$(shell id -u))
ifeq ($(and $(IN_ROOT),$(IS_ROOT)),)
unit-test: $(if $(IS_ROOT),test-deps,unit-venv)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit
endif

unit-venv:
	sh scripts/make-venv.sh $(VENV)

ifndef IN_ROOT

# the whole suite against PG; the servers the tests start are that major's (PG_BIN)
test: test-deps node-deps
	$(MAKE) all
	$(MAKE) install
	PG_BIN="$$($(PG_CONFIG) --bindir)" $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests

demo: test-deps
	$(MAKE) all
	$(MAKE) install
	PG_BIN="$$($(PG_CONFIG) --bindir)" $(VENV)/bin/python scripts/demo.py

bench: test-deps node-deps
	$(MAKE) all
	$(MAKE) install
	PG_BIN="$$($(PG_CONFIG) --bindir)" $(VENV)/bin/python bench/run.py

lint: test-deps
	$(VENV)/bin/ruff check pyhook client devtools tests bench scripts

# CMD as root with PG_BIN naming this server's programs
run:
	PG_BIN="$$($(PG_CONFIG) --bindir)" sh -c '$(CMD)'
else
# PG is not this machine's own major: the same target inside its root (the checkout and
# /tmp at the same paths), after the npm packages are fetched here
test demo bench install deb deps test-deps venv $(if $(IS_ROOT),unit-test) lint all clean uninstall: root
	sh scripts/pg-root.sh $(PG) run $(MAKE) --no-print-directory PG=$(PG) $@

test demo bench: node-deps

run: root
	sh scripts/pg-root.sh $(PG) run sh -c '$(CMD)'

root:
	sh scripts/pg-root.sh $(PG) ensure
endif
