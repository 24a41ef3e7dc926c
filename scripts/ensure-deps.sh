#!/usr/bin/env bash
# Installs the system packages the cluster and the build need, and only the
# missing ones. Each dependency is checked by what the project needs of it,
# not by a command name alone:
# - PostgreSQL: initdb, postgres, psql, pg_isready and pgbench, from one
#   version's bin directory (the dev cluster, the tests and the benchmark);
# - etcd: the server, for the partition map;
# - protoc able to compile a file that imports Google's well-known types
#   (`google/protobuf/descriptor.proto`): etcd-client's build script needs
#   both the compiler (protobuf-compiler) and those .proto files
#   (libprotobuf-dev), which `--no-install-recommends` does not bring;
# - Python 3 able to make a venv with pip (python3-venv): scripts/py-tool.sh
#   installs kubernetes-validate and schemathesis into venvs under target/
#   (make test);
# - openssl, with which the TLS tests make their certificates.
# With --compose, also what docker-compose.yml and its test need (make
# compose-up, make test): the Docker engine and Compose (`docker compose` or
# docker-compose), debootstrap for the local base image
# (scripts/build-base-image.sh) and objcopy (binutils) to strip the staged
# binaries; and it checks that the engine answers.
# With --bench (make bench), also perf (linux-perf), for the profile the
# benchmark writes beside its table.
# With --fuzz (make fuzz), also cargo-fuzz, from crates.io (cargo install).
# A no-op when everything is present. Uses apt-get; through sudo unless root.
# `ensure-deps.sh --check [--compose] [--bench] [--fuzz]` only reports what is missing (exit 1 if anything).
set -euo pipefail

check=0
compose=0
bench=0
fuzz=0
for arg in "$@"; do
    case "$arg" in
    --check) check=1 ;;
    --compose) compose=1 ;;
    --bench) bench=1 ;;
    --fuzz) fuzz=1 ;;
    *)
        echo "ensure-deps: unknown argument $arg (--check, --compose, --bench, --fuzz)" >&2
        exit 2
        ;;
    esac
done

missing=()

pg_bin() {
    local found
    found=$(compgen -G "/usr/lib/postgresql/*/bin/$1" | sort -V | tail -n 1 || true)
    [ -n "$found" ] || found=$(command -v "$1" || true)
    [ -n "$found" ] && [ -x "$found" ]
}
for bin in initdb postgres psql pg_isready pgbench; do
    if ! pg_bin "$bin"; then
        missing+=(postgresql)
        break
    fi
done
if ! { command -v etcd >/dev/null || [ -x /usr/bin/etcd ]; }; then
    missing+=(etcd-server)
fi

# What etcd-client's build asks of protoc: compile a file importing a
# well-known type from the default include path.
protoc_ok() {
    command -v protoc >/dev/null || return 1
    local dir rc
    dir=$(mktemp -d)
    cat >"$dir/probe.proto" <<'EOF'
syntax = "proto3";
package ensure_deps_probe;
import "google/protobuf/descriptor.proto";
extend google.protobuf.FieldOptions { optional string probe = 50000; }
EOF
    protoc --proto_path="$dir" --descriptor_set_out="$dir/out.pb" "$dir/probe.proto" >/dev/null 2>&1
    rc=$?
    rm -rf "$dir"
    return $rc
}
if ! command -v protoc >/dev/null; then
    missing+=(protobuf-compiler libprotobuf-dev)
elif ! protoc_ok; then
    missing+=(libprotobuf-dev)
fi

# The TLS tests make their certificates with the openssl command.
command -v openssl >/dev/null || missing+=(openssl)

# A venv with pip in it: ensurepip is what Debian splits off into python3-venv.
if ! command -v python3 >/dev/null; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ "$compose" -eq 1 ]; then
    command -v docker >/dev/null || missing+=(docker.io)
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
        missing+=(docker-compose)
    fi
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v objcopy >/dev/null || missing+=(binutils)
    command -v curl >/dev/null || missing+=(curl)
fi

if [ "$bench" -eq 1 ] && ! command -v perf >/dev/null; then
    missing+=(linux-perf)
fi

# cargo fuzz is a cargo subcommand from crates.io, not a Debian package.
if [ "$fuzz" -eq 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "$check" -eq 1 ]; then
        echo "ensure-deps: missing cargo-fuzz (cargo install cargo-fuzz)" >&2
        exit 1
    fi
    echo "ensure-deps: installing cargo-fuzz (cargo install)" >&2
    cargo install --locked cargo-fuzz
fi

# The engine must answer (installing docker.io starts it; a machine that
# has it stopped needs it started).
docker_answers() {
    [ "$compose" -eq 0 ] || docker info >/dev/null 2>&1
}

if [ "${#missing[@]}" -eq 0 ]; then
    if ! docker_answers; then
        echo "ensure-deps: the Docker engine does not answer (docker info); start it (service docker start)" >&2
        exit 1
    fi
    exit 0
fi
if [ "$check" -eq 1 ]; then
    echo "ensure-deps: missing ${missing[*]}" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
echo "ensure-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

# Installed is not the same as working: check again, and say what still fails.
if ! protoc_ok; then
    echo "ensure-deps: protoc still cannot compile a file importing google/protobuf/descriptor.proto" >&2
    exit 1
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "ensure-deps: python3 still cannot make a venv with pip (python3-venv)" >&2
    exit 1
fi
if ! docker_answers; then
    echo "ensure-deps: the Docker engine does not answer (docker info); start it (service docker start)" >&2
    exit 1
fi
