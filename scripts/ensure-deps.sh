#!/usr/bin/env bash
# Installs the system packages the cluster and the build need, and only the
# missing ones: PostgreSQL (server binaries, psql, pg_isready), etcd (server)
# and protoc (for etcd-client's build). A no-op when everything is present.
# Uses apt-get; through sudo unless already root.
set -euo pipefail

missing=()
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null; then
    missing+=(postgresql)
fi
if ! command -v psql >/dev/null; then
    missing+=(postgresql-client)
fi
if ! command -v etcd >/dev/null && [ ! -x /usr/bin/etcd ]; then
    missing+=(etcd-server)
fi
if ! command -v protoc >/dev/null; then
    missing+=(protobuf-compiler)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
echo "ensure-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
