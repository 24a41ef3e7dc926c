# make run         the whole cluster in the foreground (Ctrl-C stops it); data in .data/
# make test        what CI runs: format, lints, build, every test
# make clean-data  wipes .data/ (the next make run starts from empty databases)

CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# Extra arguments for `devcluster run`, e.g. make run RUN_ARGS='--coordinator-port 9090'
RUN_ARGS ?=

.PHONY: deps build run test clean-data

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

clean-data:
	rm -rf .data
