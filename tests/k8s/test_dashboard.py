"""The Grafana dashboard (deploy/grafana) and its copy shipped in the Helm chart."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from conftest import CHART, DEPLOY, ROOT, by_name, render

DASHBOARD = DEPLOY / "grafana" / "refit-dashboard.json"
CHART_COPY = CHART / "dashboards" / "refit-dashboard.json"

# The contract's metrics: name -> (type, labels).
CONTRACT_METRICS = {
    "refit_step_duration_seconds": ("histogram", {"step"}),
    "refit_retrains_total": ("counter", {"status"}),
    "refit_pending_actuals": ("gauge", set()),
    "refit_rows_set_aside_total": ("counter", {"reason"}),
    "refit_outbox_backlog": ("gauge", {"kind"}),
    "refit_freshness_seconds": ("histogram", set()),
    "refit_build_info": ("gauge", {"version"}),
    "refit_outbox_oldest_age_seconds": ("gauge", {"kind"}),
    "refit_scheduler_heartbeat_timestamp_seconds": ("gauge", set()),
    "refit_loki_dropped_lines_total": ("counter", set()),
    "refit_loki_send_errors_total": ("counter", set()),
    "refit_live_mae": ("histogram", set()),
    "refit_live_error_ratio": ("histogram", set()),
}


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def exported_metrics() -> set[str]:
    """Metric names the binary registers (src/telemetry/metrics.rs, src/telemetry.rs), or the contract's list
    before they exist."""
    sources = [ROOT / "src" / name for name in ("telemetry/metrics.rs", "telemetry.rs")]
    if not all(source.exists() for source in sources):
        warnings.warn("src/telemetry/metrics.rs does not exist yet: checking against the contract's metrics")
        return set(CONTRACT_METRICS)
    return set().union(*(re.findall(r'"(refit_[a-z_]+)"', s.read_text()) for s in sources))


def panels(dashboard):
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def targets(dashboard):
    for p in panels(dashboard):
        for t in p.get("targets", []):
            yield p, t


def test_chart_copy_is_byte_identical():
    assert CHART_COPY.read_bytes() == DASHBOARD.read_bytes(), (
        f"{CHART_COPY} must be a copy of {DASHBOARD}: cp {DASHBOARD.relative_to(ROOT)} "
        f"{CHART_COPY.relative_to(ROOT)}"
    )


def test_chart_ships_it_verbatim_for_the_sidecar():
    cm = by_name(render(), "ConfigMap", "refit-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["refit-dashboard.json"] == DASHBOARD.read_text()


def test_datasources_are_template_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["loki"]["type"] == "datasource" and variables["loki"]["query"] == "loki"
    for p in panels(dashboard):
        if p["type"] == "row":
            continue
        uid = p["datasource"]["uid"]
        assert uid in ("${datasource}", "${loki}"), f"{p['title']}: hard-coded datasource {uid}"
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == uid


def test_required_panels(dashboard):
    def exprs_of(title_part):
        matching = [p for p in panels(dashboard) if p["type"] != "row" and title_part.lower() in p["title"].lower()]
        assert matching, f"no panel titled like {title_part!r}"
        return " ".join(t["expr"] for p in matching for t in p["targets"])

    retrains = exprs_of("Retrains per second")
    assert "rate(refit_retrains_total" in retrains and "by (status)" in retrains
    p50, p99 = exprs_of("latency p50"), exprs_of("latency p99")
    assert "histogram_quantile(0.5," in p50 and "refit_step_duration_seconds_bucket" in p50
    assert "histogram_quantile(0.99," in p99 and "by (le, step)" in p99
    assert "refit_pending_actuals" in exprs_of("Pending actuals")
    freshness = exprs_of("Freshness")
    assert "histogram_quantile(0.5, " in freshness and "histogram_quantile(0.99, " in freshness
    assert "refit_freshness_seconds_bucket" in freshness
    outbox = exprs_of("Outbox backlog")
    assert "refit_outbox_backlog" in outbox and "by (kind)" in outbox
    set_aside = exprs_of("set aside")
    assert "refit_rows_set_aside_total" in set_aside and "by (reason)" in set_aside
    logs = [p for p in panels(dashboard) if p["type"] == "logs"]
    assert len(logs) == 1 and logs[0]["datasource"]["uid"] == "${loki}"
    assert logs[0]["targets"][0]["expr"].startswith('{service="refit"}')


def test_queries_use_only_exported_metrics_and_labels(dashboard):
    exported = exported_metrics()
    assert set(CONTRACT_METRICS) <= exported, f"the binary lacks {set(CONTRACT_METRICS) - exported}"
    used = set()
    for p, t in targets(dashboard):
        if p["datasource"]["uid"] != "${datasource}":
            continue
        expr = t["expr"]
        for name in re.findall(r"\brefit_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in CONTRACT_METRICS, f"{p['title']}: unknown metric {name}"
            kind, labels = CONTRACT_METRICS[base]
            if name != base:
                assert kind == "histogram", f"{p['title']}: {name} on a {kind}"
            used.add(base)
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                allowed = {"le"} | set().union(*(CONTRACT_METRICS[m][1] for m in CONTRACT_METRICS if m in expr))
                assert label in allowed, f"{p['title']}: grouping by unknown label {label}"
    assert used == set(CONTRACT_METRICS), f"metrics with no panel: {set(CONTRACT_METRICS) - used}"


def test_layout(dashboard):
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for p in panels(dashboard):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
    assert dashboard["uid"] == "refit" and dashboard["title"]
