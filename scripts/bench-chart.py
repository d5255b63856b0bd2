#!/usr/bin/env python3
"""One PNG of a `make bench` run: python scripts/bench-chart.py RESULTS_JSON OUT_PNG.

A 2 x 3 grid, one panel per phase, each drawn from whatever its section of results.json holds
(every section is optional: a phase that did not run gets a small "not measured" note):

  1, 2  steps (scenario 1) at 100 and at 1,000 trees: p50 of each retrain step, refit vs the
        Python reference vs the floor (the XGBoost C API alone, phase `floor`); the median over
        the repeats, whiskers = min-max of the repeats' p50s; log scale.
  3     freshness (scenario 2): p50/p95/p99 of batch commit -> event read per arrival rate, with
        the targets (p50 25 ms, p99 100 ms); the Python reference's (freshness_python) hatched
        next to refit's, on a log axis, when it ran.
  4     ramp (scenario 3): offered vs completed retrains/s, the y = x line, the 200/s target, the
        sustained rate marked and the steps that did not keep up crossed.
  5     drain (throughput_refit / throughput_python): retrains/s per round, peak RSS in the legend.
  6     growth: artifact size and trees of each served version (top) and train time (rolling
        median, bottom) per version, one colour per tree cap.

Needs only matplotlib (Agg backend) and the standard library.
"""
import json
import math
import statistics
import sys
import traceback

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

REFIT, PYTHON = "#1f77b4", "#ff7f0e"
FLOOR_ART, FLOOR_MEM = "#555555", "#b0b0b0"
CAP_COLORS = ["#1f77b4", "#9467bd", "#2ca02c", "#8c564b", "#e377c2"]
NOTE = dict(ha="center", va="center", color="#777777", fontsize=10)


# --- small, forgiving accessors -------------------------------------------------------------

def num(v):
    """v as a finite float, or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def dig(obj, *keys):
    """obj[k1][k2]... or None if any level is missing or of the wrong type."""
    for k in keys:
        if isinstance(obj, dict):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def as_list(v):
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def spread(vals):
    """(median, min, max) of the numbers in vals, or None."""
    vals = [v for v in (num(x) for x in vals) if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def empty(ax, title, note="not measured in this run"):
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, note, transform=ax.transAxes, **NOTE)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_color("#dddddd")


def plain(v, _pos=None):
    """A log axis' tick as a plain number: 0.01, 0.5, 20, 1,000."""
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def fmt_ms(v):
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


# --- 1, 2: per-step cost ----------------------------------------------------------------------

# (key in the steps' STEPS object, key in the floor's summaries, label)
STEP_ROWS = [
    ("read", None, "read"),
    ("train", "total", "train (total)"),
    ("train_load", "load", "   load"),
    ("train_boost", "boost", "   boost"),
    ("train_save", "save", "   save"),
    ("commit", None, "commit"),
    ("invalidate", None, "cache DEL"),
    ("announce", None, "announce"),
    ("end_to_end", None, "end to end\n(commit→event)"),
]


def step_stats(results, trees, impl, step):
    """The median (and min, max) over the repeats of one step's p50, or None."""
    return spread(
        dig(run, impl, step, "p50")
        for run in as_list(results.get("steps"))
        if run.get("trees") == trees and (num(dig(run, impl, step, "n")) or 0) > 0
    )


def floor_model(results, trees):
    for m in as_list(dig(results, "floor", "models")):
        if m.get("trees") == trees:
            return m
    return None


