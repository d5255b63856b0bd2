"""What every rendering (Helm value sets and kustomize entry points) must hold.

- probes and the ServiceMonitor point at routes the binary serves (checked against src/http.rs);
- every environment variable the manifests set is one the binary reads (`refit config --env-names`);
- the pods are locked down (non-root, read-only root fs, no capabilities, seccomp RuntimeDefault);
- names and selectors that refer to each other agree.
"""

from __future__ import annotations

import re
import warnings

import pytest

from conftest import (
    LIVENESS_PATH,
    METRICS_PATH,
    READINESS_PATH,
    ROOT,
    all_manifest_sets,
    binary_env_names,
    by_name,
    config_env,
    containers,
    env_names_set,
    labels_match,
    main_container,
    main_deployment,
    of_kind,
    pod_specs,
)

KNOWN_ROUTES = {LIVENESS_PATH, READINESS_PATH, METRICS_PATH}


def served_routes() -> set[str]:
    """The HTTP routes refit serves, read from src/http.rs (`.route("/path"`)."""
    source = ROOT / "src" / "http.rs"
    if not source.exists():
        warnings.warn(
            f"{source} does not exist yet: checking the probes against the contract's routes "
            f"{sorted(KNOWN_ROUTES)} instead"
        )
        return set(KNOWN_ROUTES)
    routes = set(re.findall(r'\.route\(\s*"(/[^"]*)"', source.read_text()))
    assert routes, f"no `.route(\"/...\"` found in {source}"
    return routes


SETS = sorted(all_manifest_sets().items())
IDS = [label for label, _ in SETS]


def test_the_binary_serves_the_contract_routes():
    missing = KNOWN_ROUTES - served_routes()
    assert not missing, f"src/http.rs does not serve {sorted(missing)}, which the manifests use"


