#!/usr/bin/env python3
"""One PNG of a `make bench` run: python scripts/bench-chart.py RESULTS_JSON OUT_PNG.

Panels (each drawn only when its phase ran): scenario 1's per-step p50 at 100 and 1,000 trees
(refit vs Python), the floor (the C API alone) next to refit's train step, freshness percentiles
against the targets, the ramp (offered vs completed retrains/s), and growth (artifact size and
train time per version).
"""
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REFIT, PYTHON, FLOOR = "#1f77b4", "#ff7f0e", "#7f7f7f"


def p50s(results, trees, impl, step):
    vals = [
        run[impl][step]["p50"]
        for run in results.get("steps") or []
        if run.get("trees") == trees and run.get(impl) and run[impl].get(step, {}).get("n")
    ]
    return statistics.median(vals) if vals else None


def empty(ax, title):
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def steps_panel(ax, results, trees):
    title = f"Scenario 1: one 50-row retrain, {trees:,} trees (p50, ms)"
    steps = [("read", "read"), ("train", "train"), ("commit", "commit"),
             ("invalidate", "DEL"), ("announce", "announce"), ("end_to_end", "commit→\nevent")]
    refit = [p50s(results, trees, "refit", s) for s, _ in steps]
    python = [p50s(results, trees, "python", s) for s, _ in steps]
    if not any(v is not None for v in refit):
        return empty(ax, title)
    x = range(len(steps))
    w = 0.38
    ax.bar([i - w / 2 for i in x], [v or 0 for v in refit], w, label="refit", color=REFIT)
    if any(v is not None for v in python):
        ax.bar([i + w / 2 for i in x], [v or 0 for v in python], w, label="Python", color=PYTHON)
    ax.set_xticks(list(x), [label for _, label in steps])
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title(title)
    ax.legend(loc="upper left")


def floor_panel(ax, results):
    title = "Floor: XGBoost alone vs refit's train step (p50, ms)"
    models = (results.get("floor") or {}).get("models")
    if not models:
        return empty(ax, title)
    labels = [f"{m['trees']:,} trees" for m in models]
    series = [
        ("C API, from artifact", [m["from_artifact"]["total"]["p50"] for m in models], FLOOR),
        ("C API, in memory", [m["in_memory"]["total"]["p50"] for m in models], "#bcbd22"),
        ("refit train step", [p50s(results, m["trees"], "refit", "train") or 0 for m in models], REFIT),
        ("Python train step", [p50s(results, m["trees"], "python", "train") or 0 for m in models], PYTHON),
    ]
    w = 0.2
    for k, (name, vals, color) in enumerate(series):
        ax.bar([i + (k - 1.5) * w for i in range(len(models))], vals, w, label=name, color=color)
    ax.set_xticks(range(len(models)), labels)
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=8)


def freshness_panel(ax, results):
    title = "Scenario 2: freshness, batch commit → event read (ms)"
    runs = results.get("freshness") or []
    if not runs:
        return empty(ax, title)
    rates = sorted({r["rate_batches_per_s"] for r in runs})
    pcts = ["p50", "p95", "p99"]
    w = 0.25
    for k, p in enumerate(pcts):
        vals = []
        for rate in rates:
            xs = [r["freshness_ms"].get(p) for r in runs if r["rate_batches_per_s"] == rate]
            xs = [v for v in xs if v is not None]
            vals.append(statistics.median(xs) if xs else 0)
        ax.bar([i + (k - 1) * w for i in range(len(rates))], vals, w, label=f"refit {p}")
    ax.axhline(25, color="green", ls="--", lw=1, label="target p50 25 ms")
    ax.axhline(100, color="red", ls="--", lw=1, label="target p99 100 ms")
    ax.set_xticks(range(len(rates)), [f"{r:g} batches/s" for r in rates])
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=8)


def ramp_panel(ax, results):
    ramp = results.get("ramp") or {}
    users = (ramp.get("refit") or {}).get("users", "?")
    title = f"Scenario 3: {users:,} users, offered vs completed retrains/s" if isinstance(users, int) else "Scenario 3: ramp"
    if not ramp:
        return empty(ax, title)
    top = 0
    for impl, color in (("refit", REFIT), ("python", PYTHON)):
        data = ramp.get(impl)
        if not data or not data.get("steps"):
            continue
        xs = [s["offered_per_s"] for s in data["steps"]]
        ys = [s["completed_per_s"] for s in data["steps"]]
        top = max(top, *xs, *ys)
        ax.plot(xs, ys, "o-", color=color, label=f"{impl} (sustained {data.get('sustained_per_s', 0):.0f}/s)")
        bad = [(x, y) for x, y, s in zip(xs, ys, data["steps"]) if not s["kept_up"]]
        if bad:
            ax.plot(*zip(*bad), "x", color="red", ms=10)
    ax.plot([0, top], [0, top], color="#cccccc", lw=1, label="completed = offered")
    ax.axhline(200, color="green", ls="--", lw=1, label="target 200/s")
    ax.set_xlabel("offered retrains/s")
    ax.set_ylabel("completed retrains/s")
    ax.set_title(title)
    ax.legend(fontsize=8)


def growth_panel(ax, results):
    title = "Growth of one user: artifact size and train time per version"
    runs = [g for g in results.get("growth") or [] if g.get("versions")]
    if not runs:
        return empty(ax, title)
    ax2 = ax.twinx()
    for g, color in zip(runs, (REFIT, "#9467bd", "#8c564b")):
        cap = (g.get("effective_config") or {}).get("REFIT_MAX_TREES", g.get("cap"))
        v = g["versions"]
        ax.plot([x["version"] for x in v], [(x.get("bytes") or 0) / 1024 for x in v],
                color=color, lw=1, label=f"size, cap {cap}")
        tm = [x.get("train_ms") or 0 for x in v]
        roll = [statistics.median(tm[max(0, i - 25):i + 1]) for i in range(len(tm))]
        ax2.plot([x["version"] for x in v], roll, color=color, lw=1, ls=":", label=f"train ms (rolling median), cap {cap}")
    ax.set_yscale("log")
    ax.set_xlabel("version")
    ax.set_ylabel("artifact KB (log)")
    ax2.set_yscale("log")
    ax2.set_ylabel("train ms (log)")
    ax.set_title(title)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results = json.load(open(sys.argv[1]))
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5), dpi=100)
    steps_panel(axes[0][0], results, 100)
    steps_panel(axes[0][1], results, 1000)
    floor_panel(axes[0][2], results)
    freshness_panel(axes[1][0], results)
    ramp_panel(axes[1][1], results)
    growth_panel(axes[1][2], results)
    m = results.get("machine") or {}
    fig.suptitle(
        f"refit `make bench` {results.get('started', '')[:16]} — {m.get('nproc', '?')} cores, "
        f"{m.get('cpu_model', '?')}; refit at {(results.get('git') or {}).get('commit', '?')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(sys.argv[2])


if __name__ == "__main__":
    main()
