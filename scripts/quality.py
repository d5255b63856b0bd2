"""Prequential quality benchmark (`make quality`): measures, writes target/quality/results.json.

The real hourly bike-rental stream (scripts/bikeshare.py), 50 actuals a batch, is replayed as one
user's actuals through the real service: each batch is inserted into PostgreSQL in one upstream
transaction, `refit run` retrains, and the harness waits for the version that batch made. Every
batch is scored by the version that was serving when it arrived (test-then-train): that is the
live error refit stores with each version (`metrics.live`), and a sample of versions is exported
and scored again here in Python to show the two agree.

Beside refit's policies, on the same stream and with the same XGBoost parameters:
  - window/every: a fresh 100-round model on the last 2,000 actuals after every batch (the yardstick)
  - window/10th:  the same after every 10th batch
  - never:        the first batch's model, never retrained
  - river/ARF:    River's adaptive random forest regressor, learning every row
A second stream flips the target's relation to the hour of day half-way (hour h is reported as
h+12): the drift run, for recovery time.

Quality is deterministic (fixed seeds); times are per batch, spread over batches.
QUALITY_QUICK=1: the first 100 batches and fewer policies (a smoke run, minutes).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bikeshare  # noqa: E402
from refitdb import Database, cpu_seconds  # noqa: E402

BATCH = 50
WINDOW = 2000
ROUNDS = 100
# refit's default REFIT_XGB_PARAMS, with one thread as refit trains (REFIT_XGB_NTHREAD=1).
PARAMS = {"objective": "reg:squarederror", "tree_method": "hist", "max_depth": 6, "eta": 0.1,
          "seed": 0, "nthread": 1}
USER = "dc"

# refit's policies: (name, env over refit's defaults). The first is the default policy; each
# other changes one option of it, or is a reference run through refit itself.
PLAIN_REBUILD = {"REFIT_REBUILD_ETA": "0", "REFIT_RECENCY_HALF_LIFE": "0"}
YARDSTICK = {"REFIT_REBUILD_EVERY": "1", "REFIT_REFIT_WINDOW": "2000",
             "REFIT_COMPACTION_ROUNDS": "100", "REFIT_VALIDATION": "off", **PLAIN_REBUILD}
SOURCE_DESIGN = {"REFIT_ROUNDS_PER_RETRAIN": "10", "REFIT_CONTINUE_ETA": "0",
                 "REFIT_XGB_PARAMS": json.dumps({"eta": 0.3}), "REFIT_MAX_TREES": "0",
                 "REFIT_REBUILD_EVERY": "0", "REFIT_COMPACTION_ROUNDS": "10",
                 "REFIT_VALIDATION": "off", **PLAIN_REBUILD}
PREVIOUS_DEFAULT = {"REFIT_ROUNDS_PER_RETRAIN": "3", "REFIT_CONTINUE_ETA": "0.05",
                    "REFIT_REBUILD_EVERY": "8", "REFIT_REFIT_WINDOW": "2000",
                    "REFIT_COMPACTION_ROUNDS": "100", **PLAIN_REBUILD}
DEFAULT = "refit default"
YARDSTICK_NAME = "refit window/every (yardstick in refit)"
SOURCE_NAME = "refit source design (10 rounds, eta 0.3, no cap)"
PREVIOUS_NAME = "refit 0.1 default (3 rounds at 0.05, rebuild 8th, 2,000 × 100)"
LAST_DEFAULT = {"REFIT_COMPACTION_ROUNDS": "50", "REFIT_REBUILD_ETA": "0.2",
                "REFIT_RECENCY_HALF_LIFE": "1000"}
LAST_NAME = "refit 0.2 default (rebuild 50 rounds at 0.2, half-life 1,000)"
REFIT_POLICIES = [
    (DEFAULT, {}),
    (YARDSTICK_NAME, YARDSTICK),
    (SOURCE_NAME, SOURCE_DESIGN),
    (PREVIOUS_NAME, PREVIOUS_DEFAULT),
    (LAST_NAME, LAST_DEFAULT),
    ("refit VALIDATION=off", {"REFIT_VALIDATION": "off"}),
    ("refit REBUILD_EVERY=2", {"REFIT_REBUILD_EVERY": "2"}),
    ("refit REBUILD_EVERY=5", {"REFIT_REBUILD_EVERY": "5"}),
    ("refit REBUILD_EVERY=8", {"REFIT_REBUILD_EVERY": "8"}),
    ("refit REBUILD_EVERY=0 (only at the cap)", {"REFIT_REBUILD_EVERY": "0"}),
    ("refit RECENCY_HALF_LIFE=0 (equal weights)", {"REFIT_RECENCY_HALF_LIFE": "0"}),
    ("refit REFIT_WINDOW=2000", {"REFIT_REFIT_WINDOW": "2000"}),
    ("refit REFIT_WINDOW=3000", {"REFIT_REFIT_WINDOW": "3000"}),
    ("refit REFIT_WINDOW=8000", {"REFIT_REFIT_WINDOW": "8000"}),
    ("refit COMPACTION_ROUNDS=25, REBUILD_ETA=0.4",
     {"REFIT_COMPACTION_ROUNDS": "25", "REFIT_REBUILD_ETA": "0.4"}),
    ("refit COMPACTION_ROUNDS=50, REBUILD_ETA=0.2", {"REFIT_COMPACTION_ROUNDS": "50",
                                                     "REFIT_REBUILD_ETA": "0.2"}),
    ("refit RECENCY_HALF_LIFE=1000", {"REFIT_RECENCY_HALF_LIFE": "1000"}),
    ("refit COMPACTION_ROUNDS=100, REBUILD_ETA=0.1",
     {"REFIT_COMPACTION_ROUNDS": "100", "REFIT_REBUILD_ETA": "0.1"}),
    ("refit ROUNDS_PER_RETRAIN=3", {"REFIT_ROUNDS_PER_RETRAIN": "3"}),
    ("refit CONTINUE_ETA=0.05", {"REFIT_CONTINUE_ETA": "0.05"}),
    ("refit COMPACTION=update, REBUILD_EVERY=0",
     {"REFIT_COMPACTION": "update", "REFIT_REBUILD_EVERY": "0"}),
]
QUICK_POLICIES = [DEFAULT, YARDSTICK_NAME, SOURCE_NAME, PREVIOUS_NAME]
DRIFT_POLICIES = [DEFAULT, "refit VALIDATION=off", SOURCE_NAME, PREVIOUS_NAME, LAST_NAME,
                  "refit REBUILD_EVERY=0 (only at the cap)"]


def progress(label, done, total):
    width = 30
    filled = width * done // max(total, 1)
    tty = sys.stderr.isatty()
    end = "\n" if done == total or not tty else ""
    if tty or done == total or done % 50 == 0:
        sys.stderr.write(f"\r[quality] {label:<52} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total}{end}")
        sys.stderr.flush()


# --- Streams -------------------------------------------------------------------------------------

def drifted(rows, change_batch):
    """The stream with hour h reported as h+12 from batch `change_batch` on: the daily profile the
    models learnt is now twelve hours off."""
    out = []
    for i, r in enumerate(rows):
        if i >= change_batch * BATCH:
            x = dict(r["x"])
            x["hr"] = (x["hr"] + 12) % 24
            r = {"x": x, "y": r["y"]}
        out.append(r)
    return out


def matrix(rows):
    return np.array([[r["x"].get(f, np.nan) for f in bikeshare.FEATURES] for r in rows],
                    dtype=np.float32)


def labels(rows):
    return np.array([r["y"] for r in rows], dtype=np.float32).astype(np.float64)


def errors(predictions, rows):
    e = np.asarray(predictions, dtype=np.float64) - labels(rows)
    return float(np.mean(np.abs(e))), float(np.sqrt(np.mean(e ** 2)))


# --- Python reference policies -------------------------------------------------------------------

def fresh_model(rows):
    d = xgb.DMatrix(matrix(rows), label=labels(rows), feature_names=bikeshare.FEATURES)
    return xgb.train(PARAMS, d, num_boost_round=ROUNDS)


def predict(model, rows):
    return model.predict(xgb.DMatrix(matrix(rows), feature_names=bikeshare.FEATURES))


def run_window(rows, every, label):
    """A fresh model on the last WINDOW actuals after every `every`th batch (and the first)."""
    batches = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    out, model = [], None
    for k, batch in enumerate(batches):
        if model is not None:
            out.append(dict(zip(("mae", "rmse"), errors(predict(model, batch), batch))))
        started = time.process_time()
        if model is None or (every and k % every == 0):
            seen = rows[:(k + 1) * BATCH]
            model = fresh_model(seen[-WINDOW:])
        if out:
            out[-1]["train_ms"] = (time.process_time() - started) * 1e3
        progress(label, k + 1, len(batches))
    return out


def run_arf(rows, label):
    """River's ARFRegressor: each batch predicted before any of its rows is learnt."""
    from river import forest

    model = forest.ARFRegressor(seed=0)
    batches = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    out = []
    for k, batch in enumerate(batches):
        if k:
            p = [model.predict_one(r["x"]) for r in batch]
            out.append(dict(zip(("mae", "rmse"), errors(p, batch))))
        started = time.process_time()
        for r in batch:
            model.learn_one(r["x"], r["y"])
        if out:
            out[-1]["train_ms"] = (time.process_time() - started) * 1e3
        progress(label, k + 1, len(batches))
    return out


