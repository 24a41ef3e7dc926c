#!/usr/bin/env bash
# docker-compose.yml, run the way this project's machines can: the engine
# cannot pull images, so by default the image is built on a local base made
# from Debian's packages (scripts/build-base-image.sh, once per machine) with
# the binaries built on the host (scripts/stage-binaries.sh).
# `WALLET_BUILD=public` builds the usual way instead: the Dockerfile's
# multi-stage build from the public rust and debian images.
#
#   scripts/compose.sh up [--debug]   # build, start, wait until both coordinators are ready
#   scripts/compose.sh down           # stop and delete the containers, network and volumes
#   scripts/compose.sh build [--debug]
#   scripts/compose.sh ARGS...        # any other compose command (ps, logs -f, exec ...)
#
# --debug stages the debug build (what the compose test uses: no release
# build needed). Works with `docker compose` (v2) and `docker-compose` (v1).
# Environment: COMPOSE_PROJECT_NAME (default wallet), WALLET_IMAGE (default
# wallet:latest), every WALLET_*_PORT of docker-compose.yml, and
# WALLET_COMPOSE_WAIT (seconds to wait for readiness, default 300).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    echo "compose: neither 'docker compose' nor docker-compose is installed (scripts/ensure-deps.sh --compose)" >&2
    exit 1
fi
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-wallet}"
export WALLET_IMAGE="${WALLET_IMAGE:-wallet:latest}"

# The cluster secret every service shares (docker-compose.yml's secret
# cluster-secret): made once, random, readable by its owner only, never
# committed (.data/ is ignored).
ensure_secret() {
    local file=.data/compose/cluster-secret
    [ -s "$file" ] && return
    mkdir -p "$(dirname "$file")"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" >"$file.tmp" && mv "$file.tmp" "$file")
    echo "compose: wrote a new cluster secret to $file" >&2
}
ensure_secret

build() {
    local profile=release
    [ "${1:-}" = "--debug" ] && profile=debug
    if [ "${WALLET_BUILD:-local}" = local ]; then
        base="${WALLET_BASE_IMAGE:-wallet-base:bookworm}"
        WALLET_BASE_IMAGE="$base" scripts/build-base-image.sh
        scripts/stage-binaries.sh "$profile"
        export WALLET_BUILDER_IMAGE="$base" WALLET_RUNTIME_IMAGE="$base" WALLET_BINARIES=host
    fi
    # Every service runs the same image: building it for one builds it for all.
    "${compose[@]}" build init
}

wait_ready() {
    local limit="${WALLET_COMPOSE_WAIT:-300}" started=$SECONDS url
    for port in "${WALLET_COORDINATOR_1_PORT:-8080}" "${WALLET_COORDINATOR_2_PORT:-8081}"; do
        url="http://127.0.0.1:$port/readyz"
        until curl -fsS -o /dev/null --max-time 2 "$url"; do
            if [ $((SECONDS - started)) -ge "$limit" ]; then
                echo "compose: $url not ready after ${limit} s; docker compose ps and logs follow" >&2
                "${compose[@]}" ps >&2 || true
                "${compose[@]}" logs --tail 30 >&2 || true
                return 1
            fi
            sleep 1
        done
    done
    echo "compose: ready in $((SECONDS - started)) s" >&2
}

case "${1:-}" in
up)
    shift
    build "$@"
    "${compose[@]}" up -d
    wait_ready
    cat >&2 <<EOT
compose: the cluster runs (project $COMPOSE_PROJECT_NAME)
  public API    http://127.0.0.1:${WALLET_COORDINATOR_1_PORT:-8080} and http://127.0.0.1:${WALLET_COORDINATOR_2_PORT:-8081}
  projector     http://127.0.0.1:${WALLET_PROJECTOR_PORT:-9100}/status
  Prometheus    http://127.0.0.1:${WALLET_PROMETHEUS_PORT:-9090} (dashboard: /consoles/wallet.html)
  walletctl     scripts/compose.sh exec coordinator-1 walletctl nodes list
  stop          make compose-down (deletes the volumes)
EOT
    ;;
build)
    shift
    build "$@"
    ;;
down)
    shift
    "${compose[@]}" down -v --remove-orphans "$@"
    ;;
wait)
    wait_ready
    ;;
"")
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
*)
    "${compose[@]}" "$@"
    ;;
esac
