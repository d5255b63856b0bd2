"""Storage benchmark (`make storage`): refit's database bytes as retrains and users grow.

Runs the release `refit run` (default settings, so retention on) against a database of its own and
measures the bytes of refit's own tables (every relation named refit_*, with indexes and TOAST;
the upstream tables are reported apart) after a VACUUM:
  - one user after 100 and after 1,000 retrains (50 actuals each), with retention on and off;
  - 10,000 users after one retrain each.
Writes the table between `<!-- storage:begin -->` and `<!-- storage:end -->` in BENCHMARKS.md.

  storage.py --refit target/release/refit [--users 10000] [--md BENCHMARKS.md]
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refitdb import Database  # noqa: E402

BEGIN, END = "<!-- storage:begin -->", "<!-- storage:end -->"
BATCH = 50
REFIT_BYTES = """SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname LIKE 'refit\\_%'"""
UPSTREAM_BYTES = """SELECT (pg_total_relation_size('actual_rentals')
                          + pg_total_relation_size('prediction_requests'))::bigint"""


def features(rng):
    return {"hour": rng.randrange(24), "temperature": round(rng.uniform(-5, 35), 1),
            "humidity": round(rng.uniform(20, 100), 1), "weekday": rng.randrange(7)}


def rentals(x, rng):
    peak = 1.0 if x["hour"] in (8, 17, 18) else 0.4
    return round(max(0.0, 200 * peak + 4 * x["temperature"] - x["humidity"] + rng.gauss(0, 15)), 1)


class Refit:
    """A database of its own, `refit migrate`, then `refit run`."""

    def __init__(self, binary, admin_url, env):
        self.binary = binary
        self.db = Database(admin_url, "refit_storage")
        self.url, tag = self.db.url, self.db.tag
        self.env = dict(os.environ, DATABASE_URL=self.url, REFIT_TOPIC=f"refit-storage-{tag}",
                        REFIT_TOPIC_PARTITIONS="1", REFIT_CACHE_KEY_PREFIX=f"storage:{tag}:",
                        REFIT_HTTP_ADDR="off", RUST_LOG="warn", **env)

    def __enter__(self):
        self.db.create(self.binary, self.env)
        self.process = subprocess.Popen([self.binary, "run"], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.conn = psycopg.connect(self.url, autocommit=True)
        return self

    def __exit__(self, *exc):
        self.conn.close()
        self.process.terminate()
        self.process.wait(30)
        self.db.drop()

    def insert(self, rows):
        """rows: (user, features, actual); one upstream transaction."""
        ids = [uuid.uuid4() for _ in rows]
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany("INSERT INTO prediction_requests (request_id, user_id, features) "
                            "VALUES (%s, %s, %s::jsonb)",
                            [(i, u, json.dumps(x)) for i, (u, x, _) in zip(ids, rows)])
            cur.executemany("INSERT INTO actual_rentals (request_id, actual_value) VALUES (%s, %s)",
                            [(i, y) for i, (_, _, y) in zip(ids, rows)])

    def wait(self, sql, at_least, deadline_s=900):
        deadline = time.monotonic() + deadline_s
        while self.conn.execute(sql).fetchone()[0] < at_least:
            if self.process.poll() is not None:
                sys.exit("refit exited")
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {sql} >= {at_least}")
            time.sleep(0.02)
        # Let the retrain's outbox deliveries finish before measuring.
        self.wait_outbox()

    def wait_outbox(self):
        while self.conn.execute("SELECT count(*) FROM refit_outbox WHERE done_at IS NULL").fetchone()[0]:
            time.sleep(0.05)

    def vacuum(self, full):
        for (table,) in self.conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r' "
                                          "AND relname LIKE 'refit\\_%'").fetchall():
            self.conn.execute(f"VACUUM ({'FULL, ' if full else ''}ANALYZE) {table}")

    def measure(self):
        """On-disk bytes after a plain VACUUM (what autovacuum leaves), then the live data's
        bytes after a VACUUM FULL (which also resets the bloat for what follows)."""
        self.vacuum(full=False)
        on_disk = self.conn.execute(REFIT_BYTES).fetchone()[0]
        self.vacuum(full=True)
        counts = self.conn.execute(
            "SELECT (SELECT count(*) FROM refit_model_versions),"
            "       (SELECT count(*) FROM refit_model_versions WHERE artifact IS NOT NULL),"
            "       (SELECT count(*) FROM refit_consumed_actuals),"
            "       (SELECT count(*) FROM refit_outbox)").fetchone()
        return {"refit_bytes": self.conn.execute(REFIT_BYTES).fetchone()[0], "on_disk_bytes": on_disk,
                "upstream_bytes": self.conn.execute(UPSTREAM_BYTES).fetchone()[0],
                "versions": counts[0], "artifacts": counts[1], "consumed_rows": counts[2],
                "outbox_rows": counts[3]}


def one_user(args, retention):
    rng = random.Random(1)
    out = {}
    with Refit(args.refit, args.admin_url, {"REFIT_RETENTION": retention}) as refit:
        for k in range(1, 1001):
            batch = [("solo", x, rentals(x, rng)) for x in (features(rng) for _ in range(BATCH))]
            refit.insert(batch)
            refit.wait("SELECT coalesce(max(version), 0) FROM refit_model_versions", k)
            if k in (100, 1000):
                out[k] = refit.measure()
                print(f"[storage] retention {retention}: {k} retrains: {out[k]}", file=sys.stderr)
    return out


def many_users(args):
    rng = random.Random(2)
    with Refit(args.refit, args.admin_url, {}) as refit:
        users = [f"user-{i:05d}" for i in range(args.users)]
        for start in range(0, len(users), 20):
            refit.insert([(u, x, rentals(x, rng)) for u in users[start:start + 20]
                          for x in (features(rng) for _ in range(BATCH))])
        refit.wait("SELECT count(*) FROM refit_model_versions", args.users)
        measured = refit.measure()
        print(f"[storage] {args.users} users: {measured}", file=sys.stderr)
        return measured


def kib(n):
    return f"{n / 1024:,.0f} KiB"


def report(on, off, users, n_users):
    grow_on = on[1000]["refit_bytes"] / on[100]["refit_bytes"]
    grow_off = off[1000]["refit_bytes"] / off[100]["refit_bytes"]
    lines = [
        f"Measured by `make storage` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, PostgreSQL {users['server']}): refit's own tables (indexes "
        "and TOAST included): *live* after a VACUUM FULL, *on disk* after a plain VACUUM — what "
        "the files hold when autovacuum has not reclaimed the churn in between (the run takes "
        "about a minute, the length of one autovacuum nap). The upstream tables (requests, "
        "actuals) apart.",
        "",
        "| run | refit live bytes | refit on disk | versions (with artifact) | consumed rows "
        "| outbox rows | upstream bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in (("1 user, 100 retrains, retention on", on[100]),
                    ("1 user, 1,000 retrains, retention on", on[1000]),
                    ("1 user, 100 retrains, retention off", off[100]),
                    ("1 user, 1,000 retrains, retention off", off[1000]),
                    (f"{n_users:,} users, 1 retrain each", users)):
        lines.append(f"| {name} | {kib(m['refit_bytes'])} | {kib(m['on_disk_bytes'])} "
                     f"| {m['versions']:,} ({m['artifacts']:,}) "
                     f"| {m['consumed_rows']:,} | {m['outbox_rows']:,} | {kib(m['upstream_bytes'])} |")
    lines += ["",
              f"From 100 to 1,000 retrains of one user refit's live bytes grow {grow_on:.2f}× with "
              f"retention on and {grow_off:.2f}× with it off; {n_users:,} users take "
              f"{users['refit_bytes'] / n_users / 1024:.1f} KiB each."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refit", required=True)
    ap.add_argument("--admin-url", default=os.environ.get(
        "REFIT_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--md", default="BENCHMARKS.md")
    args = ap.parse_args()
    on, off = one_user(args, "on"), one_user(args, "off")
    users = many_users(args)
    with psycopg.connect(args.admin_url) as c:
        users["server"] = c.execute("SHOW server_version").fetchone()[0].split()[0]
    md = Path(args.md).read_text()
    if BEGIN not in md:
        sys.exit(f"{args.md} has no {BEGIN} marker")
    head, rest = md.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    Path(args.md).write_text(f"{head}{BEGIN}\n{report(on, off, users, args.users)}\n{END}{tail}")
    print(args.md)


if __name__ == "__main__":
    main()