# --- refit, the real service ---------------------------------------------------------------------

class Refit:
    """A database of its own, `refit migrate`, then `refit run` with the policy's environment."""

    def __init__(self, binary, admin_url, policy_env):
        self.binary = binary
        self.db = Database(admin_url, "refit_quality")
        self.url, tag = self.db.url, self.db.tag
        self.env = dict(os.environ)
        self.env.update({
            "DATABASE_URL": self.url,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
            "KAFKA_BROKERS": os.environ.get("KAFKA_BROKERS", "127.0.0.1:19092"),
            "REFIT_TOPIC": f"refit-quality-{tag}",
            "REFIT_TOPIC_PARTITIONS": "1",
            "REFIT_CACHE_KEY_PREFIX": f"quality:{tag}:model:",
            "REFIT_POLL_INTERVAL_MS": "50",
            "REFIT_HTTP_ADDR": "off",
            # The benchmark rescores exported old versions: keep every artifact.
            "REFIT_RETENTION": "off",
            "REFIT_FEATURES": ",".join(bikeshare.FEATURES),
            "RUST_LOG": "warn",
        })
        self.env.update(policy_env)
        self.process = None

    def __enter__(self):
        self.db.create(self.binary, self.env)
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([self.binary, "run"], env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.conn = psycopg.connect(self.url, autocommit=True)
        return self

    def __exit__(self, *exc):
        self.conn.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.db.drop()

    def insert(self, batch):
        """One upstream transaction: the batch's requests and their actuals."""
        ids = [uuid.uuid4() for _ in batch]
        with self.conn.transaction():
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO prediction_requests (request_id, user_id, features) "
                    "VALUES (%s, %s, %s::jsonb)",
                    [(i, USER, json.dumps(r["x"])) for i, r in zip(ids, batch)])
                cur.executemany(
                    "INSERT INTO actual_rentals (request_id, actual_value) VALUES (%s, %s)",
                    [(i, r["y"]) for i, r in zip(ids, batch)])

    def wait_for_versions(self, n, deadline_s=300):
        deadline = time.monotonic() + deadline_s
        while True:
            got = self.conn.execute("SELECT count(*) FROM refit_model_versions WHERE user_id = %s",
                                    (USER,)).fetchone()[0]
            if got >= n:
                return
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"refit exited: {self.log.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no version {n} within {deadline_s}s")
            time.sleep(0.01)

    def cpu_seconds(self):
        """CPU the `refit run` process has used so far (user + system), from /proc."""
        return cpu_seconds(self.process.pid)

    def versions(self):
        return self.conn.execute(
            "SELECT version, status, metrics, timings_ms FROM refit_model_versions "
            "WHERE user_id = %s ORDER BY version", (USER,)).fetchall()

    def export(self, version, path):
        subprocess.run([self.binary, "models", "export", "--user", USER, "--version",
                        str(version), "--out", str(path)], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)


