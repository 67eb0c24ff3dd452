# The README's two commands: `make run` (set up + the default experiment with the server's defense: trigger
# inversion and MCL at the end), `make test` (set up + tests).
VENV ?= .venv

.PHONY: setup run test

setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/fl-defense run --config simulations/configs/default.toml --set defense=mcl

test: setup
	$(VENV)/bin/python -m pytest -q
