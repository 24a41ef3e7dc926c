#!/usr/bin/env bash
# Puts the four service binaries where the Dockerfile's `BINARIES=host` build
# takes them from (target/docker/bin), built on this machine: for an engine
# that cannot pull a Rust image to build them in.
#
#   scripts/stage-binaries.sh            # release build (make compose-up)
#   scripts/stage-binaries.sh debug      # the debug build already there (the compose test)
#
# The binaries are stripped of debug info (a debug build's are ~120 MB each
# otherwise). The host and the image are both Debian bookworm, so they share
# glibc.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile="${1:-release}"
cargo="${CARGO:-cargo}"
target_dir="${CARGO_TARGET_DIR:-target}"
bins=(coordinator participant projector walletctl)
case "$profile" in
release) "$cargo" build --release -p coordinator -p participant -p projector -p walletctl ;;
debug) "$cargo" build -p coordinator -p participant -p projector -p walletctl ;;
*)
    echo "stage-binaries: profile must be release or debug, not $profile" >&2
    exit 2
    ;;
esac
out=target/docker/bin
mkdir -p "$out"
for b in "${bins[@]}"; do
    src="$target_dir/$profile/$b"
    # Only when it changed, so the image's layer stays cached otherwise.
    if [ ! -e "$out/$b" ] || [ "$src" -nt "$out/$b" ]; then
        objcopy --strip-debug "$src" "$out/$b.tmp"
        mv "$out/$b.tmp" "$out/$b"
    fi
done
echo "stage-binaries: $profile binaries in $out" >&2
