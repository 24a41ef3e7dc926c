# make run         the whole cluster in the foreground (Ctrl-C stops it); data in .data/
# make test        what CI runs: format, lints, build, every test
# make bench       the benchmark (release build, its own cluster, ~6 min): pgbench reference and
#                  every scenario; table, JSON and SVG chart in target/bench/<time>/ (BENCH_SECONDS=20)
# make sim         the deterministic simulation, 1,000 seeds (SIM_SEEDS=n, SIM_FIRST=s)
# make clean-data  wipes .data/ (the next make run starts from empty databases)

CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# Extra arguments for `devcluster run`, e.g. make run RUN_ARGS='--coordinator-port 9090'
RUN_ARGS ?=
SIM_SEEDS ?= 1000
SIM_FIRST ?= 1

.PHONY: deps build run test bench sim clean-data

deps:
	scripts/ensure-deps.sh

build: deps
	$(CARGO) build --workspace

run: build
	$(TARGET_DIR)/debug/devcluster run $(RUN_ARGS)

test: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace

bench: deps
	$(CARGO) build --release -p participant -p coordinator -p devcluster
	BENCH_OUT="$${BENCH_OUT:-$(TARGET_DIR)/bench}" $(TARGET_DIR)/release/bench

sim: deps
	$(CARGO) build --release -p wallet-sim
	$(TARGET_DIR)/release/wallet-sim --seeds $(SIM_SEEDS) --first $(SIM_FIRST)

clean-data:
	rm -rf .data
