# The README's two commands: `make run` (set up + default experiment), `make test` (set up + tests).
VENV ?= .venv

.PHONY: setup run test

setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/fl-defense run --config simulations/configs/default.toml

test: setup
	$(VENV)/bin/python -m pytest -q
