"""The kustomize base and overlay: what they build, and that they match the Helm chart."""

from __future__ import annotations

import yaml

from conftest import (
    DEPLOY,
    SECRET_VARIABLES,
    config_env,
    env_names_set,
    kustomize,
    main_container,
    main_deployment,
    of_kind,
    one,
    render,
)


def test_base_builds_the_expected_kinds():
    docs = kustomize(DEPLOY / "base")
    assert sorted(d["kind"] for d in docs) == sorted([
        "ConfigMap", "Deployment", "Job", "NetworkPolicy", "PodDisruptionBudget", "Service",
        "ServiceAccount", "ServiceMonitor",
    ])
    # The Secret is the operator's (deploy/secret.template.yaml): never shipped with placeholders.
    assert not of_kind(docs, "Secret")
    assert main_deployment(docs)["spec"]["replicas"] == 2
    job = one(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_config_map_name_is_hashed_and_referenced():
    docs = kustomize(DEPLOY / "base")
    name = one(docs, "ConfigMap")["metadata"]["name"]
    assert name.startswith("refit-config-") and name != "refit-config"
    refs = {src["configMapRef"]["name"] for src in main_container(docs)["envFrom"]}
    assert refs == {name}


def test_production_overlay():
    docs = kustomize(DEPLOY / "overlays" / "production")
    assert {d["metadata"].get("namespace") for d in docs} == {"refit"}
    deployment = main_deployment(docs)
    assert "replicas" not in deployment["spec"], "the KEDA component hands replicas to KEDA"
    scaled = one(docs, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 12
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    assert trigger["metadata"]["query"] == (
        "SELECT count(*) FROM (SELECT 1 FROM refit_pending GROUP BY user_id HAVING count(*) >= 50) AS due"
    )
    auth = one(docs, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "connection", "name": "refit", "key": "DATABASE_URL"}]
    env = config_env(docs, main_container(docs))
    assert env["REFIT_ENVIRONMENT"] == "production"
    assert env["REFIT_LOG_FORMAT"] == "json", "merged, not replaced"
    images = {c["image"] for c in [main_container(docs), *deployment["spec"]["template"]["spec"]["initContainers"]]}
    assert images == {"registry.example.com/ml/refit:0.1.0"}
    assert one(docs, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_secret_template_matches_what_the_manifests_read():
    with open(DEPLOY / "secret.template.yaml") as f:
        template = yaml.safe_load(f)
    docs = kustomize(DEPLOY / "base")
    refs = {}
    for e in main_container(docs)["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[ref["key"]] = ref
            assert ref["name"] == template["metadata"]["name"]
    assert set(refs) == set(template["stringData"]) == SECRET_VARIABLES


def test_kustomize_and_helm_agree():
    """The two packagings of one service: same kinds, variables, probes and security."""
    base = kustomize(DEPLOY / "base")
    chart = render({"config": {"lokiUrl": "http://loki-gateway.monitoring.svc.cluster.local"}})
    # The chart's own Secret, and its `helm test` Pod (kustomize has no test hooks).
    helm_kinds = {d["kind"] for d in chart} - {"Secret", "Pod"}
    assert {d["kind"] for d in base} == helm_kinds
    assert set(env_names_set(base)) == set(env_names_set(chart))
    b, h = main_container(base), main_container(chart)
    for key in ("livenessProbe", "readinessProbe", "startupProbe", "securityContext", "resources", "args"):
        assert b[key] == h[key], key
    bspec = main_deployment(base)["spec"]["template"]["spec"]
    hspec = main_deployment(chart)["spec"]["template"]["spec"]
    for key in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken"):
        assert bspec[key] == hspec[key], key
    benv, henv = config_env(base, b), config_env(chart, h)
    for key in ("REFIT_LOG_FORMAT", "REFIT_HTTP_ADDR", "REFIT_RETRAIN_THRESHOLD", "REFIT_TOPIC"):
        assert benv[key] == henv[key], key