def steps_panel(ax, results, trees):
    title = (f"Scenario 1: one 50-row retrain on a {trees:,}-tree model\n"
             "p50 per step, ms (log); median of runs, whiskers min–max")
    runs = [r for r in as_list(results.get("steps")) if r.get("trees") == trees]
    fm = floor_model(results, trees)
    series = []  # (label, color, [(median, lo, hi) or None per row])
    for impl, label, color in (("refit", "refit", REFIT), ("python", "Python", PYTHON)):
        vals = [step_stats(results, trees, impl, key) for key, _, _ in STEP_ROWS]
        if any(vals):
            series.append((label, color, vals))
    if fm:
        for variant, label, color in (("from_artifact", "floor: C API, load artifact", FLOOR_ART),
                                      ("in_memory", "floor: C API, model in memory", FLOOR_MEM)):
            vals = []
            for _, fkey, _ in STEP_ROWS:
                v = num(dig(fm, variant, fkey, "p50")) if fkey else None
                # an in-memory "load" is ~0: leave it out rather than draw a sliver at 1e-3 ms
                if variant == "in_memory" and fkey == "load":
                    v = None
                vals.append((v, v, v) if v is not None else None)
            if any(vals):
                series.append((label, color, vals))
    if not series:
        return empty(ax, title)

    rows = [i for i in range(len(STEP_ROWS)) if any(s[2][i] for s in series)]
    n = len(series)
    h = 0.8 / n
    for k, (label, color, vals) in enumerate(series):
        ys, ws, lo, hi = [], [], [], []
        for pos, i in enumerate(rows):
            if vals[i] is None or vals[i][0] <= 0:
                continue
            med, mn, mx = vals[i]
            ys.append(pos - 0.4 + h * (k + 0.5))
            ws.append(med)
            lo.append(med - mn)
            hi.append(mx - med)
        if not ys:
            continue
        err = [lo, hi] if any(lo) or any(hi) else None
        ax.barh(ys, ws, h * 0.92, color=color, label=label, xerr=err,
                error_kw=dict(lw=0.8, capsize=1.5, ecolor="#333333"))
    ax.set_yticks(range(len(rows)), [STEP_ROWS[i][2] for i in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(plain))
    ax.grid(axis="x", which="major", color="#e5e5e5", lw=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("ms (log scale)", fontsize=9)
    ax.set_title(title, fontsize=10)


def steps_legend(fig, axes):
    """One legend for both per-step panels, above them."""
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        box = axes[0].get_position().union([a.get_position() for a in axes])
        fig.legend(list(seen.values()), list(seen.keys()), ncol=len(seen), fontsize=8.5,
                   loc="lower center", bbox_to_anchor=((box.x0 + box.x1) / 2, 0.925),
                   frameon=False, handlelength=1.5, columnspacing=1.5)


# --- 3: freshness -----------------------------------------------------------------------------

def freshness_panel(ax, results):
    title = "Scenario 2: freshness, batch COMMIT → event read\nper arrival rate, ms"

    def usable(key):
        return [r for r in as_list(results.get(key))
                if num(r.get("rate_batches_per_s")) is not None and isinstance(r.get("freshness_ms"), dict)]

    runs = usable("freshness")
    if not runs:
        return empty(ax, title)
    # The Python reference on the same stream (freshness_python), hatched next to refit's bars.
    groups = [("refit", runs, None)]
    py_runs = usable("freshness_python")
    if py_runs:
        groups.append(("Python", py_runs, "////"))
    rates = sorted({num(r["rate_batches_per_s"]) for r in runs})
    pcts = [(p, c) for p, c in (("p50", "#4c9be8"), ("p95", "#f2a541"), ("p99", "#d9534f"))
            if any(num(r["freshness_ms"].get(p)) is not None for r in runs)]
    slots = max(len(pcts) * len(groups), 1)
    w = 0.8 / slots
    top, bottom = 0.0, float("inf")
    for g, (name, gruns, hatch) in enumerate(groups):
        for k, (p, color) in enumerate(pcts):
            xs, hs, lo, hi = [], [], [], []
            for i, rate in enumerate(rates):
                s = spread(r["freshness_ms"].get(p) for r in gruns if num(r["rate_batches_per_s"]) == rate)
                if not s:
                    continue
                xs.append(i - 0.4 + w * (g * len(pcts) + k + 0.5))
                hs.append(s[0])
                lo.append(s[0] - s[1])
                hi.append(s[2] - s[0])
                top = max(top, s[2])
                bottom = min(bottom, s[1])
            if not xs:
                continue
            bars = ax.bar(xs, hs, w * 0.92, color=color, hatch=hatch, edgecolor="white" if hatch else None,
                          linewidth=0, label=p if g == 0 else None,
                          yerr=[lo, hi] if any(lo) or any(hi) else None,
                          error_kw=dict(lw=0.8, capsize=2, ecolor="#333333"))
            ax.bar_label(bars, [fmt_ms(v) for v in hs], fontsize=7 if len(groups) > 1 else 7.5, padding=2)
    for y, label, color in ((25, "target p50 ≤ 25 ms", "#4c9be8"), (100, "target p99 ≤ 100 ms", "#d9534f")):
        ax.axhline(y, color=color, ls="--", lw=1.2, label=label)
    counts = []
    for rate in rates:
        ns = [num(dig(r, "freshness_ms", "n")) for r in runs if num(r["rate_batches_per_s"]) == rate]
        ns = [int(n) for n in ns if n is not None]
        reps = len(ns)
        counts.append(f"{rate:g}/s\n{reps} run{'s' * (reps != 1)}, {sum(ns):,}")
    ax.set_xticks(range(len(rates)), counts, fontsize=8.5)
    ax.set_xlabel("arrival rate, batches/s (refit's runs, batches matched)", fontsize=9)
    ax.set_xlim(-0.6, len(rates) - 0.4)
    if len(groups) > 1:
        # Python's latencies are an order of magnitude longer: a log axis keeps both readable.
        ax.set_yscale("log")
        # Headroom above the tallest bar for the legend.
        ax.set_ylim(max(bottom * 0.5, 0.5), max(130.0, top) * 12)
        ax.yaxis.set_major_formatter(FuncFormatter(plain))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("ms (log)", fontsize=9)
    else:
        ax.set_ylim(0, max(115.0, top * 1.15))
        ax.set_ylabel("ms", fontsize=9)
    ax.grid(axis="y", color="#eeeeee")
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    order = [i for i, lab in enumerate(labels) if not lab.startswith("target")]
    order += [i for i, lab in enumerate(labels) if lab.startswith("target")]
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if len(groups) > 1:
        from matplotlib.patches import Patch
        handles += [Patch(facecolor="#999999"), Patch(facecolor="#999999", hatch="////", edgecolor="white")]
        labels += ["refit (solid)", "Python (hatched)"]
    where = (dict(loc="upper center", ncol=3) if len(groups) > 1
             else dict(loc="center", bbox_to_anchor=(0.5, 0.6), ncol=2))
    ax.legend(handles, labels,
              title=("" if len(groups) > 1 else "refit, ") + "median of runs (whiskers min–max)",
              title_fontsize=7.5,
              fontsize=7, framealpha=0.9, **where)


# --- 4: ramp ----------------------------------------------------------------------------------

def ramp_panel(ax, results):
    ramp = results.get("ramp") if isinstance(results.get("ramp"), dict) else {}
    users = next((num(dig(ramp, impl, "users")) for impl in ("refit", "python")
                  if num(dig(ramp, impl, "users")) is not None), None)
    who = f"{int(users):,} users, " if users else ""
    title = f"Scenario 3: ramp ({who}actuals at rising rates)\noffered vs completed retrains/s"
    top = 0.0
    drew = False
    for impl, label, color in (("refit", "refit", REFIT), ("python", "Python", PYTHON)):
        steps = [s for s in as_list(dig(ramp, impl, "steps"))
                 if num(s.get("offered_per_s")) is not None and num(s.get("completed_per_s")) is not None]
        if not steps:
            continue
        drew = True
        steps.sort(key=lambda s: s["offered_per_s"])
        xs = [s["offered_per_s"] for s in steps]
        ys = [s["completed_per_s"] for s in steps]
        top = max(top, *xs, *ys)
        sus = num(dig(ramp, impl, "sustained_per_s"))
        lab = f"{label}: sustained {sus:.0f}/s" if sus is not None else label
        ax.plot(xs, ys, "o-", color=color, ms=4, lw=1.5, label=lab, zorder=3)
        bad = [(x, y) for x, y, s in zip(xs, ys, steps) if s.get("kept_up") is False]
        if bad:
            ax.plot(*zip(*bad), "x", color="#d62728", ms=9, mew=2, zorder=4)
        kept = [(x, y) for x, y, s in zip(xs, ys, steps) if s.get("kept_up") is not False]
        if sus is not None and kept:
            # the sustained rate is the highest step kept up: ring that step
            x, y = min(kept, key=lambda p: abs(p[0] - sus))
            ax.plot([x], [y], "o", ms=13, mfc="none", mec=color, mew=2, zorder=4)
    if not drew:
        return empty(ax, title)
    any_bad = any(s.get("kept_up") is False for impl in ("refit", "python")
                  for s in as_list(dig(ramp, impl, "steps")))
    top = max(top, 210.0) * 1.08
    ax.plot([0, top], [0, top], color="#bbbbbb", lw=1, ls="-", zorder=1)
    ax.text(top * 0.97, top * 0.97, "completed = offered", rotation=0, ha="right", va="top",
            fontsize=7.5, color="#888888")
    ax.axhline(200, color="#2ca02c", ls="--", lw=1.2, zorder=1)
    ax.text(0.02, 200, "target 200/s", transform=ax.get_yaxis_transform(), va="bottom",
            fontsize=8, color="#2ca02c")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("offered retrains/s (achieved by the writer)", fontsize=9)
    ax.set_ylabel("completed retrains/s", fontsize=9)
    ax.grid(color="#eeeeee")
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="", marker="o", ms=10, mfc="none", mec="#444444", mew=1.5))
    labels.append("sustained step")
    if any_bad:
        handles.append(Line2D([], [], ls="", marker="x", ms=8, mew=2, color="#d62728"))
        labels.append("did not keep up")
    ax.legend(handles, labels, fontsize=7.5, loc="lower right", framealpha=0.9)
    ax.set_title(title, fontsize=10)


