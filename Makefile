# Two commands do all the set-up on a fresh machine:
#   make demo   installs pondstream into .venv, runs examples/hourly_sales.sql, prints the rollup
#   make test   installs the test extras and runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE ?= ./pondstream-data

$(BIN)/pondstream: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,broker]"
	touch $@

install: $(BIN)/pondstream

demo: install
	$(BIN)/pondstream run examples/hourly_sales.sql --state-dir $(STATE)
	$(BIN)/pondstream query "SELECT * FROM hourly_sales WHERE hour >= TIMESTAMP '2026-01-01 03:00:00' ORDER BY total DESC LIMIT 10" --state-dir $(STATE)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/bench_spine.py

.PHONY: install demo test lint bench

bench-kafka: install
	$(BIN)/python bench/bench_kafka.py

# Quix Streams pins an older confluent-kafka, so it gets a venv of its own for the comparison.
bench-quix-env:
	$(PY) -m venv bench/.venv-quix
	bench/.venv-quix/bin/pip install -q quixstreams==3.28.1

.PHONY: bench-kafka bench-quix-env
