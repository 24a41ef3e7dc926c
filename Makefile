# make run         the whole cluster in the foreground (Ctrl-C stops it); data in .data/
# make test        what CI runs: format, lints, build, every test
# make bench       the benchmark (release build, its own cluster, ~8 min): pgbench and XA references
#                  and every scenario; table, JSON, SVG chart and profile in target/bench/<time>/
#                  (BENCH_SECONDS=20; installs perf for the profile)
# make sim         the deterministic simulation, 1,000 seeds (SIM_SEEDS=n, SIM_FIRST=s)
# make move-under-load  moves a partition of 10,000 accounts while loadgen runs (release build)
# make move-bench  moves a partition holding each of MOVE_SIZES events (default 10,000, 100,000,
#                  1,000,000) under uniform load, each on a cluster of its own (release build);
#                  copy, freeze, latencies, throughput, memory, audit side by side; table and JSON
#                  in target/move-bench/<time>/ (MOVE_ARGS for walletctl, `move-bench --help`)
# make clean-data  wipes .data/ (the next make run starts from empty databases)
# make compose-up   the cluster in containers (docker-compose.yml), with Prometheus; waits until
#                   ready (local base image from Debian's packages and a release build on the host;
#                   WALLET_BUILD=public builds from the public rust/debian images instead)
# make compose-down stops it and deletes its volumes
# make k8s-check    validates deploy/k8s/ against the Kubernetes schemas and checks it agrees with
#                   docker-compose.yml and config/*.toml (part of make test)
# make fuzz        cargo fuzz on the parsers (amount, currency, ids, feed cursor, internal
#                  messages), FUZZ_SECONDS each (default 60), from the committed corpus in
#                  fuzz/corpus/; then schemathesis against /openapi.json with
#                  SCHEMATHESIS_EXAMPLES cases per operation (default 300)
# make chaos       the chaos suite, release build, CHAOS_SECONDS of faults (default 600);
#                  history, report and logs in target/chaos/<date>/
# make chaos-containers  the same suite with each node its own container (docker-compose.yml as
#                  project wallet-chaos on ports 18080-19100, beside make compose-up): faults are
#                  docker kill, docker pause and docker network disconnect; CHAOS_SECONDS, CHAOS_ARGS
#                  as above, CHAOS_PROFILE=debug for the debug build; compose down after.
#                  Not part of make test.

CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# Extra arguments for `devcluster run`, e.g. make run RUN_ARGS='--coordinator-port 9090'
RUN_ARGS ?=
SIM_SEEDS ?= 1000
SIM_FIRST ?= 1
# make chaos: seconds of clients and faults, and extra arguments for `chaos`
# (e.g. CHAOS_ARGS='--seed 7 --clients 32'; `chaos --help` lists them)
CHAOS_SECONDS ?= 600
CHAOS_ARGS ?=
# make chaos-containers: the build the images get (release or debug), and the
# compose project it runs as (its own name and ports).
CHAOS_PROFILE ?= release
CHAOS_COMPOSE_ENV = COMPOSE_PROJECT_NAME=wallet-chaos WALLET_IMAGE=wallet:chaos \
	WALLET_COORDINATOR_1_PORT=18080 WALLET_COORDINATOR_2_PORT=18081 WALLET_ETCD_PORT=12379 \
	WALLET_POSTGRES_1_PORT=15433 WALLET_POSTGRES_2_PORT=15434 WALLET_POSTGRES_3_PORT=15435 \
	WALLET_PROJECTOR_PORT=19100 WALLET_PROMETHEUS_PORT=19090
FUZZ_SECONDS ?= 60
SCHEMATHESIS_EXAMPLES ?= 300
FUZZ_TARGETS = amount ids cursor internal_messages
# make move-bench: events in the moved partition, one run per size
MOVE_SIZES ?= 10000 100000 1000000

.PHONY: fuzz deps compose-deps k8s-check build run test sim chaos chaos-containers bench move-under-load move-bench clean-data compose-up compose-down

deps:
	scripts/ensure-deps.sh

# Docker, Compose, debootstrap: for the compose targets and the compose test.
compose-deps:
	scripts/ensure-deps.sh --compose

build: deps
	$(CARGO) build --workspace

run: build
	$(TARGET_DIR)/debug/devcluster run $(RUN_ARGS)

test: compose-deps
	$(CARGO) fmt --all --check
	scripts/k8s-check.sh
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --no-fail-fast

chaos-containers: compose-deps
	$(CARGO) build $(if $(filter debug,$(CHAOS_PROFILE)),,--release) -p chaos
	@out=$(TARGET_DIR)/chaos/containers-$$(date +%Y%m%d-%H%M%S); mkdir -p $$out; \
	export $(CHAOS_COMPOSE_ENV); \
	scripts/compose.sh up $(if $(filter debug,$(CHAOS_PROFILE)),--debug,) || exit 2; \
	echo "chaos in containers: $(CHAOS_SECONDS) s of faults; log in $$out/chaos.log"; \
	$(TARGET_DIR)/$(CHAOS_PROFILE)/chaos --containers --duration $(CHAOS_SECONDS) --out $$out $(CHAOS_ARGS) >$$out/chaos.log 2>&1; \
	rc=$$?; \
	scripts/compose.sh logs --no-color >$$out/compose.log 2>&1; \
	scripts/compose.sh down; \
	if [ -f $$out/report.txt ]; then cat $$out/report.txt; else tail -n 30 $$out/chaos.log; fi; \
	exit $$rc

bench: deps
	scripts/ensure-deps.sh --bench
	$(CARGO) build --release -p participant -p coordinator -p bench
	BENCH_OUT="$${BENCH_OUT:-$(TARGET_DIR)/bench}" $(TARGET_DIR)/release/bench

sim: deps
	$(CARGO) build --release -p wallet-sim
	$(TARGET_DIR)/release/wallet-sim --seeds $(SIM_SEEDS) --first $(SIM_FIRST)

fuzz: deps
	scripts/ensure-deps.sh --fuzz
	$(CARGO) build --workspace
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" scripts/fuzz.sh
	SCHEMATHESIS_EXAMPLES=$(SCHEMATHESIS_EXAMPLES) $(CARGO) test -p e2e --test wallet openapi -- --nocapture

chaos: deps
	$(CARGO) build --release --workspace
	@out=$(TARGET_DIR)/chaos/$$(date +%Y%m%d-%H%M%S); mkdir -p $$out; \
	echo "chaos: $(CHAOS_SECONDS) s of faults; log in $$out/chaos.log"; \
	$(TARGET_DIR)/release/chaos --duration $(CHAOS_SECONDS) --out $$out $(CHAOS_ARGS) >$$out/chaos.log 2>&1; \
	rc=$$?; \
	if [ -f $$out/report.txt ]; then cat $$out/report.txt; else tail -n 30 $$out/chaos.log; fi; \
	exit $$rc

move-under-load: deps
	$(CARGO) build --release --workspace
	TARGET_DIR=$(TARGET_DIR) scripts/move-under-load.sh

move-bench: deps
	$(CARGO) build --release -p participant -p coordinator -p walletctl -p bench
	MOVE_SIZES="$(MOVE_SIZES)" MOVE_OUT="$${MOVE_OUT:-$(TARGET_DIR)/move-bench}" $(TARGET_DIR)/release/move-bench

clean-data:
	rm -rf .data

compose-up: compose-deps
	scripts/compose.sh up

compose-down:
	scripts/compose.sh down

k8s-check: deps
	scripts/k8s-check.sh