# --- 5: drain ---------------------------------------------------------------------------------

def drain_panel(ax, results):
    impls = [(key, label, color, results.get(key)) for key, label, color in
             (("throughput_refit", "refit", REFIT), ("throughput_python", "Python", PYTHON))
             if isinstance(results.get(key), dict)]
    users = next((num(d.get("users")) for _, _, _, d in impls if num(d.get("users"))), None)
    who = f"{int(users):,} users × 50 actuals" if users else "all users' actuals"
    title = f"Drain: {who} bulk-loaded, per round\nretrains/s (load committed → last event acked)"
    rounds = {}  # round number -> kind
    data = {}  # (impl, round) -> round object
    for key, _, _, d in impls:
        for r in as_list(d.get("rounds")):
            rn = r.get("round")
            if num(r.get("retrains_per_s")) is None or not isinstance(rn, int):
                continue
            rounds.setdefault(rn, r.get("kind") or "")
            data[(key, rn)] = r
    if not data:
        return empty(ax, title)
    order = sorted(rounds)
    present = [i for i in impls if any((i[0], rn) in data for rn in order)]
    w = 0.8 / len(present)
    top = 0.0
    for k, (key, label, color, d) in enumerate(present):
        xs, hs, texts = [], [], []
        for i, rn in enumerate(order):
            r = data.get((key, rn))
            if not r:
                continue
            v = num(r["retrains_per_s"])
            xs.append(i - 0.4 + w * (k + 0.5))
            hs.append(v)
            top = max(top, v)
            n = num(r.get("retrains"))
            texts.append(f"{v:.0f}/s" + (f"\n{int(n):,} retr." if n else "")
                         + ("" if r.get("complete", True) else "\nincomplete"))
        hwm = num(dig(d, "memory", "vm_hwm_mb"))
        lab = f"{label} (peak RSS {hwm:.0f} MB)" if hwm is not None else label
        bars = ax.bar(xs, hs, w * 0.92, color=color, label=lab)
        ax.bar_label(bars, texts, fontsize=7.5, padding=2)
    ticks = []
    for rn in order:
        tick = f"round {rn}" + (f"\n{rounds[rn]}" if rounds[rn] else "")
        a, b = data.get(("throughput_refit", rn)), data.get(("throughput_python", rn))
        if a and b and num(b["retrains_per_s"]):
            tick += f"\nrefit / Python = {a['retrains_per_s'] / b['retrains_per_s']:.1f}×"
        ticks.append(tick)
    ax.set_xticks(range(len(order)), ticks, fontsize=8.5)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("retrains/s", fontsize=9)
    ax.grid(axis="y", color="#eeeeee")
    ax.set_axisbelow(True)
    ax.legend(fontsize=7.5, loc="upper right", framealpha=0.9)
    ax.set_title(title, fontsize=10)


