# refit — build, test and demo. `make demo` and `make test` install and start what they need.
SHELL := bash
.DEFAULT_GOAL := help

DEPS_DIR ?= $(HOME)/.cache/refit
KAFKA_PORT ?= 19092
export REFIT_KAFKA_PORT := $(KAFKA_PORT)
export KAFKA_BROKERS ?= 127.0.0.1:$(KAFKA_PORT)
export REDIS_URL ?= redis://127.0.0.1:6379
export REFIT_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export REFIT_PYTHON ?= $(DEPS_DIR)/venv/bin/python
export REFIT_BIKESHARE_CSV ?= $(DEPS_DIR)/bikeshare/bike-rental-dataset.csv
DEMO_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/refit_demo
DEMO_SECONDS ?= 45

.PHONY: help deps services build release quality storage explain test test-rust test-k8s test-alerts test-api lint demo bench clean-test-dbs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: ## install build/test dependencies (Debian packages, libxgboost, tansu, Python oracle)
	@scripts/install-deps.sh

services: deps ## start PostgreSQL, Redis and the Kafka-compatible broker (idempotent); prints the env
	@scripts/services.sh

build: deps ## debug build
	cargo build --locked

release: deps ## release build (what the container image ships)
	cargo build --release --locked

lint: deps ## rustfmt and clippy, warnings are errors
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets --features fault-injection -- -D warnings

test: services lint test-rust test-k8s test-alerts test-api ## the whole suite

test-rust: services clean-test-dbs
	cargo test --locked --workspace --features fault-injection --no-fail-fast -- --test-threads=4

chaos: services ## long soak: replicas killed, outages, crash loop, 10,000 actuals (RELIABILITY.md)
	cargo test --locked --features fault-injection --test reliability chaos:: -- --ignored --test-threads=1 --nocapture

test-k8s: build ## Kubernetes manifests, Helm chart and Dockerfile checks
	REFIT_BIN=$(CURDIR)/target/debug/refit scripts/test-k8s.sh

test-alerts: deps ## alert rules: promtool check config and rules, and the rules' unit tests
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/refit-alerts.yaml helm/refit/rules/refit-alerts.yaml
	promtool test rules deploy/prometheus/refit-alerts.test.yaml

test-api: services build ## schemathesis against a live `refit run` and docs/openapi.json
	REFIT_BIN=$(CURDIR)/target/debug/refit scripts/test-api.sh

clean-test-dbs: ## drop databases left by earlier test runs
	@psql "$(REFIT_TEST_DATABASE_URL)" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'refit\_test\_%'" \
	  | while read -r db; do psql "$(REFIT_TEST_DATABASE_URL)" -qc "DROP DATABASE IF EXISTS \"$$db\" WITH (FORCE)"; done

demo: services build ## run the service on generated rental data for DEMO_SECONDS seconds
	DATABASE_URL=$(DEMO_DATABASE_URL) target/debug/refit demo --seconds $(DEMO_SECONDS)

# The quality benchmark replays the real bike stream through `refit run` (QUALITY.md).
quality: services release ## prequential model quality on real rental data, side by side with references (QUALITY_QUICK=1: 100 batches); QUALITY.md
	@py="$$(scripts/quality-tools.sh)" && \
	  "$$py" scripts/quality.py --refit target/release/refit --csv "$(REFIT_BIKESHARE_CSV)" --out target/quality/results.json && \
	  "$$py" scripts/quality-report.py target/quality/results.json QUALITY.md

# The storage benchmark runs the release binary: refit's bytes after 100/1,000 retrains, 10,000 users.
storage: services release ## refit's database bytes as retrains and users grow (STORAGE_USERS=10000); BENCHMARKS.md
	@py="$$(scripts/quality-tools.sh)" && \
	  "$$py" scripts/storage.py --refit target/release/refit --users $${STORAGE_USERS:-10000} --md BENCHMARKS.md

# The suite runs the same check at 200,000 rows (tests/integration/explain.rs).
explain: services ## EXPLAIN every per-retrain and per-sweep statement at 5 M rows (EXPLAIN_ROWS=5000000), printing the plans
	REFIT_EXPLAIN_ROWS=$${EXPLAIN_ROWS:-5000000} cargo test --locked --features fault-injection --test integration explain:: -- --nocapture

# pgbench against a database of its own: single-row upstream inserts without refit, with refit's
# column and index, and with refit running and ingesting.
upstream-cost: services release ## what refit costs the upstream's insert throughput (pgbench); BENCHMARKS.md
	@py="$$(scripts/quality-tools.sh)" && \
	  "$$py" scripts/upstream-cost.py --refit target/release/refit --md BENCHMARKS.md

# The benchmark driver (benches/pipeline) runs the release refit binary as a child process and the
# Python reference (scripts/bench-python.py) from the venv scripts/bench-tools.sh makes.
bench: services ## the performance targets, side by side with Python, and upstream-cost (BENCH_QUICK=1: smaller sizes); BENCHMARKS.md
	scripts/pg-statements.sh
	BENCH_PYTHON="$$(scripts/bench-tools.sh)" MALLOC_ARENA_MAX=2 cargo bench --locked --bench pipeline
	$(MAKE) upstream-cost
