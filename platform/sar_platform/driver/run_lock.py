"""One live `sar run` per run folder: an exclusive lock per run name, holding who runs it.

The lock is an `flock` on `<workspace>/locks/<run name>.lock` (for an s3:// workspace, on a file
under `~/.local/share/sar-platform/locks/`, which guards the runs started from this machine). The
kernel releases it when its process ends, however it ends, so a lock left by a killed run is stale
by construction: the next run takes it over (and says so). The file names the holder (host, PID,
start time, command line) for the refusal message.

Runs in the `sar` process.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sar_platform.services.storage import Workspace
from sar_platform.spec.loader import SpecError


def lock_folder(workspace: Workspace) -> Path:
    if workspace.is_local:
        return Path(workspace.root) / "locks"
    digest = hashlib.sha256(workspace.root.encode()).hexdigest()[:16]
    return Path.home() / ".local" / "share" / "sar-platform" / "locks" / digest


def _holder(f) -> str:
    f.seek(0)
    try:
        info = json.loads(f.read() or "{}")
    except ValueError:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"PID {info.get('pid')} on {info.get('host')} (started {started}: {info.get('command', '?')})"


def in_use(run_name: str, holder: str) -> str:
    return (f"run {run_name} is in use by a live `sar run`: {holder}. Wait for it to finish or stop it "
            f"(Ctrl-C there), then `sar run --resume`")


def live_holder(workspace: Workspace, run_name: str) -> str | None:
    """Who runs `run_name` right now (None: nobody)."""
    path = lock_folder(workspace) / f"{run_name}.lock"
    if not path.is_file():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(f)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


@contextmanager
def _lock_one(path: Path, run_name: str):
    f = open(path, "a+")  # noqa: SIM115 — held for the with-block
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpecError([in_use(run_name, _holder(f))]) from None
        previous = _holder(f) if f.seek(0, os.SEEK_END) else None
        if previous is not None:
            print(f"[sar] run {run_name}: taking over the lock left by {previous}, which has ended", flush=True)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                            "command": " ".join(sys.argv)[:500]}))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # released cleanly: the next run has nothing to take over
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


@contextmanager
def hold_runs(run_names: list[str], workspace: Workspace):
    """Hold the lock of every run name (sorted, so two jobs sharing names cannot deadlock)."""
    folder = lock_folder(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for name in sorted(set(run_names)):
            stack.enter_context(_lock_one(folder / f"{name}.lock", name))
        yield
