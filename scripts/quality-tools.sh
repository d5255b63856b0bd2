#!/usr/bin/env bash
# Installs what `make quality` needs besides refit's own dependencies (scripts/install-deps.sh): a
# Python venv with XGBoost (the reference policies), River (an online learner to compare with),
# a PostgreSQL driver (to feed the stream to `refit run` and read the versions it made) and
# matplotlib (the error-over-time charts). Idempotent; prints the venv's python on stdout.
set -euo pipefail
DEPS="${REFIT_DEPS_DIR:-$HOME/.cache/refit}"
VENV="$DEPS/quality-venv"
# Pinned so the references are the same from run to run. xgboost-cpu 3.2.0 is the newest release
# with a wheel for Python 3.11; it reads and trains like refit's libxgboost 3.4.
PKGS=(
  "xgboost-cpu==3.2.0"
  "numpy==2.4.6"
  "river==0.26.1"
  "psycopg[binary]==3.3.9"
  "matplotlib==3.10.7"
)
log() { printf '[quality-tools] %s\n' "$*" >&2; }

check() {
  "$VENV/bin/python" -c 'import xgboost, numpy, river, psycopg, matplotlib' 2>/dev/null
}

if [ ! -x "$VENV/bin/python" ] || ! check; then
  log "creating $VENV (${PKGS[*]})"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PKGS[@]}"
  check || { log "the quality venv does not import its packages"; exit 1; }
fi
echo "$VENV/bin/python"
