#!/usr/bin/env bash
# Checks the Kubernetes manifests (deploy/k8s/), what `make k8s-check` and
# `make test` run; no cluster needed, and no network once installed:
# 1. every manifest validates against the Kubernetes schemas (strict: no
#    unknown fields) with kubernetes-validate, which bundles the schemas; it
#    is installed once from PyPI into a venv under target/
#    (scripts/py-tool.sh);
# 2. scripts/k8s_check.py: images, ports, probes, commands and config keys
#    agree with docker-compose.yml and config/*.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
kv=(scripts/py-tool.sh "kubernetes-validate==$KV_VERSION")

manifests=()
for f in deploy/k8s/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"${kv[@]}" kubernetes-validate --strict --quiet "${manifests[@]}"
echo "k8s-check: ${#manifests[@]} manifests valid against the Kubernetes $KV_VERSION schemas"
"${kv[@]}" python scripts/k8s_check.py
