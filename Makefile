# The README's two commands: `make run` (set up + the default experiment with the server's continuous defense:
# trigger inversion on the round's minority cluster, then every client screened with the trigger, MCL when the
# aggregate needs it), `make test` (set up + tests).
VENV ?= .venv

.PHONY: setup run test

setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/fl-defense run --config simulations/configs/default.toml --set defense=mcl \
		--set defense-schedule=continuous

test: setup
	$(VENV)/bin/python -m pytest -q
