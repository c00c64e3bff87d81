# Set-up is two commands (see README): `make setup` then `make test`; `make test` runs setup
# itself, so on a fresh machine `make test` alone is enough.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PROTOS := $(wildcard proto/tambua/v1/*.proto)

.PHONY: setup models proto browser promtool run test bench clean

setup: $(STAMP) models proto browser promtool

# The adjudication pages' tests drive Debian's chromium through Playwright (whose own
# browser download cannot run here): installed from apt when missing.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The alert rules (docker/alerts.yml) are tested by Debian's promtool (package prometheus;
# its server is not started): installed from apt when missing.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[build,test,cluster]"
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/python -m models.build

# Stubs are generated, never edited or committed: tambua/v1/*_pb2*.py
proto: $(STAMP) tambua/v1/__init__.py

tambua/v1/__init__.py: $(PROTOS)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch $@

# Options go in ARGS: make run ARGS="--port 50061 --data-dir demo-data"
run: setup
	$(BIN)/tambua serve --insecure $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pytest bench --benchmark-enable -q

clean:
	rm -rf $(VENV) models/build tambua/v1
