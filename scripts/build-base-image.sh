#!/usr/bin/env bash
# Builds a local base image from Debian's packages, for a Docker engine that
# cannot pull images: `debootstrap` makes a Debian bookworm root file system
# in a folder, `docker import` turns it into an image. It stands in for both
# of the Dockerfile's public bases (`debian:bookworm-slim` for the runtime,
# and the builder when the binaries are built on the host), with what the
# runtime stage would otherwise `apt-get install` already in it (Postgres,
# etcd, Prometheus, curl), so building on it needs no network at all.
#
#   scripts/build-base-image.sh            # builds wallet-base:bookworm unless present
#   scripts/build-base-image.sh --force    # builds it again
#   WALLET_BASE_IMAGE=name:tag scripts/build-base-image.sh
#
# The image is built once per machine and reused: a rebuild is only needed
# when PACKAGES below changes (its label `wallet.base.packages` says which
# list made it, and a different list triggers a rebuild).
set -euo pipefail

image="${WALLET_BASE_IMAGE:-wallet-base:bookworm}"
suite="${WALLET_BASE_SUITE:-bookworm}"
mirror="${WALLET_BASE_MIRROR:-http://deb.debian.org/debian}"
# Keep in step with the runtime stage's list in the Dockerfile.
PACKAGES="ca-certificates,curl,postgresql,etcd-server,prometheus,tini"

force=0
[ "${1:-}" = "--force" ] && force=1

if [ "$force" -eq 0 ] &&
    [ "$(docker image inspect -f '{{ index .Config.Labels "wallet.base.packages" }}' "$image" 2>/dev/null || true)" = "$PACKAGES" ]; then
    echo "build-base-image: $image is present" >&2
    exit 0
fi

command -v debootstrap >/dev/null || {
    echo "build-base-image: debootstrap is missing (scripts/ensure-deps.sh --compose installs it)" >&2
    exit 1
}
if [ "$(id -u)" -ne 0 ]; then
    echo "build-base-image: debootstrap needs root (run it with sudo)" >&2
    exit 1
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/wallet-base.XXXXXX")
cleanup() {
    # debootstrap mounts /proc and /sys inside while it runs: unmount
    # whatever an interruption left there before deleting the folder.
    # (No mount left is the usual case: grep then finds nothing, which
    # must not fail the trap, whose status would become the script's.)
    findmnt -rno TARGET | { grep "^$root/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT
started=$(date +%s)
echo "build-base-image: debootstrap $suite into $root (a few minutes)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    exit 1
}
rm -f "$root.log"

# What debian:bookworm-slim also leaves out: caches, docs, man pages.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
# Services must not start inside an image build (what debian images ship too).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

tar -C "$root" --numeric-owner --one-file-system -c . |
    docker import \
        --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change "LABEL wallet.base.packages=$PACKAGES" \
        - "$image" >/dev/null
echo "build-base-image: $image built in $(( $(date +%s) - started )) s" >&2
