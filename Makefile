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

.PHONY: help build wasm-target venv test unit functional lint run demo clean sha256 cli
CLI := target/release/graysplit

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

build: wasm-target ## Build the filter: target/wasm32-wasip1/release/graysplit.wasm
	cargo build --release --target $(WASM_TARGET) --lib
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

functional: build venv ## Functional tests against a real Envoy
	$(PY) -m pytest tests

test: unit functional ## Everything: unit tests, functional tests against real Envoy, config validation

lint: wasm-target ## rustfmt and clippy (wasm and host), warnings are errors
	cargo fmt --check
	cargo clippy --target $(WASM_TARGET) --lib -- -D warnings
	cargo clippy --all-targets --features cli -- -D warnings

run: build venv ## Envoy with the filter and a demo config on 127.0.0.1:10000 (foreground)
	$(PY) scripts/run.py

demo: build venv ## Scripted tour: 1000 users, tester override, live ramp to 50%
	$(PY) scripts/demo.py

clean: ## Remove build output and the venv
	cargo clean
	rm -rf $(VENV) .run
