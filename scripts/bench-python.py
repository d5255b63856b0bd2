#!/usr/bin/env python3
"""The straightforward Python implementation of refit's sequence, the reference for `make bench`.

It is "the straightforward Python sequence", written the way one usually
would, in one process and one thread:

    loop:
        poll   SELECT new actuals (joined with their requests' features) past a
               (timestamp, id) watermark, in pages; buffer them per user in memory
        for each user with >= threshold buffered rows:
            read   the user's latest model from PostgreSQL
            train  xgb.train(params, dtrain, num_boost_round=rounds, xgb_model=booster)
            commit INSERT the new version, COMMIT
            DEL    model:<user_id> in Redis
            produce the model-retrained event to Kafka and wait for the ack (flush)

Known flaw, kept on purpose because it is the sequence being compared: the watermark silently
skips a row whose transaction commits after a later row's was read (see README, "How the sequence keeps its guarantees"),
and buffered rows are lost on a crash. refit does neither.

It stores models in its own table `py_model_versions` (created if missing) and adds an index on
actual_rentals ("timestamp", id) so the watermark poll is an index range scan.

By default it is that one process over every user, loading each model into a Booster and passing
the Booster to xgb.train. The bench's peer run (BENCHMARKS.md) starts it as n processes instead,
`--shard i/n` each (one per core): process i polls and retrains only the users whose
`hashtext(user_id)` falls in shard i, with its own watermark and buffers, so shards never share a
user; and `--model-load bytes` passes the stored artifact straight to
`xgb.train(xgb_model=bytearray(...))`, which parses it once (see load_previous).

Every event carries the per-step timings in milliseconds. On SIGTERM/SIGINT it finishes the
retrain in hand, flushes the producer and prints one JSON summary line on stdout.
"""
import argparse
import json
import math
import resource
import signal
import sys
import time
import uuid
from collections import defaultdict, deque
from datetime import datetime, timezone

import numpy as np
import psycopg
import redis
import xgboost as xgb
from confluent_kafka import Producer

stop = False


def on_signal(_sig, _frame):
    global stop
    stop = True


