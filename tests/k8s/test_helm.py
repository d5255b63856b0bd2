"""The Helm chart: lint, and rendering with default and non-default values through the Helm engine."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
import yaml

from conftest import (
    ALERT_RULES,
    CHART,
    READINESS_PATH,
    ROOT,
    KUBE_VERSION,
    SECRET_VARIABLES,
    by_name,
    config_env,
    containers,
    labels_match,
    load_values,
    main_container,
    main_deployment,
    of_kind,
    one,
    pod_specs,
    render,
    render_raw,
)

ERROR, WARNING = 3, 2


def lint(values=None):
    return helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")


def problems(report):
    return [m for m in report["messages"] if m["severity"] >= WARNING] + [
        {"error": e} for e in report["errors"]
    ]


@pytest.mark.parametrize("values_file", [None, "nondefault.yaml", "chart-secret.yaml"])
def test_lint_is_clean(values_file):
    report = lint(load_values(values_file) if values_file else None)
    assert report["total_charts_linted"] == 1
    assert not problems(report), problems(report)


def test_lint_catches_bad_values():
    assert problems(lint({"replicaCount": "three"}))
    assert problems(lint({"config": {"logFormat": "xml"}}))
    assert problems(lint({"unknownKey": True}))


def test_chart_metadata():
    meta = helm.Chart.load(str(CHART)).metadata
    assert meta["name"] == "refit" and meta["apiVersion"] == "v2"
    assert meta["appVersion"] and meta["version"]


def test_every_value_is_documented():
    """Every setting in values.yaml is typed in values.schema.json and has a comment above it.

    A setting is a key whose schema has no nested properties (a scalar, a list, or a free-form
    object such as resources); sections are walked into.
    """
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = []

    def walk(node, node_schema, path):
        for key_node, value_node in node.value:
            key = key_node.value
            where = f"values.yaml:{key_node.start_mark.line + 1}: {path}{key}"
            sub = node_schema.get("properties", {}).get(key)
            if sub is None:
                missing.append(f"{where} is not in values.schema.json")
                continue
            if "properties" in sub and isinstance(value_node, yaml.MappingNode):
                walk(value_node, sub, f"{path}{key}.")
            elif not lines[key_node.start_mark.line - 1].strip().startswith("#"):
                missing.append(f"{where} has no comment")

    walk(yaml.compose(text), schema, "")
    assert not missing, "\n".join(missing)


def test_schema_rejects_what_the_binary_would_reject():
    for bad in (
        {"replicaCount": "three"},
        {"config": {"retrainThreshold": 0}},
        {"config": {"pollIntervalMs": 5}},
        {"config": {"ingestIntervalMs": 0}},
        # No pod, no ingest: the queue KEDA counts would never fill.
        {"keda": {"enabled": True, "minReplicaCount": 0}},
        {"config": {"logFormat": "xml"}},
        {"config": {"topic": "bad topic"}},
        {"config": {"features": ["a", "a"]}},
        {"secret": {"databaseUrl": "mysql://x"}},
        {"config": {"unknownSetting": 1}},
        {"unknownKey": 1},
    ):
        with pytest.raises(helm.HelmValuesError):
            render(bad)


# --- default values ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default():
    return render()


def test_default_renders_the_expected_kinds(default):
    kinds = sorted(d["kind"] for d in default)
    assert kinds == sorted([
        "ConfigMap", "ConfigMap", "Deployment", "Job", "NetworkPolicy", "Pod", "PodDisruptionBudget",
        "Secret", "Service", "ServiceAccount", "ServiceMonitor",
    ])
    assert not of_kind(default, "ScaledObject") and not of_kind(default, "TriggerAuthentication")
    assert not of_kind(default, "PrometheusRule"), "alert rules are opt-in"



def test_default_deployment(default):
    deployment = main_deployment(default)
    assert deployment["metadata"]["name"] == "refit"
    assert deployment["spec"]["replicas"] == 2
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 30, "must outlast a retrain in flight"
    assert spec["serviceAccountName"] == "refit"
    assert [c["name"] for c in spec["initContainers"]] == ["migrate"]
    assert spec["initContainers"][0]["args"] == ["migrate"]
    assert main_container(default)["args"] == ["run"]
    assert main_container(default)["image"] == "refit:0.1.0"
    sa = one(default, "ServiceAccount")
    assert sa["metadata"]["name"] == "refit" and sa["automountServiceAccountToken"] is False


def test_default_env_uses_the_chart_secret(default):
    secret = one(default, "Secret")
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in main_container(default)["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(refs) == SECRET_VARIABLES
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] == name
        assert ref.get("optional", False) == (name not in ("DATABASE_URL", "REDIS_URL"))
        if not ref.get("optional"):
            assert name in secret["stringData"], f"required key {name} missing from the Secret"


def test_default_config(default):
    env = config_env(default, main_container(default))
    assert env["REFIT_LOG_FORMAT"] == "json"
    assert env["REFIT_HTTP_ADDR"] == "0.0.0.0:8080"
    assert env["REFIT_RETRAIN_THRESHOLD"] == "50"
    assert env["REFIT_CACHE_KEY_PREFIX"] == "model:"
    # Empty settings stay unset, so the binary's defaults apply.
    for unset in ("LOKI_URL", "REFIT_FEATURES", "REFIT_XGB_PARAMS"):
        assert unset not in env


def test_default_migration_job(default):
    job = one(default, "Job")
    assert job["metadata"]["name"] == "refit-migrate-1"
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["migrate"]
    assert [e["name"] for e in c["env"]][0] == "DATABASE_URL"


def test_a_new_revision_gets_a_new_migration_job():
    revision2 = helm.Chart.load(str(CHART)).render({}, name="refit", namespace="refit", revision=2, is_upgrade=True)
    job = yaml.safe_load(revision2["refit/templates/migrate-job.yaml"])
    assert job["metadata"]["name"] == "refit-migrate-2"


def test_config_change_rolls_the_pods():
    def checksum(values):
        return main_deployment(render(values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"retrainThreshold": 60}})


def test_dashboard_configmap_is_labelled_for_the_sidecar(default):
    cm = by_name(default, "ConfigMap", "refit-dashboard")
    assert cm is not None
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["refit-dashboard.json"])["uid"] == "refit"


def test_notes_warn_without_connection_settings():
    notes = render_raw()["refit/templates/NOTES.txt"]
    assert "WARNING" in notes and "existingSecret" in notes
    notes = render_raw(load_values("nondefault.yaml"))["refit/templates/NOTES.txt"]
    assert "WARNING" not in notes
    assert "KEDA scales" in notes


# --- non-default values ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nondefault():
    return render(load_values("nondefault.yaml"))


def test_existing_secret_renders_no_secret_and_is_referenced(nondefault):
    assert not of_kind(nondefault, "Secret")
    keys = load_values("nondefault.yaml")["existingSecretKeys"]
    for _, spec in pod_specs(nondefault):
        for c in containers(spec):
            for e in c.get("env") or []:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "refit-connections"
                    assert ref["key"] == keys[e["name"]]
    auth = one(nondefault, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "refit-connections", "key": "pg-url"}
    ]
    annotations = main_deployment(nondefault)["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_keda_scales_the_deployment(nondefault):
    deployment = main_deployment(nondefault)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    scaled = one(nondefault, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"] == "refit-prod"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 20)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    # Due users at the configured threshold, not every pending row.
    assert "refit_pending" in trigger["metadata"]["query"]
    assert "HAVING count(*) >= " in trigger["metadata"]["query"]
    assert "{threshold}" not in trigger["metadata"]["query"]
    assert trigger["metadata"]["targetQueryValue"] == "40"
    auth = one(nondefault, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_replicas_without_keda():
    values = load_values("nondefault.yaml")
    values["keda"]["enabled"] = False
    docs = render(values)
    assert main_deployment(docs)["spec"]["replicas"] == 3
    assert not of_kind(docs, "ScaledObject")


def test_optional_parts_toggle_off(nondefault):
    for kind in ("ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount", "Pod"):
        assert not of_kind(nondefault, kind), kind
    spec = main_deployment(nondefault)["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert "topologySpreadConstraints" not in spec
    assert spec["serviceAccountName"] == "refit-workload-identity"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


def test_nondefault_settings_render_exactly(nondefault):
    c = main_container(nondefault)
    env = config_env(nondefault, c)
    assert c["image"] == "registry.example.com/ml/refit:1.2.3"
    assert env["REFIT_FEATURES"] == "hour,temperature,is_holiday"
    assert json.loads(env["REFIT_XGB_PARAMS"]) == {"max_depth": 4, "eta": 0.1}
    # Large integers must not turn into floats (1e+06) on their way through Helm.
    assert env["REFIT_POLL_INTERVAL_MS"] == "3600000"
    assert env["REFIT_RETRAIN_THRESHOLD"] == "1000000"
    assert env["REFIT_HTTP_ADDR"] == "0.0.0.0:9090"
    assert env["LOKI_URL"] == "http://loki-gateway.monitoring.svc.cluster.local"
    assert env["REFIT_ENVIRONMENT"] == "staging"
    assert env["REFIT_LOG_FORMAT"] == "text"
    assert c["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert one(nondefault, "Service")["spec"]["ports"][0]["port"] == 9090


def test_migration_hook_with_existing_secret(nondefault):
    job = one(nondefault, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert job["metadata"]["name"] == "refit-prod-migrate"
    # serviceAccount.create is false here, so the named (pre-existing) account is used.
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "refit-workload-identity"


def test_migration_hook_without_existing_secret_fails():
    with pytest.raises(helm.HelmRenderError, match="existingSecret"):
        render({"migrations": {"job": {"helmHook": True}}})


def test_migration_hook_does_not_use_the_charts_own_service_account():
    docs = render({"existingSecret": "s", "migrations": {"job": {"helmHook": True}}})
    assert "serviceAccountName" not in one(docs, "Job")["spec"]["template"]["spec"]


def test_dashboard_namespace_and_toggle(nondefault):
    cm = by_name(nondefault, "ConfigMap", "refit-prod-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "refit"}
    assert by_name(render({"dashboard": {"enabled": False}}), "ConfigMap", "refit-dashboard") is None


def test_release_name_prefixes_resources():
    docs = render(name="ml")
    assert main_deployment(docs)["metadata"]["name"] == "ml-refit"
    assert by_name(docs, "ConfigMap", "ml-refit-config") is not None


# --- secrets -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_secrets():
    return render(load_values("chart-secret.yaml"))


def test_secrets_only_in_the_secret(with_secrets):
    sentinels = [v for v in load_values("chart-secret.yaml")["secret"].values()]
    secret = one(with_secrets, "Secret")
    assert sorted(secret["stringData"].values()) == sorted(sentinels)
    assert set(secret["stringData"]) == SECRET_VARIABLES
    for doc in with_secrets:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for s in sentinels:
            assert s not in text, f"a secret value leaked into {doc['kind']}/{doc['metadata']['name']}"
        assert "SENTINEL" not in text, f"{doc['kind']}/{doc['metadata']['name']}"
    notes = render_raw(load_values("chart-secret.yaml"))["refit/templates/NOTES.txt"]
    assert "SENTINEL" not in notes


def test_no_secret_variable_in_a_configmap(manifest_sets):
    for label, docs in manifest_sets.items():
        for cm in of_kind(docs, "ConfigMap"):
            leaked = SECRET_VARIABLES & set(cm.get("data") or {})
            assert not leaked, f"{label}: ConfigMap/{cm['metadata']['name']} sets {leaked}"


def test_secret_variables_come_from_secrets(manifest_sets):
    for label, docs in manifest_sets.items():
        for owner, spec in pod_specs(docs):
            for c in containers(spec):
                for e in c.get("env") or []:
                    if e["name"] in SECRET_VARIABLES:
                        assert "secretKeyRef" in e.get("valueFrom", {}), (
                            f"{label}: {owner}/{c['name']} sets {e['name']} without a Secret"
                        )


def test_network_policy_values(with_secrets):
    policy = one(with_secrets, "NetworkPolicy")
    ingress, helm_test = policy["spec"]["ingress"]
    assert "from" not in ingress, "an empty metricsFrom allows any source on the metrics port"
    assert helm_test["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test"
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert policy["spec"]["egress"][-1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    monitor = one(with_secrets, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- alert rules and the helm test hook --------------------------------------------------------


def test_prometheus_rule_ships_the_alert_rules(nondefault):
    rule = one(nondefault, "PrometheusRule")
    assert rule["metadata"]["name"] == "refit-prod"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(ALERT_RULES.read_text()), "the chart's rules differ from deploy/"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"RefitRetrainsFailing", "RefitOutboxEntryTooOld", "RefitSchedulerStalled",
            "RefitLokiDroppingLines", "RefitLiveErrorRising"} <= alerts


def test_chart_rules_are_a_byte_identical_copy():
    copy = CHART / "rules" / "refit-alerts.yaml"
    assert copy.read_bytes() == ALERT_RULES.read_bytes(), (
        f"cp {ALERT_RULES.relative_to(ROOT)} {copy.relative_to(ROOT)}"
    )


def test_helm_test_pod_checks_readiness_through_the_service(default):
    (pod,) = of_kind(default, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (c,) = pod["spec"]["containers"]
    service = one(default, "Service")
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}{READINESS_PATH}"
    assert c["command"][0] == "wget" and c["command"][-1] == url
    # Not selected by the release's NetworkPolicy (which would cut its egress), but admitted by it.
    policy = one(default, "NetworkPolicy")
    labels = pod["metadata"]["labels"]
    assert not labels_match(policy["spec"]["podSelector"]["matchLabels"], labels)
    admitted = [
        peer["podSelector"]["matchLabels"]
        for rule in policy["spec"]["ingress"]
        for peer in rule.get("from", [])
        if "podSelector" in peer
    ]
    assert any(labels_match(sel, labels) for sel in admitted), "the NetworkPolicy blocks the test Pod"
