# pg_oauth: build (PGXS), install, test, demo, bench.
#
#   make                 build the extension
#   make install         install the extension, pyhook and its Python dependencies
#   make test            everything the test suite needs (as root on Debian 12), then the suite
#   make demo            a throwaway cluster, a dev issuer, one login that works and one refused
#   make bench           login benchmarks (bench/)

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)

# The interpreter PL/Python embeds (Debian: /usr/bin/python3); pyhook and its
# dependencies must be importable by it.
SERVER_PYTHON ?= /usr/bin/python3

MODULE_big = pg_oauth
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard pg_oauth_ext/*.c)))

MODULEDIR = extension
# The install script is assembled from one file per concern in sql/src/
# (numbered for order); upgrade scripts sit in sql/ as they are.
DATA = sql/pg_oauth.control $(filter-out sql/pg_oauth--1.0.sql,$(wildcard sql/pg_oauth--*.sql))
DATA_built = sql/pg_oauth--1.0.sql
EXTRA_CLEAN = sql/pg_oauth--1.0.sql

PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare

.PHONY: install-python deps venv test unit-test integration-test demo bench lint

# PGXS is only there once postgresql-server-dev-15 is installed; `make test` and
# `make demo` install it first and then call make again.
ifneq ($(shell command -v $(PG_CONFIG) 2>/dev/null),)
PYTHON_TARGET := $(shell $(PG_CONFIG) --sharedir)/pg_oauth/python
PG_CPPFLAGS = -DPG_OAUTH_DEFAULT_PYTHON_PATH='"$(PYTHON_TARGET)"'
# `make clean install TRACE=1`: every token login logs the time of each of its
# phases (bench/trace_profile.py); for profiling only, never for production.
ifdef TRACE
PG_CPPFLAGS += -DPG_OAUTH_TRACE
endif
# No JIT bitcode: it needs clang, and the hot path is not SQL.
override with_llvm = no
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

install: install-python

# every object sees the shared-memory layout
$(OBJS): pg_oauth_ext/pg_oauth.h

sql/pg_oauth--1.0.sql: $(sort $(wildcard sql/src/*.sql))
	cat $^ > $@

# pyhook and pinned dependencies go into a directory of their own, put first on
# sys.path by the workers (pg_oauth.python_path), so the system Python is untouched.
install-python:
	rm -rf '$(DESTDIR)$(PYTHON_TARGET).new'
	$(SERVER_PYTHON) -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
		--target '$(DESTDIR)$(PYTHON_TARGET).new' -r requirements.txt
	cp -r pyhook '$(DESTDIR)$(PYTHON_TARGET).new/'
	find '$(DESTDIR)$(PYTHON_TARGET).new' -name __pycache__ -prune -exec rm -rf {} +
	$(SERVER_PYTHON) -m compileall -q '$(DESTDIR)$(PYTHON_TARGET).new' >/dev/null || true
	rm -rf '$(DESTDIR)$(PYTHON_TARGET)'
	mv '$(DESTDIR)$(PYTHON_TARGET).new' '$(DESTDIR)$(PYTHON_TARGET)'
	chmod -R a+rX '$(DESTDIR)$(PYTHON_TARGET)'
endif

# Debian packages, the unprivileged OS user for servers, the test virtualenv.
deps:
	sh scripts/install-deps.sh

venv: deps
	sh scripts/make-venv.sh

unit-test: venv
	.venv/bin/python -m pytest -q tests/unit

test: venv
	$(MAKE) all
	$(MAKE) install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

demo: venv
	$(MAKE) all
	$(MAKE) install
	.venv/bin/python scripts/demo.py

bench: venv
	$(MAKE) all
	$(MAKE) install
	.venv/bin/python bench/run.py

lint: venv
	.venv/bin/ruff check pyhook tests bench scripts
