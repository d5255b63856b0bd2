#!/usr/bin/env bash
# Runs the Kubernetes packaging tests (tests/k8s/): Helm lint and rendering, kustomize builds,
# Kubernetes schema validation, the Dockerfile and Grafana dashboard checks. Installs its tools first
# (scripts/k8s-tools.sh). The environment-variable check runs the refit binary at $REFIT_BIN
# (default target/debug/refit): build it first. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

tools="$("$root/scripts/k8s-tools.sh")"
K8S_VENV="$(sed -n 's/^K8S_VENV=//p' <<<"$tools")"
KUBECTL="$(sed -n 's/^KUBECTL=//p' <<<"$tools")"
export KUBECTL

exec "$K8S_VENV/bin/python" -m pytest -q -p no:cacheprovider --color=no \
  "$root/tests/k8s" "$@"
