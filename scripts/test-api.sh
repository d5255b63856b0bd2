#!/usr/bin/env bash
# `make test-api`: the HTTP API against its description. Starts `refit run` (REFIT_BIN, default
# target/debug/refit) on a database of its own with an admin token, trains a few versions for
# three users, then runs schemathesis (PyPI, pinned, in $REFIT_DEPS_DIR/api-venv) with
# tests/api/schemathesis.toml against the live service's /openapi.json: no 5xx, every answer as
# docs/openapi.json says, and no write that succeeds without the token. Needs the services of
# scripts/services.sh. Extra arguments go to `schemathesis run`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DEPS="${REFIT_DEPS_DIR:-$HOME/.cache/refit}"
VENV="$DEPS/api-venv"
PINS=(schemathesis==4.32.5)
REFIT_BIN="${REFIT_BIN:-$root/target/debug/refit}"
ADMIN_URL="${REFIT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

log() { printf '[test-api] %s\n' "$*" >&2; }

# --- schemathesis ------------------------------------------------------------------------------
stamp="$VENV/.refit-pins"
if [ ! -x "$VENV/bin/schemathesis" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PINS[*]}" ]; then
  log "creating $VENV (${PINS[*]})"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  printf '%s' "${PINS[*]}" >"$stamp"
fi
[ -x "$REFIT_BIN" ] || { log "no refit binary at $REFIT_BIN: build it first (make build)"; exit 1; }

# --- a refit of its own ------------------------------------------------------------------------
id="$(date +%s)_$$"
db="refit_test_api_$id"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; fi
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql "$ADMIN_URL" -qc "CREATE DATABASE $db"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
REFIT_ADMIN_TOKEN="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
export REFIT_ADMIN_TOKEN
export DATABASE_URL="${ADMIN_URL%/*}/$db"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:19092}"
export REFIT_TOPIC="refit-test-api-$id" REFIT_TOPIC_PARTITIONS=1
export REFIT_CACHE_KEY_PREFIX="test:api-$id:model:"
export REFIT_HTTP_ADDR="127.0.0.1:$port" REFIT_POLL_INTERVAL_MS=100
export REFIT_RETRAIN_THRESHOLD=10 REFIT_ROUNDS_PER_RETRAIN=2 REFIT_VALIDATION=off
export REFIT_LOG_FORMAT=json RUST_LOG=warn
"$REFIT_BIN" migrate >"$work/migrate.log" 2>&1
"$REFIT_BIN" run >"$work/refit.log" 2>&1 &
pid=$!

wait_for() { # seconds, description, command...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
      log "timed out waiting for $what; refit's log:"; cat "$work/refit.log" >&2; return 1
    fi
    sleep 0.2
  done
}
ready() {
  python3 -c "import sys, urllib.request as u
sys.exit(u.urlopen('http://127.0.0.1:$port/readyz', timeout=2).status != 200)"
}
wait_for 60 "/readyz" ready

# Three versions each for three users: 30 actuals per user at a threshold of 10.
psql "$DATABASE_URL" -q <<'SQL'
INSERT INTO prediction_requests (request_id, user_id, features)
SELECT gen_random_uuid(), 'station-0' || u,
       jsonb_build_object('hour', i % 24, 'temperature', 10 + (i * 7) % 20)
  FROM generate_series(1, 3) AS u, generate_series(1, 30) AS i;
INSERT INTO actual_rentals (request_id, actual_value)
SELECT request_id, 20 + (features->>'hour')::int + (features->>'temperature')::float
  FROM prediction_requests ORDER BY created_at, request_id;
SQL
versions() { [ "$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM refit_model_versions")" -ge 9 ]; }
wait_for 120 "9 trained versions" versions

log "schemathesis against http://127.0.0.1:$port/openapi.json"
"$VENV/bin/schemathesis" --config-file "$root/tests/api/schemathesis.toml" run --no-color \
  "http://127.0.0.1:$port/openapi.json" "$@"
