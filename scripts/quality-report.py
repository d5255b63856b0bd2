"""Turns target/quality/results.json (scripts/quality.py) into QUALITY.md's measured section and
the error-over-time charts docs/quality-bike.png and docs/quality-drift.png.

  quality-report.py RESULTS QUALITY_MD

Only the text between the markers `<!-- measured:begin -->` and `<!-- measured:end -->` is
rewritten; the prose around it is the project's.
"""
import json
import sys
from pathlib import Path

import numpy as np

BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"
YARDSTICK = "window/every (Python)"
DEFAULT = "refit default"
REFIT_YARDSTICK = "refit window/every"
SOURCE = "refit source design"
PREVIOUS = "refit 0.1 default"
LAST = "refit 0.2 default"
SMOOTH = 10  # batches in the charts' rolling mean


def rolling(values, n):
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    return np.array([(c[i + 1] - c[max(0, i + 1 - n)]) / (i + 1 - max(0, i + 1 - n))
                     for i in range(len(v))])


def recovery(per_batch, change):
    """Batches after the change until the 5-batch rolling MAE is back within 1.25x of the policy's
    own mean over the 20 batches before it (None: not within the stream). per_batch[i] scores
    batch i+2 (batch 1 has no model yet)."""
    v = np.asarray(per_batch)
    at = change - 1  # index of the first drifted batch
    before = v[max(0, at - 20):at].mean()
    smooth = rolling(v, 5)
    for i in range(at + 4, len(v)):
        if smooth[i] <= 1.25 * before:
            return i - at + 1
    return None


def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


def train_cpu(p):
    """Training CPU per batch: the train step's thread CPU for refit's policies, the training's
    process CPU for Python's."""
    return p.get("train_cpu_ms_mean", p["train_ms_mean"])


def bike_table(policies):
    by = {p["name"]: p for p in policies}
    base = by[YARDSTICK]
    refit_base = next((p for p in policies if p["name"].startswith(REFIT_YARDSTICK)), None)
    lines = ["| policy | MAE | × yardstick | RMSE | train CPU ms/batch (mean · p50 · p90) | "
             "× yardstick train CPU | process CPU ms/batch | steps | rejected |",
             "|---|---:|---:|---:|---|---:|---:|---|---:|"]
    for p in policies:
        cpu_base = refit_base if p["kind"] == "refit" and refit_base else base
        ratio = (train_cpu(p) / train_cpu(cpu_base)
                 if train_cpu(p) is not None and train_cpu(cpu_base) else None)
        steps = ", ".join(f"{k} {v}" for k, v in sorted(p.get("steps", {}).items()))
        rejected = "—" if p.get("rejected") is None else f"{p['rejected']} of {p['versions']}"
        spread = " · ".join(fmt(p.get(f"train_cpu_ms_{k}", p.get(f"train_ms_{k}")))
                            for k in ("mean", "p50", "p90"))
        lines.append(
            f"| {p['name']} | {fmt(p['mae'])} | {p['mae'] / base['mae']:.3f} | {fmt(p['rmse'])} | "
            f"{spread} | {fmt(ratio, 3)} | {fmt(p.get('process_cpu_ms'))} | {steps or '—'} | "
            f"{rejected} |")
    return "\n".join(lines)


def drift_table(drift):
    change = drift["change_batch"]
    lines = ["| policy | MAE before the change | MAE after | batches to recover |",
             "|---|---:|---:|---:|"]
    for p in drift["policies"]:
        v = np.asarray(p["per_batch_mae"])
        r = recovery(v, change)
        lines.append(f"| {p['name']} | {v[:change - 1].mean():,.1f} | {v[change - 1:].mean():,.1f} "
                     f"| {'not within the stream' if r is None else r} |")
    return "\n".join(lines)


def chart(policies, path, title, change=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    for p in policies:
        v = np.asarray(p["per_batch_mae"])
        if v.max() > 1e4:  # a diverging policy would flatten every other line
            v = np.minimum(v, 1e4)
        ax.plot(np.arange(2, len(v) + 2), rolling(v, SMOOTH), label=p["name"], linewidth=1.2)
    if change:
        ax.axvline(change, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("batch (50 actuals)")
    ax.set_ylabel(f"MAE, rentals/hour (rolling mean of {SMOOTH} batches, log scale)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    results = json.loads(Path(sys.argv[1]).read_text())
    doc = Path(sys.argv[2])
    docs = doc.parent / "docs"
    bike, drift = results["bike"], results["drift"]
    main_lines = [p for p in bike if not p["name"].startswith("refit ")
                  or p["name"] == DEFAULT or p["name"].startswith((SOURCE, PREVIOUS, LAST))]
    chart(main_lines, docs / "quality-bike.png", "Bike stream: prequential MAE per batch")
    chart(drift["policies"], docs / "quality-drift.png",
          "Drift stream: the hour of day shifts by 12 h at the dashed line", drift["change_batch"])
    d = next(p for p in bike if p["name"] == DEFAULT)
    check = d.get("cross_check") or {}
    m = results["machine"]
    section = f"""{BEGIN}
Measured by `make quality`{' (QUALITY_QUICK=1)' if results['quick'] else ''} on {m['cpu']},
{m['cores']} cores, Python XGBoost {m['xgboost_python']}; {results['rows']:,} actuals in
batches of {results['batch']}, {results['seconds']} s in all. MAE and RMSE are over every batch but
the first (which has no model yet), each batch scored by the version serving when it arrived.
Quality is deterministic (fixed seeds); the train times vary run to run and are the spread over
batches of one run. refit's rows are refit's own live error as stored with each version; for the
default policy {check.get('versions', 0)} sampled versions were exported and rescored in Python:
largest relative difference {check.get('max_relative_difference', 0):.1e}.

**Bike stream.** *train CPU ms*: the CPU time of refit's train step (loading the model,
scoring, the gate, training, serialising) on its thread, per batch, as stored with each version
(`timings_ms.train_cpu`); for Python, the training's process CPU. A CPU time, not a wall time:
other load on the machine does not move it. *× yardstick train CPU* is the goal's ratio and
compares like with like: refit's rows against refit running the yardstick itself
(`REFIT_REBUILD_EVERY=1`, a 2,000-row window, 100 rounds at the model's eta, equal weights, gate
off); Python's rows against Python's. *process CPU ms/batch*: the whole `refit run` process's CPU
(user + system, from `/proc`) over the stream divided by the batches — everything refit spends,
training or not: polling, database and broker work.

{bike_table(bike)}

![prequential MAE over the bike stream](docs/quality-bike.png)

**Drift stream**: the first {drift['rows']:,} actuals, hour of day shifted by 12 h from batch
{drift['change_batch']} on. Recovery: batches until the 5-batch rolling MAE is back within 1.25×
of the policy's own MAE over the 20 batches before the change.

{drift_table(drift)}

![prequential MAE over the drift stream](docs/quality-drift.png)
{END}"""
    text = doc.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + section + tail)


if __name__ == "__main__":
    main()
