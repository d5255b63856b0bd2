#!/usr/bin/env bash
# Starts the local services refit needs, idempotently, reusing any that already run:
# PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and the tansu Kafka-compatible broker
# (127.0.0.1:$REFIT_KAFKA_PORT, default 19092). Prints the environment to use them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
DEPS="${REFIT_DEPS_DIR:-$HOME/.cache/refit}"
KAFKA_PORT="${REFIT_KAFKA_PORT:-19092}"
STATE="$DEPS/services"
mkdir -p "$STATE"

log() { printf '[services] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port, name, seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do port_open "$1" && return 0; sleep 0.1; done
  log "$2 did not open 127.0.0.1:$1 within $3 s"; return 1
}

[ -x "$DEPS/bin/tansu" ] || "$root/scripts/install-deps.sh"

# PostgreSQL
if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null; then
    log "installing PostgreSQL"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  log "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_port 5432 PostgreSQL 30
fi

# Redis
if ! port_open 6379; then
  if ! command -v redis-server >/dev/null; then
    log "installing Redis"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis 30
fi

# tansu (Kafka-compatible broker, in-memory storage)
if ! port_open "$KAFKA_PORT"; then
  log "starting tansu on 127.0.0.1:$KAFKA_PORT"
  nohup setsid "$DEPS/bin/tansu" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$STATE/tansu-$KAFKA_PORT.log" 2>&1 &
  echo $! >"$STATE/tansu-$KAFKA_PORT.pid"
  wait_port "$KAFKA_PORT" tansu 30
fi

cat <<ENV
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/refit
export REDIS_URL=redis://127.0.0.1:6379
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
ENV
