"""Every rendered manifest and every kustomize output, validated against the Kubernetes schemas.

Core kinds: kubernetes-validate, strict (unknown fields are errors), Kubernetes KUBE_VERSION.
CRD kinds (CRD_KINDS only): structural checks of the fields KEDA and the Prometheus Operator need.
"""

from __future__ import annotations

import copy
import re
import subprocess
import tempfile

import kubernetes_validate
import pytest
import yaml

from conftest import (
    CRD_KINDS,
    DEPLOY,
    KUBE_VERSION,
    all_manifest_sets,
    promtool,
    render,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


def validate_core(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata'].get('name')}: {path}: {e.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(
            f"{e.message}: add the kind to CRD_KINDS with a structural check, or fix apiVersion"
        ) from None


def validate_crd(doc: dict) -> None:
    kind = doc["kind"]
    name = doc["metadata"]["name"]
    where = f"{kind}/{name}"
    assert DNS_LABEL.match(name) and len(name) <= 63, f"{where}: bad name"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{where}: unknown top-level field"
    spec = doc.get("spec")
    assert isinstance(spec, dict), f"{where}: spec is required"
    if kind == "ServiceMonitor":
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}
        labels = spec["selector"]["matchLabels"]
        assert labels and all(isinstance(v, str) for v in labels.values()), f"{where}: selector"
        assert spec["endpoints"], f"{where}: endpoints are required"
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, ep
            assert isinstance(ep["port"], str), f"{where}: endpoint port must be the Service port name"
            assert ep["path"].startswith("/")
            for k in ("interval", "scrapeTimeout"):
                if k in ep:
                    assert DURATION.match(ep[k]), f"{where}: {k}={ep[k]!r}"
    elif kind == "ScaledObject":
        assert set(spec) <= {
            "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
            "cooldownPeriod", "triggers", "advanced", "fallback", "idleReplicaCount",
        }, f"{where}: unknown spec field"
        target = spec["scaleTargetRef"]
        assert target["name"] and target.get("kind", "Deployment") == "Deployment"
        for k in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            assert isinstance(spec.get(k), int) and spec[k] >= 0, f"{where}: {k} must be an integer"
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"], f"{where}: min > max"
        assert spec["triggers"], f"{where}: triggers are required"
        for t in spec["triggers"]:
            assert set(t) <= {"type", "name", "metadata", "authenticationRef", "metricType"}
            assert t["type"] and isinstance(t["metadata"], dict)
            # KEDA's trigger metadata is map[string]string: a bare number fails admission.
            bad = {k: v for k, v in t["metadata"].items() if not isinstance(v, str)}
            assert not bad, f"{where}: trigger metadata values must be strings: {bad}"
            if "authenticationRef" in t:
                assert t["authenticationRef"]["name"]
    elif kind == "PrometheusRule":
        assert set(spec) == {"groups"}, f"{where}: unknown spec field"
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules", "limit"}, f"{where}: {group.get('name')}"
            assert group["name"] and group["rules"], f"{where}: a group needs a name and rules"
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}, rule
                assert ("alert" in rule) != ("record" in rule) and rule["expr"], f"{where}: {rule}"
                if "for" in rule:
                    assert DURATION.match(rule["for"]), f"{where}: for={rule['for']!r}"
        promtool_check_rules(spec, where)
    elif kind == "TriggerAuthentication":
        assert set(spec) <= {"secretTargetRef", "env", "podIdentity"}, f"{where}: unknown spec field"
        refs = spec["secretTargetRef"]
        assert refs, f"{where}: secretTargetRef is required"
        for r in refs:
            assert set(r) == {"parameter", "name", "key"}, f"{where}: {r}"
            assert all(isinstance(v, str) and v for v in r.values()), f"{where}: {r}"
    else:  # pragma: no cover - CRD_KINDS and this function must agree
        raise AssertionError(f"no structural check for {kind}")


def promtool_check_rules(spec: dict, where: str) -> None:
    """`promtool check rules` on a PrometheusRule's spec, which is a Prometheus rules file."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(spec, f)
        f.flush()
        result = subprocess.run(
            [promtool(), "check", "rules", f.name], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, f"{where}: promtool check rules:\n{result.stdout}{result.stderr}"


def validate_doc(doc: dict) -> None:
    assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
    if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
        validate_crd(doc)
    else:
        validate_core(doc)


def test_kubernetes_version_is_supported():
    versions = kubernetes_validate.utils.all_versions()
    assert any(v.startswith(KUBE_VERSION.rsplit(".", 1)[0]) for v in versions), versions


SETS = sorted(all_manifest_sets().items())


@pytest.mark.parametrize("label,docs", SETS, ids=[label for label, _ in SETS])
def test_every_manifest_validates(label, docs):
    assert docs, f"{label} rendered nothing"
    for doc in docs:
        validate_doc(doc)


def test_secret_template_validates_and_holds_no_secret():
    with open(DEPLOY / "secret.template.yaml") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert len(docs) == 1 and docs[0]["kind"] == "Secret"
    validate_doc(docs[0])
    for key, value in docs[0]["stringData"].items():
        assert "CHANGE_ME" in value, f"{key}: a template holds placeholders only, got {value!r}"


def test_validation_is_live():
    """A misspelt field and a wrong type must fail: the checks above are not vacuous."""
    deployment = next(d for d in render() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    c = broken["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(AssertionError, match="readinesProbe"):
        validate_doc(broken)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "two"
    with pytest.raises(AssertionError, match="replicas"):
        validate_doc(broken)
    scaled = next(d for d in render({"keda": {"enabled": True}}) if d["kind"] == "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 500
    with pytest.raises(AssertionError, match="strings"):
        validate_doc(scaled)
    rule = next(d for d in render({"prometheusRule": {"enabled": True}}) if d["kind"] == "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "sum(rate(refit_retrains_total[5m]) >"
    with pytest.raises(AssertionError, match="promtool"):
        validate_doc(rule)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(AssertionError, match="CRD_KINDS"):
        validate_doc(unknown)
