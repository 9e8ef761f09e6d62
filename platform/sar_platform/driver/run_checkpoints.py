"""Before a run continues from its checkpoints: the newest one Ray Train would hand the workers is
checked against its manifest, and damaged or missing ones are set aside, so that the workers
resume from the newest intact checkpoint and no hand edit is ever needed.

How Ray Train 2.60 (Train V2) finds a run's checkpoints: the controller's CheckpointManager loads
`checkpoint_manager_snapshot.json` from the run folder (`_CheckpointManagerState`: every kept
checkpoint's folder name and report index, and the latest one); `ray.train.get_checkpoint()` on the
workers is that latest checkpoint. A folder named in the snapshot but missing makes Ray refuse the
whole run folder. So a damaged checkpoint is moved to `<run>/damaged/<name>` (kept for inspection)
and dropped from the snapshot, whose `latest` becomes the newest checkpoint left; the snapshot is
rewritten in Ray's own schema and replaced atomically. Checks and moves go through the workspace's
filesystem (local or S3). `kept_checkpoint` finds the checkpoint a run reported at a given step
among those kept (the best one a selection rule chose).

Runs in the `sar` process, before a TorchTrainer is fitted.
"""
from __future__ import annotations

import json
from typing import Iterator

import pyarrow.fs as pafs

from sar_core.checkpoint import MANIFEST_FILE, manifest_problems
from sar_platform.services import ray_private
from sar_platform.services.storage import Workspace

SNAPSHOT = "checkpoint_manager_snapshot.json"
DAMAGED = "damaged"


def _read_text(fs: pafs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8", errors="replace")


def _chunks(fs: pafs.FileSystem, path: str) -> Iterator[bytes]:
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            yield chunk


def folder_problems(fs: pafs.FileSystem, folder: str) -> list[str]:
    """What is wrong with one checkpoint folder (empty: intact)."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return ["the folder is missing"]

    def size_of(name: str) -> int | None:
        info = fs.get_file_info(f"{folder}/{name}")
        return info.size if info.type == pafs.FileType.File else None

    return manifest_problems(_read_text(fs, f"{folder}/{MANIFEST_FILE}"), size_of, lambda n: _chunks(fs, f"{folder}/{n}"))


def set_aside_damaged(workspace: Workspace, run_name: str) -> list[str]:
    """Check the run's checkpoints newest first until one is intact; set aside every damaged or
    missing one before it (and any missing older one). Returns one line per checkpoint set aside."""
    storage_path, fs = workspace.ray_storage()
    fs = fs or pafs.LocalFileSystem()
    run = f"{storage_path}/{run_name}"
    text = _read_text(fs, f"{run}/{SNAPSHOT}")
    if text is None:
        return []
    state = json.loads(text)
    by_age = sorted(zip(state["checkpoint_report_indices"], (r["checkpoint_dir_name"] for r in state["checkpoint_results"])),
                    reverse=True)
    damaged: dict[str, list[str]] = {}
    intact_found = False
    for _, name in by_age:
        problems = folder_problems(fs, f"{run}/{name}") if not intact_found else (
            ["the folder is missing"] if fs.get_file_info(f"{run}/{name}").type == pafs.FileType.NotFound else [])
        if problems:
            damaged[name] = problems
        else:
            intact_found = True
    if not damaged:
        return []
    fs.create_dir(f"{run}/{DAMAGED}", recursive=True)
    for name, problems in damaged.items():
        if problems != ["the folder is missing"]:
            fs.move(f"{run}/{name}", _free_name(fs, f"{run}/{DAMAGED}/{name}"))
    _write_snapshot(fs, run, _without(state, set(damaged)))
    kept = next((name for _, name in by_age if name not in damaged), None)
    lines = [f"{run_name}: checkpoint {name} is damaged ({'; '.join(p)}); set aside in {run}/{DAMAGED}/"
             for name, p in damaged.items()]
    lines.append(f"{run_name}: continuing from {kept}" if kept else f"{run_name}: no intact checkpoint is left; "
                 "training starts again from step 0")
    return lines


def kept_checkpoint(workspace: Workspace, run_name: str, step: int) -> tuple[str | None, str]:
    """(folder, "") of the run's checkpoint reported at `step` if Ray Train kept it intact, else
    (None, why not): the best checkpoint a selection rule chose must still be there."""
    storage_path, fs = workspace.ray_storage()
    fs = fs or pafs.LocalFileSystem()
    run = f"{storage_path}/{run_name}"
    text = _read_text(fs, f"{run}/{SNAPSHOT}")
    names = [r["checkpoint_dir_name"] for r in json.loads(text)["checkpoint_results"]
             if r["metrics"].get("step") == step] if text is not None else []
    if not names:
        return None, f"no kept checkpoint of {run_name} was reported at step {step}"
    problems = folder_problems(fs, f"{run}/{names[0]}")
    if problems:
        return None, f"{run}/{names[0]}: {'; '.join(problems)}"
    return f"{run}/{names[0]}", ""


def _free_name(fs: pafs.FileSystem, path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... if a checkpoint of that name was set aside before."""
    candidate, n = path, 1
    while fs.get_file_info(candidate).type != pafs.FileType.NotFound:
        n += 1
        candidate = f"{path}-{n}"
    return candidate


def _without(state: dict, names: set[str]) -> dict:
    """The snapshot with the checkpoints `names` gone (latest: the newest one left)."""
    kept = [(r, i) for r, i in zip(state["checkpoint_results"], state["checkpoint_report_indices"])
            if r["checkpoint_dir_name"] not in names]
    pending = [(r, v) for r, v in zip(state["pending_training_results"], state["pending_validation_specs"])
               if r["checkpoint_dir_name"] not in names]
    out = {**state, "checkpoint_results": [r for r, _ in kept], "checkpoint_report_indices": [i for _, i in kept],
           "pending_training_results": [r for r, _ in pending], "pending_validation_specs": [v for _, v in pending],
           "latest_checkpoint_result": max(kept, key=lambda ri: ri[1])[0] if kept else None}
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        out[key] = [n for n in state.get(key, []) if n not in names]
    return out


def _write_snapshot(fs: pafs.FileSystem, run: str, state: dict) -> None:
    text = ray_private.checkpoint_manager_state_json(state)  # Ray's own schema: refuses anything it would not load
    with fs.open_output_stream(f"{run}/{SNAPSHOT}.tmp") as f:
        f.write(text.encode())
    fs.move(f"{run}/{SNAPSHOT}.tmp", f"{run}/{SNAPSHOT}")
