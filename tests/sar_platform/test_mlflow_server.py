"""The workspace's MLflow server: concurrent jobs share one, and an interrupted start leaves no
orphan (Ctrl-C stops the half-started server; after SIGKILL the next start adopts it)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from sar_platform.services.mlflow_server import ensure_server, state_file, stop_server
from tests.support.holds import Holds
from tests.support.processes import interruptible, wait_until

START = "import sys, json; from sar_platform.services.mlflow_server import ensure_server; " \
        "info = ensure_server(sys.argv[1], port=0); print(json.dumps({'pid': info.pid, 'port': info.port}))"
STARTED = "mlflow-server.started"  # the hold point between launching the server and its first answer


def servers_of(root: Path) -> list[int]:
    """PIDs of the MLflow server processes running on this workspace's database."""
    database = str(root / "mlflow.db").encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            parts = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in parts and any(database in p for p in parts) and any(p.endswith(b"mlflow") for p in parts):
            found.append(int(cmdline.parent.name))
    return found


def test_two_jobs_starting_on_a_fresh_workspace_share_one_server(tmp_path):
    root = tmp_path / "mlflow"
    starts = [subprocess.Popen([sys.executable, "-c", START, str(root)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        infos = [json.loads(p.communicate(timeout=300)[0]) for p in starts]
        assert all(p.returncode == 0 for p in starts)
        assert infos[0] == infos[1]  # the same server, found by the second through the first's start
        assert servers_of(root) == [infos[0]["pid"]]
        assert "already exists" not in (root / "server.log").read_text()  # no migration raced another
    finally:
        stop_server(root)
    assert servers_of(root) == []


def test_an_interrupted_start_leaves_no_orphan_server(tmp_path):
    # Ctrl-C while the server starts (held after it is launched and recorded, before it answers):
    # the starting process stops it on its way out
    root, holds = tmp_path / "mlflow", Holds(tmp_path / "holds")
    holds.arm(STARTED)
    start = subprocess.Popen([sys.executable, "-c", START, str(root)], stdout=subprocess.PIPE, text=True, env=holds.env,
                             preexec_fn=interruptible)
    holds.wait(STARTED, 120, alive=lambda: start.poll() is None)
    pid = json.loads(state_file(root).read_text())["pid"]
    os.kill(start.pid, signal.SIGINT)
    start.wait(timeout=60)
    assert start.returncode != 0
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or not servers_of(root), 30, "the half-started server to end")
    assert servers_of(root) == [] and not state_file(root).exists()

    # SIGKILL while the server starts: nothing can stop it then, so the next start adopts it
    holds.release(STARTED)
    holds.arm(STARTED)
    start = subprocess.Popen([sys.executable, "-c", START, str(root)], stdout=subprocess.PIPE, text=True, env=holds.env)
    holds.wait(STARTED, 120, alive=lambda: start.poll() is None)
    pid = json.loads(state_file(root).read_text())["pid"]
    start.kill()
    start.wait()
    try:
        info = ensure_server(root, port=0)
        assert info.pid == pid and servers_of(root) == [pid]  # one server, on the port it was started with
    finally:
        stop_server(root)
