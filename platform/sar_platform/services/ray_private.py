"""Every private Ray API the platform uses, in one place, each behind a function that says what it
is for. Ray changes its private modules without notice; `TESTED_RAY_VERSION` is the release these
were read against, and tests/sar_platform/services/test_ray_private.py fails on any other Ray
release, naming what to recheck here, before anything that uses them runs.

- `disable_multi_node`: `ray._private.ray_constants.ENABLE_RAY_CLUSTER`, read at import time from
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER; set directly when Ray was imported before the variable was set
  (keeps the embedded Ray on 127.0.0.1; see driver/embedded_ray.py).
- `driver_node_pids`: `ray._private.worker._global_node.all_processes` (process type -> list of
  ProcessInfo with a `.process` Popen), the processes `ray.init` started in this driver.
- `autoscaler_node_groups`: `ray._private.state.state.get_cluster_config()`, the node groups an
  autoscaler reports to the GCS (absent on clusters without one, and from Ray 2.60's own autoscaler).
- `checkpoint_manager_state_json`: Ray Train V2's `_CheckpointManagerState`, the schema of
  `checkpoint_manager_snapshot.json` (see driver/run_checkpoints.py).

Runs wherever the modules that call it run (the `sar` process).
"""
from __future__ import annotations

import sys

TESTED_RAY_VERSION = "2.60.0"
CHECKPOINT_STATE_MODULE = "ray.train.v2._internal.execution.checkpoint.checkpoint_manager"


def disable_multi_node() -> None:
    """Make an already imported Ray start a one-machine cluster (no-op when Ray is not imported yet:
    the environment variable does it then)."""
    if "ray" in sys.modules:
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def driver_node_pids() -> list[int]:
    """PIDs of the processes (GCS, raylet, dashboard, ...) `ray.init` started in this process."""
    import ray._private.worker as ray_worker

    node = ray_worker._global_node
    if node is None:
        return []
    return [info.process.pid for infos in node.all_processes.values() for info in infos if info.process is not None]


def checkpoint_manager_state_json(state: dict) -> str:
    """The snapshot `state` as Ray Train writes it; raises when Ray would not load it."""
    from ray.train.v2._internal.execution.checkpoint import checkpoint_manager

    return checkpoint_manager._CheckpointManagerState.parse_obj(state).json()


def autoscaler_node_groups() -> list[dict] | None:
    """The node groups the cluster's autoscaler reported to the GCS, as dicts of name, resources,
    min_count and max_count (-1: no maximum); None when none were reported. Needs `ray.init`."""
    import ray._private.state as ray_state

    config = ray_state.state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return [{"name": g.name, "resources": {k: float(v) for k, v in g.resources.items()},
             "min_count": int(g.min_count), "max_count": int(g.max_count)} for g in config.node_group_configs]
