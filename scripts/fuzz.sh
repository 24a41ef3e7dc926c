#!/usr/bin/env bash
# make fuzz: cargo fuzz (libFuzzer) on each target of fuzz/ for
# FUZZ_SECONDS, starting from the committed seeds in fuzz/corpus/<target>/;
# new inputs go to target/fuzz-corpus/<target>/ (the committed corpus stays
# as it is), a crash leaves its input in fuzz/artifacts/<target>/ and fails.
# cargo fuzz needs a nightly compiler's -Z flags: `cargo +nightly` when
# rustup has a nightly toolchain, else the stable one with RUSTC_BOOTSTRAP=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
seconds="${FUZZ_SECONDS:-60}"
targets=(${FUZZ_TARGETS:-amount ids cursor internal_messages})

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    cargo=(env RUSTC_BOOTSTRAP=1 cargo)
fi

cd "$root/fuzz"
"${cargo[@]}" fuzz build -O
for t in "${targets[@]}"; do
    corpus="$target/fuzz-corpus/$t"
    mkdir -p "$corpus"
    log="$target/fuzz-corpus/$t.log"
    echo "fuzz: $t for $seconds s (log: $log)"
    if ! "${cargo[@]}" fuzz run -O "$t" "$corpus" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    added=$(grep -o 'stat::new_units_added: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $t: $runs inputs run, $added new in the corpus, no crash"
done
