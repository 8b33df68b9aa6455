# The README's commands. Each one does its own set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench lint

setup:
	bash scripts/setup.sh

## The main job: throw-away PostgreSQL + Redis, a worker, the gateway and a workload.
demo: setup
	$(VENV)/bin/tracker demo

## The whole test suite against real servers, workers and a real browser, then the installed
## shape: the wheel in a fresh virtualenv with no extras, run from outside the checkout.
test: setup
	$(PY) -m pytest -q tests
	bash scripts/wheel_smoke.sh

## Benchmarks: prints ratios against baselines measured in the same run.
bench: setup
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
