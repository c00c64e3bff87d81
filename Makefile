# Set-up is two commands (see README): `make setup` then `make test`; `make test` runs setup
# itself, so on a fresh machine `make test` alone is enough.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup models test bench accuracy clean

setup: $(STAMP) models

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[build,test]"
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/python -m models.build

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pytest bench --benchmark-enable -q

clean:
	rm -rf $(VENV) models/build
