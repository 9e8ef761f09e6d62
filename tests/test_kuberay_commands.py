"""Every Ray container of the KubeRay manifest starts as KubeRay starts it: its `command` and
`args` joined with spaces, then `&& ulimit -n 65536; ray start ...` (the command KubeRay generates
from `rayStartParams`), the whole under `/bin/bash -lc --` (Ray's docs, "Specify container commands
for Ray head/worker Pods"). Run here with stub `ray` and `pip` that record their arguments: each
pod reaches `ray start` with its parameters, with the project importable, and nothing is called
without its arguments. (`-l` is left out here: a Debian /etc/profile resets PATH, hiding the stubs;
the image's PATH comes from its own environment.)"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

MANIFEST = REPO / "cluster" / "kuberay-raycluster.yaml"
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
"""


def ray_containers() -> dict[str, tuple[dict, dict]]:
    """Each Ray container (the first of its pod) with its group's rayStartParams, by group."""
    (cluster,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "RayCluster"]
    head = cluster["spec"]["headGroupSpec"]
    found = {"head": (head["template"]["spec"]["containers"][0], {"head": "", **head["rayStartParams"]})}
    for group in cluster["spec"]["workerGroupSpecs"]:
        params = {"address": "sar-platform-head-svc:6379", **group["rayStartParams"]}
        found[group["groupName"]] = (group["template"]["spec"]["containers"][0], params)
    return found


def kuberay_command(container: dict, params: dict) -> list[str]:
    """The container's command as KubeRay runs it."""
    start = "ray start " + " ".join(f"--{k}" + (f"={shlex.quote(str(v))}" if v != "" else "") for k, v in params.items())
    own = " ".join([*container.get("command", []), *container.get("args", [])])
    generated = f"ulimit -n 65536; {start} --block"
    return ["/bin/bash", "-c", "--", f"{own} && {generated}" if own else generated]


def run_with_stubs(command: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("ray", "pip"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "STUB_LOG": str(log), "PATH": f"{stubs}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
           "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'platform'}"}  # the project as the image installs it
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return out, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("group", list(ray_containers()))
def test_each_ray_pod_reaches_ray_start_with_its_parameters_and_the_project_importable(group, tmp_path):
    container, params = ray_containers()[group]
    out, calls = run_with_stubs(kuberay_command(container, params), tmp_path)
    assert out.returncode == 0, out.stderr
    assert all(len(call.split()) > 1 for call in calls), f"called without arguments: {calls}"
    (start,) = [c for c in calls if c.startswith("ray start")]
    assert ("--head" in start) == (group == "head") and start.endswith("--block")
    assert not [c for c in calls if c.startswith("pip")], "the image carries every dependency"


def test_the_check_catches_a_command_that_runs_pip_without_its_arguments(tmp_path):
    # The manifest's earlier command: KubeRay's joining hands the inner `bash -c` only "pip".
    old = {"command": ["/bin/bash", "-c", "pip install --quiet einops && exec \"$@\"", "--"]}
    out, calls = run_with_stubs(kuberay_command(old, {"head": ""}), tmp_path)
    assert "pip" in [c.strip() for c in calls]  # pip, alone: what the pods ran, installing nothing