# --- 6: growth --------------------------------------------------------------------------------

def cap_label(g):
    cap = dig(g, "effective_config", "REFIT_MAX_TREES")
    if cap is None:
        cap = g.get("cap")
    try:
        c = int(str(cap))
    except ValueError:
        return f"cap {cap}"
    return "no tree cap" if c == 0 else f"cap {c} trees"


def rolling_median(vals, window=25):
    out = []
    for i in range(len(vals)):
        w = [v for v in vals[max(0, i - window + 1):i + 1] if v is not None]
        out.append(statistics.median(w) if w else None)
    return out


def growth_panel(fig, cell, results):
    title = "Growth of one user, per version"
    series = []  # (label, sizes (x, KB), trees (x, n), train (x, rolling median ms))
    for g in as_list(results.get("growth")):
        vs = sorted((v for v in as_list(g.get("versions")) if num(v.get("version")) is not None),
                    key=lambda v: v["version"])
        served = [v for v in vs if v.get("status", "ready") == "ready"]
        sizes = [(v["version"], v["bytes"] / 1024) for v in served if (num(v.get("bytes")) or 0) > 0]
        trees = [(v["version"], v["trees"]) for v in served if (num(v.get("trees")) or 0) > 0]
        train = [num(v.get("train_ms")) for v in vs]
        roll = [(v["version"], m) for v, m in zip(vs, rolling_median(train)) if m and m > 0]
        if not (sizes or trees or roll):
            continue
        extra = []
        if trees:
            extra.append(f"{int(max(t for _, t in trees)):,} trees")
        if sizes:
            extra.append(f"{max(k for _, k in sizes):,.0f} KB")
        label = cap_label(g) + (f": at most {', '.join(extra)}" if extra else "")
        series.append((label, sizes, trees, roll))
    if not series:
        return empty(fig.add_subplot(cell), title)
    sub = cell.subgridspec(2, 1, hspace=0.08, height_ratios=[1, 1])
    top = fig.add_subplot(sub[0])
    bot = fig.add_subplot(sub[1], sharex=top)
    trees_ax = top.twinx()
    handles = []
    any_size = any_train = False
    for (label, sizes, trees, roll), color in zip(series, CAP_COLORS * 3):
        if sizes:
            any_size = True
            top.plot(*zip(*sizes), color=color, lw=1.1)
        if trees:
            any_size = True
            trees_ax.plot(*zip(*trees), color=color, lw=1.1, ls=(0, (1, 1.5)), alpha=0.9)
        if roll:
            any_train = True
            bot.plot(*zip(*roll), color=color, lw=1.3)
        handles.append((Line2D([], [], color=color, lw=2), label))
    top.set_title(title + "\nserved model's artifact KB and trees (top), train ms (bottom)",
                  fontsize=10)
    if any_size:
        top.set_yscale("log")
        trees_ax.set_yscale("log")
        top.set_ylabel("artifact KB (solid)", fontsize=8.5)
        trees_ax.set_ylabel("trees (dotted)", fontsize=8.5)
        # KB and trees grow together: shift the two scales apart so the lines do not coincide
        kb = [y for line in top.get_lines() for y in line.get_ydata() if y > 0]
        tr = [y for line in trees_ax.get_lines() for y in line.get_ydata() if y > 0]
        if kb:
            top.set_ylim(min(kb) / 10, max(kb) * 1.6)
        if tr:
            trees_ax.set_ylim(min(tr) / 1.6, max(tr) * 10)
        for a, vals in ((top, kb), (trees_ax, tr)):
            a.yaxis.set_major_formatter(FuncFormatter(plain))
            if not vals:  # only one of the two was recorded
                a.yaxis.set_visible(False)
        top.tick_params(labelsize=8)
        trees_ax.tick_params(labelsize=8)
    else:
        top.text(0.5, 0.5, "sizes not recorded", transform=top.transAxes, **NOTE)
        top.set_yticks([])
        trees_ax.set_yticks([])
    top.tick_params(labelbottom=False)
    top.grid(color="#eeeeee")
    if any_train:
        bot.set_yscale("log")
        bot.set_ylabel("train ms (rolling\nmedian of 25)", fontsize=8.5)
        bot.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        bot.yaxis.set_major_formatter(FuncFormatter(plain))
        bot.yaxis.set_minor_formatter(NullFormatter())
    else:
        bot.text(0.5, 0.5, "train times not recorded", transform=bot.transAxes, **NOTE)
        bot.set_yticks([])
    bot.set_xlabel("model version", fontsize=9)
    bot.tick_params(labelsize=8)
    bot.grid(color="#eeeeee")
    (bot if any_train else top).legend(*zip(*handles), fontsize=7,
                                       loc="center right" if any_train else "lower right", framealpha=0.9)