def ms(t0, t1):
    return round((t1 - t0) * 1000.0, 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    ap.add_argument("--brokers", default="127.0.0.1:19092")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--key-prefix", default="model:")
    ap.add_argument("--threshold", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--params", default="{}", help="XGBoost parameters, JSON object")
    ap.add_argument("--nthread", type=int, default=1)
    ap.add_argument("--poll-interval-ms", type=int, default=100)
    ap.add_argument("--page", type=int, default=10000, help="rows per poll query")
    ap.add_argument(
        "--shard",
        default="0/1",
        help="i/n: poll and retrain only the users of shard i of n (hashtext(user_id)); default all",
    )
    ap.add_argument(
        "--model-load",
        choices=["booster", "bytes"],
        default="booster",
        help="booster: Booster(model_file=bytes) passed to xgb.train (the straightforward way, two "
        "parses); bytes: the stored bytes passed straight to xgb.train (one parse)",
    )
    ap.add_argument(
        "--application-name",
        default=None,
        help="PostgreSQL application_name (default refit-bench-python, with -<i>of<n> when sharded)",
    )
    args = ap.parse_args()
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
    except ValueError:
        ap.error("--shard takes i/n, e.g. 0/2")
    if shards < 1 or not 0 <= shard < shards:
        ap.error("--shard i/n needs 0 <= i < n")
    app = args.application_name or (
        "refit-bench-python" if shards == 1 else f"refit-bench-python-{shard}of{shards}"
    )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    params = {k: v for k, v in json.loads(args.params).items()}
    params["nthread"] = args.nthread
    # The same thread count for what `nthread` in params does not reach (building a DMatrix,
    # loading a model), as refit gives XGBoost: left at every core, those calls wait for a second
    # OpenMP thread on a busy 2-core machine (BENCHMARKS.md).
    xgb.set_config(nthread=args.nthread)

    db = psycopg.connect(args.database_url, application_name=app)
    with db.cursor() as cur:
        # Shards start together: one at a time through the IF NOT EXISTS DDL (two concurrent
        # CREATE TABLE IF NOT EXISTS can both try to create it).
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('refit-bench-python-ddl'))")
        cur.execute(
            """CREATE TABLE IF NOT EXISTS py_model_versions (
                   user_id text NOT NULL, version integer NOT NULL, artifact bytea NOT NULL,
                   trees integer NOT NULL, features jsonb NOT NULL,
                   created_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (user_id, version))"""
        )
        cur.execute('CREATE INDEX IF NOT EXISTS py_actuals_watermark ON actual_rentals ("timestamp", id)')
    db.commit()
    cache = redis.Redis.from_url(args.redis_url)
    producer = Producer(
        {
            "bootstrap.servers": args.brokers,
            "client.id": app,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
        }
    )
    print(json.dumps({"ready": True}), flush=True)

    watermark = (datetime(1970, 1, 1, tzinfo=timezone.utc), 0)
    buffers = defaultdict(deque)  # user -> deque of (features_text, actual_value)
    due = deque()  # users with >= threshold rows, in the order they became due
    queued = set()
    retrains = 0
    delivery_errors = []
    announce_ms = []  # produce + wait for the ack; not in the event, which is sent before it ends
    # A shard's users: a stable function of user_id, computed by PostgreSQL so that only this
    # shard's rows come back (the same range of the watermark index is read by every shard).
    in_shard = "" if shards == 1 else f"AND mod(hashtext(r.user_id) & 2147483647, {shards}) = {shard}"
    poll_query = f"""
        SELECT a.id, a."timestamp", r.user_id, r.features::text, a.actual_value
          FROM actual_rentals a JOIN prediction_requests r USING (request_id)
         WHERE (a."timestamp", a.id) > (%s, %s) {in_shard}
         ORDER BY a."timestamp", a.id
         LIMIT %s"""

    while not stop:
        # --- poll ---------------------------------------------------------------------------
        t_poll = time.perf_counter()
        with db.cursor() as cur:
            cur.execute(poll_query, (watermark[0], watermark[1], args.page))
            rows = cur.fetchall()
        db.commit()
        poll_ms = ms(t_poll, time.perf_counter())
        for actual_id, ts, user_id, features, value in rows:
            buffers[user_id].append((features, value))
            if len(buffers[user_id]) >= args.threshold and user_id not in queued:
                queued.add(user_id)
                due.append(user_id)
        if rows:
            watermark = (rows[-1][1], rows[-1][0])
        # --- retrain every due user, batch after batch ----------------------------------------
        while due and not stop:
            user_id = due.popleft()
            queued.discard(user_id)
            buf = buffers[user_id]
            while len(buf) >= args.threshold and not stop:
                batch = [buf.popleft() for _ in range(args.threshold)]
                announce_ms.append(
                    retrain(args, params, db, cache, producer, user_id, batch, poll_ms, delivery_errors)
                )
                retrains += 1
            if not buf:
                del buffers[user_id]
        if not rows:
            time.sleep(args.poll_interval_ms / 1000.0)

    producer.flush(10)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "summary": True,
                "shard": f"{shard}/{shards}",
                "model_load": args.model_load,
                "retrains": retrains,
                "delivery_errors": len(delivery_errors),
                "announce_ms": percentiles(announce_ms),
                "maxrss_kb": usage.ru_maxrss,
                "cpu_user_s": usage.ru_utime,
                "cpu_sys_s": usage.ru_stime,
            }
        ),
        flush=True,
    )


