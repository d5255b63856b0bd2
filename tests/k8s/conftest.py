"""Shared helpers for the Kubernetes packaging tests.

Everything runs offline: the Helm chart is rendered by the Helm v4 engine embedded in the PyPI
package helm-python-sdk, kustomize output comes from `kubectl kustomize`, and every manifest is
checked against the Kubernetes JSON schemas of one pinned Kubernetes version (kubernetes-validate).
Run through scripts/test-k8s.sh, which installs these tools first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "refit"
DEPLOY = ROOT / "deploy"
VALUES = Path(__file__).resolve().parent / "values"

# The Kubernetes version every manifest is validated against (kubernetes-validate schemas).
KUBE_VERSION = "1.30.0"

# Kinds defined by CRDs, absent from the core schemas: validated structurally in test_schemas.py.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}

# The routes the binary serves (the contract; test_contract.py checks src/http.rs against it).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"

# The alert rules (the chart's rules/refit-alerts.yaml is a copy) and promtool, which checks them.
ALERT_RULES = DEPLOY / "prometheus" / "refit-alerts.yaml"


def promtool() -> str:
    found = os.environ.get("REFIT_PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: scripts/install-deps.sh installs Debian's prometheus")
    return found


# Variables that hold secrets: they may only reach a pod through a Secret.
SECRET_VARIABLES = {"DATABASE_URL", "REDIS_URL", "REFIT_KAFKA_PROPERTIES", "REFIT_ADMIN_TOKEN"}

RELEASE = "refit"
NAMESPACE = "refit"


def load_values(name: str) -> dict[str, Any]:
    """A values file from tests/k8s/values/."""
    with open(VALUES / name) as f:
        return yaml.safe_load(f) or {}


@lru_cache(maxsize=1)
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render_raw(values: dict[str, Any] | None = None, name: str = RELEASE) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included."""
    return chart().render(values or {}, name=name, namespace=NAMESPACE, is_install=True)


def parse_manifests(texts: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(texts.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def render(values: dict[str, Any] | None = None, name: str = RELEASE) -> list[dict[str, Any]]:
    """The chart's manifests as parsed documents."""
    return parse_manifests(render_raw(values, name))


def kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: run scripts/k8s-tools.sh (or scripts/test-k8s.sh)")
    return found


@lru_cache(maxsize=None)
def _kustomize_text(directory: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


def kustomize(directory: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_kustomize_text(str(directory))) if d]


# Every kustomize entry point an operator may apply.
KUSTOMIZATIONS = ["base", "overlays/production"]

# Named Helm value sets rendered by the parametrized tests.
HELM_VALUE_SETS = {
    "default": lambda: {},
    "nondefault": lambda: load_values("nondefault.yaml"),
    "chart-secret": lambda: load_values("chart-secret.yaml"),
}


@lru_cache(maxsize=1)
def all_manifest_sets() -> dict[str, list[dict[str, Any]]]:
    """Every rendering under test: Helm value sets and kustomize entry points.

    Rendered once per session and shared: tests must not modify these documents.
    """
    sets = {f"helm:{k}": render(v()) for k, v in HELM_VALUE_SETS.items()}
    for k in KUSTOMIZATIONS:
        sets[f"kustomize:{k}"] = kustomize(DEPLOY / k)
    return sets


@pytest.fixture(scope="session")
def manifest_sets() -> dict[str, list[dict[str, Any]]]:
    return all_manifest_sets()


# --- small accessors ---------------------------------------------------------------------------


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for d in of_kind(docs, kind):
        if d["metadata"]["name"] == name:
            return d
    return None


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(owner, pod spec) of every workload, bare Pods (the `helm test` hook) included."""
    specs = []
    for d in docs:
        if d.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            specs.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif d.get("kind") == "Pod":
            specs.append((f"Pod/{d['metadata']['name']}", d["spec"]))
    return specs


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def env_names_set(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Every environment variable the manifests set, with where it is set.

    Covers `env` entries and the keys of every ConfigMap or Secret pulled in with `envFrom`.
    """
    names: dict[str, set[str]] = {}
    for owner, spec in pod_specs(docs):
        for c in containers(spec):
            where = f"{owner}/{c['name']}"
            for e in c.get("env") or []:
                names.setdefault(e["name"], set()).add(where)
            for src in c.get("envFrom") or []:
                prefix = src.get("prefix", "")
                if "configMapRef" in src:
                    ref = src["configMapRef"]["name"]
                    cm = by_name(docs, "ConfigMap", ref)
                    assert cm is not None, f"{where}: envFrom ConfigMap {ref} is not rendered"
                    keys = (cm.get("data") or {}).keys()
                elif "secretRef" in src:
                    ref = src["secretRef"]["name"]
                    secret = by_name(docs, "Secret", ref)
                    assert secret is not None, (
                        f"{where}: envFrom Secret {ref} is not rendered, so the variables it sets "
                        "cannot be checked; use secretKeyRef entries instead"
                    )
                    keys = list((secret.get("data") or {}).keys()) + list(
                        (secret.get("stringData") or {}).keys()
                    )
                else:
                    raise AssertionError(f"{where}: unknown envFrom source {src}")
                for k in keys:
                    names.setdefault(prefix + k, set()).add(f"{where} (envFrom {ref})")
    return names


def config_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The plain (non-secret) environment a container gets: envFrom ConfigMaps, then env values."""
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            cm = by_name(docs, "ConfigMap", src["configMapRef"]["name"])
            env.update({src.get("prefix", "") + k: v for k, v in (cm.get("data") or {}).items()})
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
    return env


def main_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")


def main_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = main_deployment(docs)["spec"]["template"]["spec"]
    named = [c for c in spec["containers"] if c["name"] == "refit"]
    assert len(named) == 1, "the Deployment must have one container named refit"
    return named[0]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the binary --------------------------------------------------------------------------------


def refit_bin() -> Path:
    path = Path(os.environ.get("REFIT_BIN") or ROOT / "target" / "debug" / "refit")
    return path if path.is_absolute() else ROOT / path


@lru_cache(maxsize=1)
def _binary_env_names() -> frozenset[str]:
    """The variables the binary reads, from `refit config --env-names` run with an empty environment."""
    path = refit_bin()
    if not path.exists():
        pytest.fail(
            f"the refit binary is not at {path}: build it first (`cargo build`, which `make test` "
            "does) or point REFIT_BIN at it; the environment-variable checks need its "
            "`refit config --env-names` output"
        )
    result = subprocess.run(
        [str(path), "config", "--env-names"], capture_output=True, text=True, env={}, timeout=60
    )
    assert result.returncode == 0, (
        f"`{path} config --env-names` exited {result.returncode} with no environment set:\n"
        f"{result.stderr}"
    )
    names = {line.strip() for line in result.stdout.splitlines() if line.strip()}
    bad = sorted(n for n in names if not re.fullmatch(r"[A-Z][A-Z0-9_]*", n))
    assert not bad, f"`refit config --env-names` printed lines that are not variable names: {bad}"
    assert names, "`refit config --env-names` printed nothing"
    return frozenset(names)


def binary_env_names() -> frozenset[str]:
    """Called from each test (not a fixture) so that a missing binary shows as a FAILED test."""
    return _binary_env_names()