# --- the figure -------------------------------------------------------------------------------

def guarded(draw, ax_or_none, title, *args):
    """Draw one panel; a section with an unexpected shape costs that panel, not the chart."""
    try:
        draw(*args)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print(f"bench-chart: could not draw '{title}' (see above); left it empty", file=sys.stderr)
        if ax_or_none is not None:
            ax_or_none.clear()
            empty(ax_or_none, title, "could not be drawn from this results.json")


def heading(results):
    m = results.get("machine") if isinstance(results.get("machine"), dict) else {}
    started = str(results.get("started") or "")[:16].replace("T", " ")
    parts = ["refit `make bench`" + (f" {started} UTC" if started else "")]
    if results.get("run_id"):
        parts[0] += f" (run {results['run_id']})"
    if results.get("quick"):
        parts.append("BENCH_QUICK (smaller sizes)")
    commit = dig(results, "git", "commit")
    if commit:
        dirty = " + uncommitted changes" if dig(results, "git", "src_uncommitted_changes") else ""
        parts.append(f"refit at {commit}{dirty}")
    mach = ", ".join(x for x in (
        f"{m['nproc']} cores" if m.get("nproc") else "",
        str(m.get("cpu_model") or ""),
        f"{m['memory_gib']:g} GiB" if num(m.get("memory_gib")) else "",
    ) if x)
    if mach:
        parts.append(mach)
    return " — ".join(parts)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        results = json.load(f)
    if not isinstance(results, dict):
        results = {}
    fig = plt.figure(figsize=(15, 9), dpi=110)
    grid = fig.add_gridspec(2, 3, left=0.085, right=0.955, top=0.865, bottom=0.075,
                            wspace=0.42, hspace=0.42)
    ax_s100, ax_s1000, ax_fresh = (fig.add_subplot(grid[0, i]) for i in range(3))
    ax_ramp, ax_drain = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    guarded(steps_panel, ax_s100, "steps, 100 trees", ax_s100, results, 100)
    guarded(steps_panel, ax_s1000, "steps, 1,000 trees", ax_s1000, results, 1000)
    guarded(freshness_panel, ax_fresh, "freshness", ax_fresh, results)
    guarded(ramp_panel, ax_ramp, "ramp", ax_ramp, results)
    guarded(drain_panel, ax_drain, "drain", ax_drain, results)

    def growth():
        try:
            growth_panel(fig, grid[1, 2], results)
        except Exception:
            for ax in fig.axes[5:]:
                fig.delaxes(ax)
            raise

    guarded(growth, None, "growth")
    if len(fig.axes) == 5:  # growth failed: leave a note in its place
        empty(fig.add_subplot(grid[1, 2]), "growth", "could not be drawn from this results.json")
    fig.suptitle(heading(results), fontsize=11.5, y=0.985)
    steps_legend(fig, [ax_s100, ax_s1000])
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
