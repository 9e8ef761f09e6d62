"""Placement feasibility: refuse, right after connecting to Ray and before any MLflow run is opened,
resources that the cluster can never give, instead of waiting for them forever.

Ray queues a request it cannot satisfy (a worker bundle larger than any node, more workers than fit,
a STRICT_SPREAD over more workers than nodes) without an error. Ray Data is the subtle case: with
`data.loader: ray_data` its read tasks need one whole CPU each (Ray's default for tasks) beside the
training workers; when the workers' bundles take every CPU of the nodes, the reads are backpressured
(`tasks(ResourceBudget)`) and training waits forever. So a ray_data job must leave at least one CPU
free on some node while all of its workers are placed (for a sweep: while as many trials run at once
as `max_concurrent_trials` lets fit).

The check uses the nodes alive when the job starts (an autoscaling cluster should keep its
`min_workers` at the size the job needs). Runs in the `sar` process (or the driver of a Ray Job).
"""
from __future__ import annotations

import math
from typing import Mapping

Node = Mapping[str, float]
"""A node's total resources, as `ray.nodes()[i]["Resources"]` gives them ({"CPU": 8, "GPU": 1, ...})."""

DATA_TASK_CPUS = 1.0
"""The CPU a Ray Data read task asks for (Ray's default num_cpus for tasks)."""


def worker_bundle(resources) -> dict[str, float]:
    """What one training worker asks Ray for (as driver/ray_train.scaling_config asks it)."""
    bundle = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        bundle["GPU"] = resources.gpus_per_worker
    return bundle


def fits(node: Node, bundle: Mapping[str, float]) -> int:
    """How many copies of `bundle` one node holds."""
    counts = [math.floor(node.get(key, 0.0) / need + 1e-9) for key, need in bundle.items() if need > 0]
    return min(counts) if counts else 1 << 30


def placeable(nodes: list[Node], bundle: Mapping[str, float], count: int, strategy: str) -> bool:
    """Whether `count` copies of `bundle` can be placed at once under a placement strategy."""
    per_node = [fits(n, bundle) for n in nodes]
    if strategy == "STRICT_PACK":
        return max(per_node, default=0) >= count
    if strategy == "STRICT_SPREAD":
        return sum(1 for k in per_node if k >= 1) >= count
    return sum(per_node) >= count  # PACK, SPREAD: best effort over all nodes


def leaves_a_data_cpu(nodes: list[Node], bundle: Mapping[str, float], count: int, strategy: str) -> bool:
    """Whether the workers can be placed while some node keeps a whole CPU for Ray Data's tasks."""
    for i, node in enumerate(nodes):
        if node.get("CPU", 0.0) < DATA_TASK_CPUS:
            continue
        rest = {**node, "CPU": node["CPU"] - DATA_TASK_CPUS}
        if placeable([*nodes[:i], rest, *nodes[i + 1:]], bundle, count, strategy):
            return True
    return False


def largest(nodes: list[Node], key: str) -> float:
    return max((n.get(key, 0.0) for n in nodes), default=0.0)


def concurrent_trials(job, nodes: list[Node], bundle, strategy: str) -> int:
    """How many of a sweep's trials can hold their workers at once (at most max_concurrent_trials)."""
    n = 1
    while n < job.max_concurrent_trials and placeable(nodes, bundle, (n + 1) * job.resources.num_workers, strategy):
        n += 1
    return n


def job_problems(job, nodes: list[Node], prefix: str = "", trials: int = 1) -> list[str]:
    """What keeps one job's workers (`trials` copies of them, for a sweep) from ever running."""
    res = job.resources
    bundle, strategy = worker_bundle(res), res.placement_strategy
    for key, field in (("CPU", "cpus_per_worker"), ("GPU", "gpus_per_worker")):
        if bundle.get(key, 0) > largest(nodes, key):
            return [f"{prefix}resources.{field}: {bundle[key]:g} per worker, but the largest node has "
                    f"{largest(nodes, key):g} {key}(s): lower {prefix}resources.{field} or add bigger nodes"]
    if not fits_together(nodes, bundle):
        return [f"{prefix}resources: no node has {bundle} at once (nodes: {describe(nodes)})"]
    count = res.num_workers * trials
    if not placeable(nodes, bundle, count, strategy):
        return [f"{prefix}resources.num_workers: {count} workers of {bundle} do not fit the cluster "
                f"({describe(nodes)}) with placement_strategy {strategy}: lower {prefix}resources.num_workers "
                f"or {prefix}resources.cpus_per_worker / gpus_per_worker, or add nodes"]
    if job.kind == "train" and job.data.loader == "ray_data" and not leaves_a_data_cpu(nodes, bundle, count, strategy):
        running = f"{count} workers" + (f" ({trials} concurrent trials)" if trials > 1 else "")
        return [f"{prefix}data.loader: ray_data needs {DATA_TASK_CPUS:g} CPU free beside the training workers for its "
                f"read tasks, but {running} of {bundle} take every CPU ({describe(nodes)}): lower "
                f"{prefix}resources.cpus_per_worker (or max_concurrent_trials), add a node, or use data.loader: memory"]
    return []


def fits_together(nodes: list[Node], bundle) -> bool:
    return any(fits(n, bundle) >= 1 for n in nodes)


def describe(nodes: list[Node]) -> str:
    shown = [", ".join(f"{n.get(k, 0):g} {k}" for k in ("CPU", "GPU") if n.get(k)) or "no CPU/GPU" for n in nodes]
    return f"{len(nodes)} node(s): " + "; ".join(shown)


def placement_problems(job, nodes: list[Node], prefix: str = "") -> list[str]:
    """Every placement problem of a job tree (a pipeline's steps, a sweep's trials), by field."""
    if job.kind == "pipeline":
        return [p for name, step in job.steps.items() for p in placement_problems(step, nodes, f"{prefix}steps.{name}.")]
    if job.kind == "sweep":
        bundle = worker_bundle(job.train.resources)
        trials = concurrent_trials(job, nodes, bundle, job.train.resources.placement_strategy)
        return job_problems(job.train, nodes, f"{prefix}train.", trials)
    return job_problems(job, nodes, prefix)
