#!/usr/bin/env python3
"""What refit's trigger costs the upstream database (`make upstream-cost`, BENCHMARKS.md).

An upstream service that logs outcomes as they happen commits one `INSERT INTO actual_rentals`
per transaction. refit's trigger runs inside each of those transactions: it queues the actual
in `refit_pending` and NOTIFYs the service, and PostgreSQL serialises the commits of every
transaction that notified. This script measures that cost with pgbench on a database of its
own, migrated by `refit migrate`: 8 clients, one single-row insert per transaction, 10 s a run,
runs with and without the trigger alternating (three each), `refit run` not running (the cost is
the trigger's alone; pending rows are cleared between runs so every run starts alike).
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refitdb import Database  # noqa: E402

BEGIN, END = "<!-- upstream:begin -->", "<!-- upstream:end -->"
REQUESTS = 100_000
USERS = 1_000
INSERT = """\\set r random(1, {requests})
INSERT INTO actual_rentals (request_id, actual_value)
  SELECT request_id, 1.0 FROM refit_bench_requests WHERE seq = :r;
"""


def seed(conn):
    """Prediction requests for the inserts to refer to, and a numbered list to pick them by."""
    conn.execute(
        "INSERT INTO prediction_requests (request_id, user_id, features) "
        "SELECT gen_random_uuid(), 'user-' || (g %% %s), '{\"hour\": 8}'::jsonb "
        "FROM generate_series(1, %s) g", (USERS, REQUESTS))
    conn.execute("CREATE TABLE refit_bench_requests (seq int PRIMARY KEY, request_id uuid)")
    conn.execute("INSERT INTO refit_bench_requests "
                 "SELECT row_number() OVER (), request_id FROM prediction_requests")
    conn.execute("VACUUM ANALYZE")


def run_pgbench(url, script, clients, seconds):
    out = subprocess.run(
        ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", script, url],
        check=True, capture_output=True, text=True).stdout
    return float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))


def reset(conn, trigger_on):
    conn.execute("TRUNCATE refit_pending")
    conn.execute("TRUNCATE actual_rentals CASCADE")
    state = "ENABLE" if trigger_on else "DISABLE"
    conn.execute(f"ALTER TABLE actual_rentals {state} TRIGGER refit_enqueue_actual")
    conn.execute("CHECKPOINT")


def measure(args):
    db = Database(args.admin_url, "refit_upstream")
    db.create(args.refit)
    url = db.url
    try:
        with psycopg.connect(url, autocommit=True) as conn, \
                tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            seed(conn)
            script.write(INSERT.format(requests=REQUESTS))
            script.flush()
            tps = {True: [], False: []}
            for i in range(args.repeats):
                for trigger_on in (False, True):
                    reset(conn, trigger_on)
                    tps[trigger_on].append(
                        run_pgbench(url, script.name, args.clients, args.seconds))
                    print(f"[upstream-cost] run {i + 1}, trigger {'on' if trigger_on else 'off'}:"
                          f" {tps[trigger_on][-1]:,.0f} TPS", flush=True)
        return tps
    finally:
        db.drop()


def section(tps, args, server):
    def spread(v):
        return f"{statistics.median(v):,.0f} [{min(v):,.0f}–{max(v):,.0f}]"
    off, on = statistics.median(tps[False]), statistics.median(tps[True])
    cost = 100 * (1 - on / off)
    return f"""{BEGIN}
Measured by `make upstream-cost` ({time.strftime('%Y-%m-%d')}, {platform.machine()},
{os.cpu_count()} cores, PostgreSQL {server}): pgbench, {args.clients} clients, one
`INSERT INTO actual_rentals` per transaction, {args.seconds} s a run, {args.repeats} runs each,
alternating; median [min–max] of the runs.

| upstream | TPS |
|---|---:|
| without refit's trigger | {spread(tps[False])} |
| with refit's trigger (queue row + NOTIFY) | {spread(tps[True])} |

refit's trigger costs this upstream {cost:.0f} % of its single-row insert throughput (the
goal is 10 % or less: {'met' if cost <= 10 else 'not met'}).
{END}"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refit", required=True, help="the refit binary (for `refit migrate`)")
    ap.add_argument("--admin-url", default=os.environ.get(
        "REFIT_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--md", default="BENCHMARKS.md")
    args = ap.parse_args()
    tps = measure(args)
    with psycopg.connect(args.admin_url) as c:
        server = c.execute("SHOW server_version").fetchone()[0].split()[0]
    doc = Path(args.md)
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + section(tps, args, server) + tail)


if __name__ == "__main__":
    main()
