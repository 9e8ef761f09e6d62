"""Waiting for a cluster's nodes: right after `ray up` (or a RayCluster's creation) the worker
nodes are still booting, so a job that fits the nodes the cluster *can* have but not the nodes up
*now* asks the autoscaler for them (`ray.autoscaler.sdk.request_resources`) and waits, printing
progress, until they are up or `--wait-for-nodes` seconds have passed. What no node type can ever
hold is refused at once, by field, as before.

The node types come from the first source that has them:
- the cluster config the autoscaler reports to Ray's GCS (services/ray_private.py);
- $SAR_NODE_TYPES on the head: a JSON list of {"name", "resources", "min", "max"} (the KubeRay
  manifest sets it from its worker groups);
- the launcher's `~/ray_bootstrap_config.yaml` on the head (`ray up` writes it, node resources filled in).
With none of them (a cluster started by hand, the loopback test cluster) only the nodes up now count.

Runs in the job's driver (the `sar run` process, on the head for a submitted job).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from sar_platform.driver.placement import Node, describe, placement_problems, worker_bundle
from sar_platform.services import ray_private

NODE_TYPES_ENV = "SAR_NODE_TYPES"
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")
UNBOUNDED_CAP = 64
"""How many nodes of a type without a maximum the feasibility check assumes."""
POLL_S = 5.0
PROGRESS_EVERY_S = 60.0


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict
    min_count: int
    max_count: int  # -1: no maximum

    @property
    def cap(self) -> int:
        return UNBOUNDED_CAP if self.max_count < 0 else self.max_count


def types_from_env(text: str) -> list[NodeType]:
    return [NodeType(t["name"], dict(t["resources"]), int(t.get("min", 0)), int(t.get("max", -1))) for t in json.loads(text)]


def types_from_launcher(config: dict) -> list[NodeType]:
    """The node types of a Ray cluster launcher config; the head type counts once."""
    found = []
    for name, t in config.get("available_node_types", {}).items():
        if name == config.get("head_node_type"):
            found.append(NodeType(name, dict(t.get("resources", {})), 1, 1))
        else:
            found.append(NodeType(name, dict(t.get("resources", {})), int(t.get("min_workers", 0)),
                                  int(t.get("max_workers", config.get("max_workers", -1)))))
    return found


def node_types() -> list[NodeType] | None:
    """The node types this cluster can have (None: unknown; only the nodes up now count)."""
    if groups := ray_private.autoscaler_node_groups():
        return [NodeType(**g) for g in groups]
    if text := os.environ.get(NODE_TYPES_ENV):
        return types_from_env(text)
    if (launcher := LAUNCHER_CONFIG.expanduser()).is_file():
        return types_from_launcher(yaml.safe_load(launcher.read_text()))
    return None


def expand(types: list[NodeType], counts: dict[str, int]) -> list[Node]:
    return [t.resources for t in types for _ in range(counts[t.name])]


def smallest_cluster(job, types: list[NodeType]) -> dict[str, int] | None:
    """How many nodes of each type the job needs at least (None: more than the cluster can have).
    Starts at every type's minimum and adds the type with the most GPUs, then CPUs, one by one."""
    counts = {t.name: t.min_count for t in types}
    while placement_problems(job, expand(types, counts)):
        growable = [t for t in types if counts[t.name] < t.cap]
        if not growable:
            return None
        biggest = max(growable, key=lambda t: (t.resources.get("GPU", 0), t.resources.get("CPU", 0)))
        counts[biggest.name] += 1
    return counts


def is_of(node: Node, node_type: NodeType) -> bool:
    return all(node.get(k, 0) >= v for k, v in node_type.resources.items() if k in ("CPU", "GPU"))


def progress(types: list[NodeType], wanted: dict[str, int], alive: list[Node]) -> str:
    """`waiting for 4 gpu_worker node(s) with 96 CPU, 8 GPU: 2 up`, for each type not fully up yet."""
    parts = []
    for t in types:
        up = sum(is_of(n, t) for n in alive)
        if up < wanted[t.name]:
            shape = describe([t.resources]).split(": ", 1)[1]
            parts.append(f"{wanted[t.name]} {t.name} node(s) with {shape}: {up} up")
    return "waiting for " + ("; ".join(parts) or "the nodes to register their resources")


def job_bundles(job) -> list[dict]:
    """The worker bundles to ask the autoscaler for (every step's, for a pipeline; a sweep: one trial's)."""
    if job.kind == "pipeline":
        return [b for step in job.steps.values() for b in job_bundles(step)]
    target = job.train if job.kind == "sweep" else job
    return [worker_bundle(target.resources)] * target.resources.num_workers if hasattr(target, "resources") else []


def wait_for_nodes(job, problems: list[str], timeout_s: float, alive: Callable[[], list[Node]],
                   types: list[NodeType] | None, request: Callable[[list[dict]], None],
                   say=lambda line: print(f"[sar] {line}", file=sys.stderr, flush=True),
                   sleep=time.sleep, clock=time.monotonic) -> list[str]:
    """The placement problems left after waiting (empty: the nodes are up). `problems`: those of
    the nodes up now. Refuses at once what the node types can never hold, or when they are unknown."""
    if types is None:
        return problems
    wanted = smallest_cluster(job, types)
    if wanted is None:
        shown = "; ".join(f"{t.name} x{t.max_count if t.max_count >= 0 else 'any'} ({describe([t.resources]).split(': ', 1)[1]})"
                          for t in types)
        return [f"{p} (even with every node the cluster can have: {shown})"
                for p in placement_problems(job, expand(types, {t.name: t.cap for t in types}))]
    request(job_bundles(job))
    try:
        deadline, last_line, last_said = clock() + timeout_s, "", -PROGRESS_EVERY_S
        while problems := placement_problems(job, nodes := alive()):
            if clock() >= deadline:
                return [f"{p} (after waiting {timeout_s:g} s for nodes: {progress(types, wanted, nodes)}; "
                        "`ray status` on the head says why they did not come, --wait-for-nodes waits longer)"
                        for p in problems]
            line = progress(types, wanted, nodes)
            if line != last_line or clock() - last_said >= PROGRESS_EVERY_S:
                say(f"{line} (up to {max(0.0, deadline - clock()):.0f} s more)")
                last_line, last_said = line, clock()
            sleep(POLL_S)
        return []
    finally:
        request([])  # the request persists in the autoscaler: clear it once answered
