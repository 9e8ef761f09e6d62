"""The embedded Ray of `sar run` (no --address): a one-machine cluster on loopback only, whose
helper processes go when the driver goes, however it goes.

Loopback: `ray.init(_node_ip_address="127.0.0.1")` alone does not do it — Ray turns a loopback
node address into the machine's external one (`services.resolve_ip_for_localhost`), and every
gRPC server, agent and metrics exporter then listens on it or on all interfaces. Ray keeps a
one-machine cluster on 127.0.0.1 when `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (its setting for
laptops); with it, the GCS, raylet, core workers, dashboard (`dashboard_host`), dashboard agent,
runtime-env agent and the Prometheus metrics exporters all listen on 127.0.0.1 only.

Clean shutdown: Ray's processes follow the driver, except the dashboard and runtime-env agents,
which after the raylet's death spend a minute reporting it to the GCS that died with it, ports
open. A reaper process (this module's `__main__`) holds a pipe from the driver; when the pipe
closes — the driver exited or was killed — it sends SIGTERM to those agents (and anything else of
this Ray that is left), then SIGKILL to what ignores it.

Runs in the `sar` process; the reaper in its own small process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sar_platform.services import ray_private
from sar_platform.services.mlflow_server import free_loopback_port

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by ray.init when it starts a cluster


def keep_on_loopback() -> None:
    """Make the Ray that this process starts a loopback-only, one-machine cluster. The variable is
    read when Ray is imported; an already imported Ray gets the same value set directly."""
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_private.disable_multi_node()


def start(num_cpus: int | None, runtime_env: dict, **init_kwargs) -> subprocess.Popen:
    """`ray.init` a local cluster on loopback and start its reaper (returned: close its stdin to
    shut Ray's leftovers down early; `stop` does both).

    The cluster's GCS port is chosen here and given to its workers as RAY_ADDRESS: Ray Train's
    placement-group cleaner looks its cluster up through the state API, which otherwise scans the
    machine and fails with "Found multiple active Ray instances" while another job runs."""
    import ray

    keep_on_loopback()
    port = free_loopback_port()
    os.environ[GCS_PORT_ENV] = str(port)
    env_vars = {**runtime_env.get("env_vars", {}), "RAY_ADDRESS": f"{LOOPBACK}:{port}"}
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK,
             runtime_env={**runtime_env, "env_vars": env_vars}, **init_kwargs)
    return start_reaper(ray_processes())


def stop(reaper: subprocess.Popen | None) -> None:
    import ray

    ray.shutdown()
    if reaper is not None:
        reaper.stdin.close()
        reaper.wait(timeout=30)


def ray_processes() -> list[int]:
    """The PIDs of the Ray processes this driver started, with their descendants (agents, workers)."""
    roots = ray_private.driver_node_pids()
    return sorted(set(roots) | {d for r in roots for d in descendants(r)})


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = set(), [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            if child not in found:
                found.add(child)
                queue.append(child)
    return found


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): tells a PID apart from a later reuse."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def start_reaper(pids: list[int]) -> subprocess.Popen:
    watched = {str(p): start_time(p) for p in pids if start_time(p) is not None}
    return subprocess.Popen([sys.executable, "-m", "sar_platform.driver.embedded_ray", json.dumps(watched)],
                            stdin=subprocess.PIPE, start_new_session=True)


def reap(watched: dict[str, str], grace: float = 5.0) -> None:
    """SIGTERM the watched processes still alive (the same processes: same start time), then
    SIGKILL those left after `grace` seconds."""
    alive = lambda: [int(p) for p, t in watched.items() if start_time(int(p)) == t]  # noqa: E731
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the driver; the pipe tells us when it is gone
    sys.stdin.buffer.read()  # returns at EOF: the driver closed the pipe or died
    reap(json.loads(sys.argv[1]))
