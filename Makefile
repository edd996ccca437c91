# chatplane — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= data/models/SmolLM2-135M-Instruct
PYTEST_ARGS ?=

.PHONY: install model web test-web run test test-unit proto proto-check clean images podman-up podman-down test-podman kind-up deploy kind-down chart-test bench observe

install: ## Install everything into .venv (idempotent)
	@scripts/bootstrap.sh

model: install ## Build the model folder from the packaged GGUF when it is missing
	@$(PY) -m chatplane.inference.prepare_model $(MODEL_DIR)

web: ## Build the web app (web/ -> web/dist, served by the gateway at /) when its sources changed; npm ci when the lock changed
	@scripts/build_web.sh

test-web: ## The web app's unit tests (Vitest)
	@scripts/build_web.sh --deps
	@cd web && npm test --silent

run: model web ## Start the whole platform on 127.0.0.1 (Ctrl-C stops it)
	@$(PY) -m chatplane.dev.stack

test: model web test-web ## The whole suite: web unit tests, then unit, integration (real vLLM, PostgreSQL), end-to-end and browser tests
	@$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## Only the tests that need no model engine
	@$(PY) -m pytest -m "not engine" $(PYTEST_ARGS)

bench: model web ## The platform's own overhead (synthetic engine vs a bare server) and the real engine; JSON in bench-results/
	@$(PY) benchmarks/bench.py $(BENCH_ARGS)

observe: install ## A real Prometheus (127.0.0.1:9090) scraping `make run` with the chart's alert rules; Ctrl-C stops it
	@$(PY) -m chatplane.dev.observe $(OBSERVE_ARGS)

proto: install ## Regenerate the gRPC stubs and their type stubs (mypy-protobuf) in libs/protos from proto/
	@$(PY) scripts/gen_proto.py

# --- Kubernetes (deploy/): images, a local kind cluster and the Helm chart ---
IMAGE_TAG ?= 0.1.0
IMAGE_REGISTRY ?=
IMAGE_PREFIX := $(if $(IMAGE_REGISTRY),$(IMAGE_REGISTRY)/,)chatplane
IMAGES ?= auth conversation gateway inference-cpu

images: web ## Build the service images with podman or docker, one tag (IMAGES="... inference-gpu" adds the GPU variant)
	@deploy/docker/build.sh $(IMAGE_PREFIX) $(IMAGE_TAG) $(IMAGES)

podman-up: install images ## Run the chart's workloads as podman pods from the images (pre-install hooks, tiers, probes); prints the gateway's URL
	@$(PY) deploy/podman/podman_up.py up --set-image-tag $(IMAGE_TAG) $(PODMAN_UP_ARGS)

podman-down: install ## Stop and remove every pod, volume and the network that podman-up started
	@$(PY) deploy/podman/podman_up.py down

test-podman: install images ## The images, then the platform run from them by podman-up and tested through the public API
	@$(PY) -m pytest deploy/podman/tests $(PYTEST_ARGS)

kind-up: ## Create the kind cluster with ingress-nginx (WITH_MONITORING=1, WITH_KEDA=1 add those)
	@deploy/kind/kind-up.sh

deploy: ## Build and load the images into kind, helm upgrade --install with values-kind.yaml, print the URL
	@IMAGE_TAG=$(IMAGE_TAG) deploy/kind/deploy.sh

kind-down: ## Delete the kind cluster
	@deploy/kind/kind-down.sh

chart-test: install ## Lint, render, validate and policy-test the Helm chart, Dockerfiles and admin command
	@$(PY) -m pytest deploy/tests $(PYTEST_ARGS)

clean:
	rm -rf .pytest_cache data/logs