def run_refit(binary, admin_url, rows, policy_env, label, check_every=0):
    """Replays the stream through `refit run`; returns per-batch live errors and train times, and
    the largest relative difference between refit's live MAE and Python's on sampled versions."""
    batches = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    with Refit(binary, admin_url, policy_env) as refit:
        cpu_before = refit.cpu_seconds()
        for k, batch in enumerate(batches):
            refit.insert(batch)
            refit.wait_for_versions(k + 1)
            progress(label, k + 1, len(batches))
        cpu_ms = (refit.cpu_seconds() - cpu_before) * 1e3 / len(batches)
        versions = refit.versions()
        checked = cross_check(refit, versions, batches, check_every) if check_every else None
    out, steps, rejected = [], {}, 0
    for (version, status, metrics, timings), batch in zip(versions, batches):
        step = (metrics.get("policy") or {}).get("step", "?")
        steps[step] = steps.get(step, 0) + 1
        rejected += status == "rejected"
        live = metrics.get("live")
        if version == 1 or not live:
            continue
        assert live["rows"] == len(batch), (version, live)
        out.append({"mae": live["mae"], "rmse": live["rmse"], "train_ms": timings.get("train"),
                    "train_cpu_ms": timings.get("train_cpu"),
                    "status": status, "step": step})
    return {"batches": out, "steps": steps, "rejected": rejected, "versions": len(versions),
            "cross_check": checked, "process_cpu_ms": cpu_ms}


