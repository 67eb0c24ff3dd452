# The README's two commands: `make run` (set up + the default experiment with the server's continuous defense:
# trigger inversion on the round's minority cluster, then every client screened with the trigger, MCL when the
# aggregate needs it), `make test` (set up + tests).
VENV ?= .venv

.PHONY: setup run test benchmarks benchmarks-quick

setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/fl-defense run --config simulations/configs/default.toml --set defense=mcl \
		--set defense-schedule=continuous

test: setup
	$(VENV)/bin/python -m pytest -q

# Every marked block of benchmarks/README.md by its script (most of a day here; cached runs resume), or in about
# 30 minutes the fast ones rerun and the slow ones re-rendered from their cached runs (benchmarks/all.py).
benchmarks: setup
	$(VENV)/bin/python -m benchmarks.all

benchmarks-quick: setup
	$(VENV)/bin/python -m benchmarks.all --quick
