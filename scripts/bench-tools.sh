#!/usr/bin/env bash
# Installs what `make bench` needs besides refit's own dependencies (scripts/install-deps.sh):
# a separate Python venv for the Python reference implementation (scripts/bench-python.py) with
# xgboost, numpy, a PostgreSQL driver, a Redis client and a Kafka client (confluent-kafka, which
# wraps librdkafka like refit does), and matplotlib for the chart (scripts/bench-chart.py). Idempotent; prints the venv's python on stdout.
set -euo pipefail
DEPS="${REFIT_DEPS_DIR:-$HOME/.cache/refit}"
VENV="$DEPS/bench-venv"
# Pinned so the reference is the same from run to run. xgboost-cpu 3.2.0 is the newest release
# with a wheel for this machine's Python 3.11 (it reads refit's XGBoost 3.4 models).
PKGS=(
  "xgboost-cpu==3.2.0"
  "numpy==2.4.6"
  "psycopg[binary]==3.3.9"
  "redis==8.1.0"
  "confluent-kafka==2.16.1"
  "matplotlib==3.10.7"
)
log() { printf '[bench-tools] %s\n' "$*" >&2; }

check() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import xgboost, numpy, psycopg, redis, confluent_kafka, matplotlib
PY
}

if [ ! -x "$VENV/bin/python" ] || ! check; then
  log "creating $VENV (${PKGS[*]})"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PKGS[@]}"
  check || { log "the bench venv does not import its packages"; exit 1; }
fi
echo "$VENV/bin/python"
