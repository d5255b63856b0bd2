#!/usr/bin/env bash
# Makes the local PostgreSQL (127.0.0.1:5432) record per-statement statistics
# (pg_stat_statements), which the benchmark's steady phase reports. Idempotent: when the library
# is already loaded it does nothing; otherwise it adds it to shared_preload_libraries with
# ALTER SYSTEM (keeping any library already listed) and restarts the local cluster, which drops
# every open connection — so `make bench` runs it before anything connects, and it never runs
# in `make test`. BENCH_PG_STATEMENTS=0 skips it.
set -euo pipefail
[ "${BENCH_PG_STATEMENTS:-1}" = 0 ] && exit 0
url="${REFIT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
log() { printf '[pg-statements] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

loaded="$(psql "$url" -Atc "SHOW shared_preload_libraries")"
case ",${loaded// /}," in *,pg_stat_statements,*) exit 0 ;; esac

libraries="pg_stat_statements${loaded:+,$loaded}"
log "adding pg_stat_statements to shared_preload_libraries ($libraries) and restarting PostgreSQL"
psql "$url" -qc "ALTER SYSTEM SET shared_preload_libraries = '$libraries'"
version="$(ls /etc/postgresql | head -n1)"
as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
for _ in $(seq 1 300); do
  psql "$url" -Atc "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.1
done
psql "$url" -Atc "SHOW shared_preload_libraries" | grep -q pg_stat_statements \
  || { log "pg_stat_statements did not load"; exit 1; }