def cross_check(refit, versions, batches, every):
    """Exports the version that served each sampled batch and scores it here: refit's stored live
    error must be the error serving had."""
    worst, n = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for (version, _, metrics, _), batch in zip(versions, batches):
            live = metrics.get("live")
            if not live or version % every:
                continue
            path = Path(tmp) / f"v{live['version']}.ubj"
            refit.export(live["version"], path)
            mae, _ = errors(predict(xgb.Booster(model_file=str(path)), batch), batch)
            worst = max(worst, abs(mae - live["mae"]) / max(mae, 1.0))
            n += 1
    return {"versions": n, "max_relative_difference": worst}


# --- The run -------------------------------------------------------------------------------------

def summarise(name, kind, result, cpu_label):
    b = result["batches"] if isinstance(result, dict) else result
    mae = np.array([x["mae"] for x in b])
    rmse = np.array([x["rmse"] for x in b])
    train = np.array([x["train_ms"] for x in b if x.get("train_ms") is not None])
    # refit's train step's thread CPU; Python's train_ms is already the training's CPU.
    cpu = np.array([x.get("train_cpu_ms", x["train_ms"]) for x in b
                    if x.get("train_cpu_ms", x.get("train_ms")) is not None])
    return {
        "name": name, "kind": kind, "cpu": cpu_label,
        "mae": float(mae.mean()), "rmse": float(np.sqrt(np.mean(rmse ** 2))),
        "train_ms_mean": float(train.mean()) if len(train) else None,
        "train_ms_p50": float(np.percentile(train, 50)) if len(train) else None,
        "train_ms_p90": float(np.percentile(train, 90)) if len(train) else None,
        "train_cpu_ms_mean": float(cpu.mean()) if len(cpu) else None,
        "train_cpu_ms_p50": float(np.percentile(cpu, 50)) if len(cpu) else None,
        "train_cpu_ms_p90": float(np.percentile(cpu, 90)) if len(cpu) else None,
        "per_batch_mae": mae.tolist(),
        **({k: result[k] for k in ("steps", "rejected", "versions", "cross_check",
                                   "process_cpu_ms")}
           if isinstance(result, dict) else {}),
    }


def measure_stream(rows, policies, args, check_every):
    out = []
    n = len(rows) // BATCH
    for name, every in (("window/every (Python)", 1), ("window/10th (Python)", 10),
                        ("never retrain (Python)", 0)):
        res = run_window(rows, every, name)
        out.append(summarise(name, "python", res, "process CPU of xgb.train"))
    res = run_arf(rows, "river/ARFRegressor")
    out.append(summarise("river/ARFRegressor", "python", res, "process CPU of learn_one"))
    for name, env in REFIT_POLICIES:
        if name not in policies:
            continue
        res = run_refit(args.refit, args.admin_url, rows, env, name,
                        check_every if name == DEFAULT else 0)
        out.append(summarise(name, "refit", res, "refit's train step (1 XGBoost thread)"))
    for p in out:
        assert len(p["per_batch_mae"]) == n - 1, (p["name"], len(p["per_batch_mae"]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refit", required=True, help="the refit binary")
    ap.add_argument("--csv", required=True, help="bike-rental-dataset.csv (install-deps.sh)")
    ap.add_argument("--admin-url", default=os.environ.get(
        "REFIT_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--out", default="target/quality/results.json")
    args = ap.parse_args()
    quick = os.environ.get("QUALITY_QUICK") == "1"

    rows = bikeshare.load_rows(args.csv)
    rows = rows[:len(rows) // BATCH * BATCH]
    if quick:
        rows = rows[:100 * BATCH]
    names = [n for n, _ in REFIT_POLICIES]
    policies = QUICK_POLICIES if quick else names
    if os.environ.get("QUALITY_POLICIES"):
        wanted = os.environ["QUALITY_POLICIES"].split(";")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            sys.exit(f"QUALITY_POLICIES: unknown {unknown}; known: {names}")
        policies = wanted
    started = time.time()
    bike = measure_stream(rows, policies, args, check_every=25)
    drift_rows = rows[:min(len(rows), 160 * BATCH)]
    change = len(drift_rows) // BATCH // 2
    drift = measure_stream(drifted(drift_rows, change),
                           [p for p in DRIFT_POLICIES if p in policies], args, check_every=0)
    results = {
        "quick": quick, "batch": BATCH, "rows": len(rows), "params": PARAMS,
        "machine": machine(), "seconds": round(time.time() - started),
        "bike": bike, "drift": {"rows": len(drift_rows), "change_batch": change,
                                "policies": drift},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(args.out)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "xgboost_python": xgb.__version__}


if __name__ == "__main__":
    main()
