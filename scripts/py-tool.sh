#!/usr/bin/env bash
# Runs a Python tool from PyPI at a pinned version, installed once into its
# own venv under target/ (python3-venv, from scripts/ensure-deps.sh):
#   scripts/py-tool.sh PACKAGE==VERSION COMMAND [ARGS...]
# e.g. scripts/py-tool.sh kubernetes-validate==1.37.0 kubernetes-validate --version.
# Prints nothing of its own once installed; the tool's exit code is its.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

spec="$1"
command="$2"
shift 2
package="${spec%%==*}"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/py-$package"

# A venv whose pip already holds this exact version is ready.
if ! "$venv/bin/pip" show "$package" 2>/dev/null | grep -qx "Version: ${spec#*==}"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec" >&2
fi
exec "$venv/bin/$command" "$@"