@pytest.mark.parametrize("label,docs", SETS, ids=IDS)
def test_probes_point_at_served_routes(label, docs):
    routes = served_routes()
    c = main_container(docs)
    assert c["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH
    assert c["readinessProbe"]["httpGet"]["path"] == READINESS_PATH
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    # The port the binary listens on (REFIT_HTTP_ADDR) is the container port the probes use.
    addr = config_env(docs, c).get("REFIT_HTTP_ADDR", "0.0.0.0:8080")
    listen_port = int(addr.rsplit(":", 1)[1])
    for _, spec in pod_specs(docs):
        for container in containers(spec):
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container.get(kind)
                if not probe:
                    continue
                get = probe["httpGet"]
                assert get["path"] in routes, f"{label}: {kind} path {get['path']} is not served"
                port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
                assert port == listen_port, f"{label}: {kind} probes {port}, refit listens on {listen_port}"
    for monitor in of_kind(docs, "ServiceMonitor"):
        for ep in monitor["spec"]["endpoints"]:
            assert ep["path"] == METRICS_PATH and ep["path"] in routes


@pytest.mark.parametrize("label,docs", SETS, ids=IDS)
def test_env_vars_are_read_by_the_binary(label, docs):
    read_by_binary = binary_env_names()
    set_by_manifests = env_names_set(docs)
    unknown = {n: sorted(w) for n, w in set_by_manifests.items() if n not in read_by_binary}
    assert not unknown, (
        f"{label}: variables the binary does not read (per `refit config --env-names`): {unknown}"
    )
    assert {"DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS"} <= set(set_by_manifests)


@pytest.mark.parametrize("label,docs", SETS, ids=IDS)
def test_pods_are_locked_down(label, docs):
    for owner, spec in pod_specs(docs):
        pod = spec.get("securityContext") or {}
        assert pod.get("runAsNonRoot") is True, f"{label}: {owner}: runAsNonRoot"
        assert pod.get("runAsUser", 1) != 0, f"{label}: {owner}: runs as root"
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: {owner}: seccomp"
        assert spec.get("automountServiceAccountToken") is False, f"{label}: {owner}: token mounted"
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            where = f"{label}: {owner}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert sc.get("privileged", False) is False, f"{where}: privileged"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities"
            assert not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
            resources = c.get("resources") or {}
            assert resources.get("requests", {}).get("memory"), f"{where}: no memory request"
            assert resources.get("limits", {}).get("memory"), f"{where}: no memory limit"


@pytest.mark.parametrize("label,docs", SETS, ids=IDS)
def test_deployment_shape(label, docs):
    deployment = main_deployment(docs)
    spec = deployment["spec"]["template"]["spec"]
    # Longer than a retrain: refit finishes the one in flight and flushes Kafka on SIGTERM.
    assert spec["terminationGracePeriodSeconds"] >= 30
    has_keda = bool(of_kind(docs, "ScaledObject"))
    if has_keda:
        assert "replicas" not in deployment["spec"], f"{label}: KEDA and replicas would fight"
    else:
        assert deployment["spec"]["replicas"] >= 2, f"{label}: one replica is not highly available"
    assert main_container(docs)["args"] == ["run"]
    env = config_env(docs, main_container(docs))
    assert env.get("REFIT_LOG_FORMAT") in ("json", "text")
    mounts = {m["mountPath"] for m in main_container(docs).get("volumeMounts") or []}
    assert "/tmp" in mounts, f"{label}: a writable /tmp on a read-only root filesystem"


@pytest.mark.parametrize("label,docs", SETS, ids=IDS)
def test_references_resolve(label, docs):
    deployment = main_deployment(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert labels_match(selector, pod_labels), f"{label}: Deployment selector"
    container = main_container(docs)
    port_names = {p["name"] for p in container["ports"]}
    # Selectors that must pick the worker pods and nothing else (not the migration pods).
    job_pods = [j["spec"]["template"]["metadata"]["labels"] for j in of_kind(docs, "Job")]
    for kind in ("Service", "PodDisruptionBudget"):
        for d in of_kind(docs, kind):
            sel = d["spec"]["selector"] if kind == "Service" else d["spec"]["selector"]["matchLabels"]
            assert labels_match(sel, pod_labels), f"{label}: {kind} does not select the pods"
            assert not any(labels_match(sel, j) for j in job_pods), f"{label}: {kind} selects Job pods"
    service = of_kind(docs, "Service")[0]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for monitor in of_kind(docs, "ServiceMonitor"):
        assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    for policy in of_kind(docs, "NetworkPolicy"):
        sel = policy["spec"]["podSelector"]["matchLabels"]
        assert labels_match(sel, pod_labels), f"{label}: NetworkPolicy does not cover the pods"
        for rule in policy["spec"]["ingress"]:
            for p in rule["ports"]:
                assert p["port"] in port_names or p["port"] in {c["containerPort"] for c in container["ports"]}
        egress_ports = {p.get("port") for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
        assert 53 in egress_ports and 5432 in egress_ports, f"{label}: egress misses DNS or PostgreSQL"
    for scaled in of_kind(docs, "ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        for t in scaled["spec"]["triggers"]:
            assert by_name(docs, "TriggerAuthentication", t["authenticationRef"]["name"]), label
    for owner, spec in pod_specs(docs):
        sa = spec.get("serviceAccountName")
        if sa and of_kind(docs, "ServiceAccount"):
            assert by_name(docs, "ServiceAccount", sa) or sa == "default", f"{label}: {owner}: {sa}"
        for c in containers(spec):
            for src in c.get("envFrom") or []:
                if "configMapRef" in src:
                    assert by_name(docs, "ConfigMap", src["configMapRef"]["name"]), f"{label}: {owner}"
            # A Secret rendered alongside must hold every key a required reference names.
            for e in c.get("env") or []:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                secret = ref and by_name(docs, "Secret", ref["name"])
                if secret and not ref.get("optional"):
                    assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}


@pytest.mark.parametrize("label,docs", SETS, ids=IDS)
def test_keda_counts_users_due_at_the_configured_threshold(label, docs):
    scaled = of_kind(docs, "ScaledObject")
    if not scaled:
        pytest.skip(f"{label}: no KEDA")
    (trigger,) = scaled[0]["spec"]["triggers"]
    threshold = config_env(docs, main_container(docs))["REFIT_RETRAIN_THRESHOLD"]
    query = trigger["metadata"]["query"]
    assert f"HAVING count(*) >= {threshold})" in query, f"{label}: {query} vs threshold {threshold}"
