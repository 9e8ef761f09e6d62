"""Preparing what a job's workers read, before they start: token shards and evaluation assets.

Token shards are encoded once per (data set, tokenizer) into the workspace
(`shards/<dataset>-<split>[-n<limit>][-flip]-<tokenizer fingerprint>`), by a Ray task placed like
a training worker (on a GPU when the job trains on GPUs), and reused by every later job and trial
that uses the same tokenizer. With `data.loader: ray_data` the shards are also handed to the
TorchTrainer as a streaming Ray Dataset (`shard_dataset`); workers iterate it with
`worker/batches.py`.

Runs in the `sar` process (and in Tune trial functions); the Ray-task bodies it launches come from
the session (`worker/tasks.py`, handed over by kinds.py).
"""
from __future__ import annotations

from pathlib import Path

import ray.data

from sar_core.checkpoint import fingerprint, load_model, read_header
from sar_core.data.shards import MANIFEST, TokenShards
from sar_platform.driver.session import Session
from sar_platform.services.inputs import TokenShardsRef, TrainInputs
from sar_platform.services.ray_env import run_task
from sar_platform.services.storage import SHARDS


def shard_folder_name(data, fingerprint_: str) -> str:
    parts = [data.dataset, "train"]
    if data.limit is not None:
        parts.append(f"n{data.limit}")
    if data.flip:
        parts.append("flip")
    return "-".join(parts + [fingerprint_])


def ensure_token_shards(job, session: Session) -> TokenShardsRef:
    """The job's token shards: found in the workspace, or encoded now by a Ray task."""
    workspace = session.workspace
    tokenizer = load_model(workspace.local_copy(job.tokenizer), kind="tokenizer")
    fp = fingerprint(tokenizer)
    folder = workspace.path(SHARDS, shard_folder_name(job.data, fp))
    if not workspace.exists(f"{folder}/{MANIFEST}"):
        print(f"[sar] tokenizing {job.data.dataset} into {folder}", flush=True)
        run_task(session.entries.encode_shards, job, folder, workspace, num_cpus=job.resources.cpus_per_worker,
                 num_gpus=1 if job.resources.use_gpu else 0)
    shards = TokenShards(workspace.local_folder(folder)).check_tokenizer(fp)
    return TokenShardsRef(folder, shards.scales, shards.num_rows, shards.meta.flip, fp, workspace.s3_endpoint)


def ensure_eval_assets(job, session: Session) -> None:
    """Train (or find) the feature network and the real reference features once, before the workers
    start, so that their evaluation only loads them from the cache."""
    _, tokenizer_config, _ = read_header(session.workspace.local_copy(job.tokenizer))
    described = run_task(session.entries.prepare_eval_assets, job, tokenizer_config.image_size, session.workspace,
                         num_cpus=job.resources.cpus_per_worker)
    print(f"[sar] evaluation assets: {described}", flush=True)


def checkpoint_origin(path: str, session: Session) -> tuple[int, str]:
    """(global step, "job @ step N") of a generator checkpoint, from what its header records."""
    _, _, meta = read_header(session.workspace.local_copy(path))
    step = int(meta.get("step", 0))
    return step, f"{meta.get('job', path)} @ step {step}"


def prepare_train_inputs(job, session: Session) -> TrainInputs:
    shards = ensure_token_shards(job, session)
    if job.eval.evaluates:
        ensure_eval_assets(job, session)
    offset, origin = checkpoint_origin(job.init_from, session) if job.init_from is not None else (0, "")
    return TrainInputs(job.tokenizer, job.init_from, shards, job.optim.total_steps(shards.num_rows), offset, origin,
                       job.probe.describe(job.data.dataset, job.eval.sampling))


def shard_dataset(folder: str | Path, expected_fingerprint: str | None = None,
                  override_num_blocks: int | None = None) -> ray.data.Dataset:
    """A lazy, streaming Dataset of a shard set's rows: index, label, tokens[, tokens_flip], after
    checking the set (complete, optionally made by the expected tokenizer).

    Row order is not preserved across blocks (Ray Data's default); `index` names each row's place
    in the source data set."""
    shards = TokenShards(folder).verify()
    if expected_fingerprint is not None:
        shards.check_tokenizer(expected_fingerprint)
    return ray.data.read_parquet([str(p) for p in shards.files], override_num_blocks=override_num_blocks)


def train_datasets(job, inputs: TrainInputs) -> dict | None:
    """The TorchTrainer's datasets: the shards as a Ray Dataset for `data.loader: ray_data`, else
    none (each worker loads the shards into memory)."""
    if job.data.loader != "ray_data":
        return None
    return {"train": shard_dataset(inputs.shards.local().folder, expected_fingerprint=inputs.shards.fingerprint)}
