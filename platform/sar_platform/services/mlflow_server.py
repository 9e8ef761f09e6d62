"""The embedded MLflow tracking server: started once per workspace, reused afterwards.

Every process (driver, Ray workers, Tune trials) logs to it over HTTP on 127.0.0.1, so no SQLite
file is ever shared between concurrent writers. The server outlives `sar run` (it is started in its
own session) so the dashboards stay browsable; `sar ui --stop` ends it.

Started and stopped from the `sar` process (`sar run`, `sar ui`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass
class ServerInfo:
    uri: str
    pid: int
    port: int
    root: Path


def _healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def state_file(root: Path) -> Path:
    return root / "server.json"


def running_server(root: str | Path) -> ServerInfo | None:
    root = Path(root)
    try:
        info = json.loads(state_file(root).read_text())
    except (OSError, ValueError):
        return None
    uri = f"http://{HOST}:{info['port']}"
    return ServerInfo(uri, info["pid"], info["port"], root) if _healthy(uri) else None


def ensure_server(root: str | Path, port: int = 5055, timeout: float = 120.0) -> ServerInfo:
    """Reuse the workspace's server if it answers, else start one (SQLite backend, local artifacts)."""
    root = Path(root)
    if (info := running_server(root)) is not None:
        return info
    root.mkdir(parents=True, exist_ok=True)
    if port == 0 or _port_in_use(port):
        port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]
    # The GenAI job runner spawns a dozen helper processes; experiment tracking needs none of them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    uri = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with status {proc.returncode}; see {root / 'server.log'}")
        if _healthy(uri):
            state_file(root).write_text(json.dumps({"pid": proc.pid, "port": port}))
            return ServerInfo(uri, proc.pid, port, root)
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"the MLflow server did not answer on {uri} within {timeout:.0f}s; see {root / 'server.log'}")


def stop_server(root: str | Path) -> bool:
    info = running_server(root)
    if info is None:
        return False
    try:
        os.killpg(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    state_file(Path(root)).unlink(missing_ok=True)
    return True