def percentiles(values):
    if not values:
        return {}
    v = sorted(values)
    at = lambda q: v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]
    return {"n": len(v), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": v[-1]}


def load_previous(how, artifact):
    """What xgb.train(xgb_model=...) continues from.

    In xgboost 3.x, xgb.train builds its Booster with Booster(params, [dtrain], model_file=xgb_model):
    - given a Booster, it snapshots that Booster (XGBoosterSerializeToBuffer, the whole model and
      its configuration) and parses the snapshot again (XGBoosterUnserializeFromBuffer): with
      Booster(model_file=bytes) first, the model is parsed twice and serialised once in between;
    - given a bytearray, it calls load_model(bytearray) → XGBoosterLoadModelFromBuffer once, into
      the Booster that then trains. So the stored UBJSON goes straight in: one parse.
    load_model reads the buffer through ctypes' from_buffer, which needs a writable buffer: psycopg
    returns bytea as bytes, and bytearray(...) is a copy of it (a memcpy, not a parse).
    """
    if how == "bytes":
        return bytearray(artifact)
    return xgb.Booster(model_file=bytearray(artifact))


def retrain(args, params, db, cache, producer, user_id, batch, poll_ms, delivery_errors):
    timings = {"poll": poll_ms}
    t0 = time.perf_counter()
    # read: the latest model of the user
    with db.cursor() as cur:
        cur.execute(
            "SELECT version, artifact, features FROM py_model_versions WHERE user_id = %s ORDER BY version DESC LIMIT 1",
            (user_id,),
        )
        head = cur.fetchone()
    t1 = time.perf_counter()
    timings["read"] = ms(t0, t1)

    # train: continued training exactly as xgb.train(xgb_model=...) does
    objects = [json.loads(f) for f, _ in batch]
    if head is None:
        names = sorted({k for o in objects for k in o})
        previous = None
        version = 1
    else:
        names = head[2]
        version = head[0] + 1
    x = np.array(
        [[float(o[n]) if o.get(n) is not None else math.nan for n in names] for o in objects],
        dtype=np.float32,
    )
    y = np.array([v for _, v in batch], dtype=np.float32)
    dtrain = xgb.DMatrix(x, label=y, feature_names=names)
    t_load = time.perf_counter()
    if head is not None:
        previous = load_previous(args.model_load, head[1])
    t_boost = time.perf_counter()
    booster = xgb.train(params, dtrain, num_boost_round=args.rounds, xgb_model=previous)
    t_save = time.perf_counter()
    artifact = bytes(booster.save_raw("ubj"))
    t2 = time.perf_counter()
    trees = booster.num_boosted_rounds()
    timings["train"] = ms(t1, t2)
    if args.model_load == "booster":
        timings["load"] = ms(t_load, t_boost)
    # With --model-load bytes the one parse happens inside xgb.train: "boost" includes it, and
    # there is no separate "load".
    timings["boost"] = ms(t_boost if args.model_load == "booster" else t_load, t_save)
    timings["save"] = ms(t_save, t2)

    # commit
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO py_model_versions (user_id, version, artifact, trees, features) VALUES (%s, %s, %s, %s, %s)",
            (user_id, version, artifact, trees, json.dumps(names)),
        )
    db.commit()
    t3 = time.perf_counter()
    timings["commit"] = ms(t2, t3)

    # invalidate
    cache.delete(args.key_prefix + user_id)
    t4 = time.perf_counter()
    timings["invalidate"] = ms(t3, t4)

    # announce, waiting for the broker's acknowledgement
    event_id = str(uuid.uuid4())
    event = {
        "event_id": event_id,
        "retrain_id": event_id,
        "user_id": user_id,
        "status": "success",
        "model_version": version,
        "previous_version": head[0] if head else None,
        "rows_used": len(batch),
        "trees": trees,
        "timings_ms": timings,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }

    def delivered(err, _msg):
        if err is not None:
            delivery_errors.append(str(err))

    producer.produce(args.topic, key=user_id.encode(), value=json.dumps(event).encode(), on_delivery=delivered)
    producer.flush(10)
    announce_ms = ms(t4, time.perf_counter())
    # When the broker acknowledged the event (the bench measures throughput up to the last ack).
    print(
        json.dumps(
            {
                "step": "announce",
                "retrain_id": event_id,
                "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                "duration_ms": announce_ms,
            }
        )
    )
    return announce_ms


if __name__ == "__main__":
    sys.exit(main())
