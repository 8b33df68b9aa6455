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
## Two pytest-xdist processes, a test file each at a time: most tests wait on servers, workers and
## Chromium, so two overlap well on two cores. A fixed 2 rather than -n auto: on a 2-core CI box
## both are 2, and on a bigger machine auto would start a PostgreSQL, a Redis and Celery workers
## per core. TEST_WORKERS=0 runs the suite in this one process, as plain `pytest tests` does.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
	bash scripts/wheel_smoke.sh

## Benchmarks: prints ratios against baselines measured in the same run.
bench: setup
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
