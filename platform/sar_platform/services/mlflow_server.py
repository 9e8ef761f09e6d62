"""The embedded MLflow tracking server: started once per workspace, reused afterwards.

Every process (driver, Ray workers, Tune trials) logs to it over HTTP on 127.0.0.1, so no SQLite
file is ever shared between concurrent writers. The server outlives `sar run` (it is started in its
own session) so the dashboards stay browsable; `sar ui --stop` ends it.

Starting is serialized per workspace (a lock file beside the database): concurrent `sar run`s share
one server instead of racing through SQLite's schema migration. `server.json` names the server's
PID and port from the moment it is started, so a start that was interrupted (even by SIGKILL) is
found and reused by the next one, never duplicated on another port; a start interrupted by Ctrl-C or
SIGTERM stops the half-started server.

Started and stopped from the `sar` process (`sar run`, `sar ui`).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sar_platform.services.hold_points import hold

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


def free_loopback_port() -> int:
    """A port nothing on 127.0.0.1 listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def state_file(root: Path) -> Path:
    return root / "server.json"


def _database(root: Path) -> Path:
    return root / "mlflow.db"


def _serves(pid: int, root: Path) -> bool:
    """Whether process `pid` is alive and is an MLflow server of this workspace's database."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"mlflow" in part for part in cmdline) and any(str(_database(root)).encode() in part for part in cmdline)


def _recorded(root: Path) -> dict | None:
    try:
        info = json.loads(state_file(root).read_text())
        return info if isinstance(info.get("pid"), int) and isinstance(info.get("port"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def recorded_uri(root: str | Path) -> str | None:
    """The URI the workspace's server was last started on (it may be down): where clients look
    for it after a restart, which can move it to another port."""
    info = _recorded(Path(root))
    return None if info is None else f"http://{HOST}:{info['port']}"


def running_server(root: str | Path) -> ServerInfo | None:
    """The workspace's server if it runs and answers."""
    root = Path(root)
    info = _recorded(root)
    if info is None or not _serves(info["pid"], root):
        return None
    uri = f"http://{HOST}:{info['port']}"
    return ServerInfo(uri, info["pid"], info["port"], root) if _healthy(uri) else None


@contextmanager
def _start_lock(root: Path, timeout: float):
    """Held while one process checks for and starts the workspace's server; others wait for it."""
    with open(root / "server.lock", "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another process has been starting the MLflow server in {root} for "
                                       f"{timeout:.0f}s; see {root / 'server.log'}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_healthy(uri: str, pid: int, root: Path, deadline: float, proc: subprocess.Popen | None = None) -> bool:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with status {proc.returncode}; see {root / 'server.log'}")
        if proc is None and not _serves(pid, root):
            return False
        if _healthy(uri):
            return True
        time.sleep(0.5)
    return False


def ensure_server(root: str | Path, port: int = 5055, timeout: float = 120.0) -> ServerInfo:
    """Reuse the workspace's server if it answers (or is still starting), else start one (SQLite
    backend, local artifacts). Concurrent callers on one workspace get the same server."""
    root = Path(root)
    if (info := running_server(root)) is not None:
        return info
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _start_lock(root, timeout):
        recorded = _recorded(root)
        if recorded is not None and _serves(recorded["pid"], root):  # started earlier, perhaps still starting
            uri = f"http://{HOST}:{recorded['port']}"
            if _wait_healthy(uri, recorded["pid"], root, deadline):
                return ServerInfo(uri, recorded["pid"], recorded["port"], root)
            _stop_pid(recorded["pid"])  # alive but never answering: replace it
        # a restart goes back to the recorded port, where running jobs look (another, if it is taken)
        return _start(root, recorded["port"] if recorded is not None else port, deadline)


def _start(root: Path, port: int, deadline: float) -> ServerInfo:
    if port == 0 or _port_in_use(port):
        port = free_loopback_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{_database(root)}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]
    # The GenAI job runner spawns a dozen helper processes; experiment tracking needs none of them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    uri = f"http://{HOST}:{port}"
    try:
        state_file(root).write_text(json.dumps({"pid": proc.pid, "port": port}))
        hold("mlflow-server.started")
        if _wait_healthy(uri, proc.pid, root, deadline, proc):
            return ServerInfo(uri, proc.pid, port, root)
        raise RuntimeError(f"the MLflow server did not answer on {uri} in time; see {root / 'server.log'}")
    except BaseException:  # Ctrl-C, SIGTERM, a failed start: leave no half-started server behind
        _stop_pid(proc.pid)
        proc.wait()
        state_file(root).unlink(missing_ok=True)
        raise


def _stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after `timeout`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_server(root: str | Path) -> bool:
    """Stop the workspace's server and wait until it is gone (its port free)."""
    root = Path(root)
    info = _recorded(root)
    if info is None or not _serves(info["pid"], root):
        return False
    _stop_pid(info["pid"])
    state_file(root).unlink(missing_ok=True)
    return True
