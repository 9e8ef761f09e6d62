"""Checks that need more than the spec file (checkpoints, data on disk), run before Ray or MLflow
start: a wrong checkpoint or missing data is reported in seconds, not after minutes of set-up."""
from __future__ import annotations

from sar_core.checkpoint import CheckpointError, read_header
from sar_core.data.fashion_mnist import DataNotFoundError, find_root
from sar_platform.spec.common import STEP_REF
from sar_platform.spec.loader import SpecError
from sar_platform.storage import Workspace

FASHION_MNIST_CLASSES = 10


def _header(path: str, kind: str, field: str, workspace: Workspace, problems: list[str]):
    if STEP_REF.match(path):
        return None
    if "://" in path and not workspace.exists(path):
        problems.append(f"{field}: {path} does not exist")
        return None
    try:
        found, config, _ = read_header(workspace.local_copy(path))
    except CheckpointError as e:
        problems.append(f"{field}: {e}")
        return None
    if found != kind:
        problems.append(f"{field}: {path} holds a {found}, not a {kind}")
        return None
    return config


def _check_data(data, field: str, problems: list[str], in_channels: int | None = None):
    if data.dataset == "fashion_mnist":
        if not data.download:
            try:
                find_root(data.root)
            except DataNotFoundError as e:
                problems.append(f"{field}: {e}")
        if in_channels not in (None, 1):
            problems.append(f"{field}: Fashion-MNIST images have 1 channel, the tokenizer expects {in_channels}")
    elif data.root is not None and "://" not in data.root:
        from pathlib import Path

        if not (Path(data.root) / "train").is_dir():
            problems.append(f"{field}.root: {data.root} has no train/ folder of class folders")


def _num_classes(data) -> int | None:
    return FASHION_MNIST_CLASSES if data.dataset == "fashion_mnist" else None


def check_train(job, workspace: Workspace, problems: list[str], tokenizers: dict, prefix: str = "") -> None:
    tok = _header(job.tokenizer, "tokenizer", f"{prefix}tokenizer", workspace, problems)
    if tok is None and (m := STEP_REF.match(job.tokenizer)):
        tok = tokenizers.get(m.group(1))
    gen = job.model
    if job.init_from is not None:
        gen = _header(job.init_from, "generator", f"{prefix}init_from", workspace, problems) or gen
    _check_data(job.data, f"{prefix}data", problems)
    if tok is not None and job.schedule.scales[-1] != tok.latent_size:
        problems.append(f"{prefix}schedule.scales: ends at {job.schedule.scales[-1]} but the tokenizer's latent is "
                        f"{tok.latent_size}x{tok.latent_size}; the last scale must equal it")
    if tok is not None and gen is not None:
        if gen.vocab_size != tok.codebook_size or gen.codebook_dim != tok.codebook_dim:
            problems.append(f"{prefix}model: vocab_size/codebook_dim {gen.vocab_size}/{gen.codebook_dim} do not match the "
                            f"tokenizer's codebook {tok.codebook_size}x{tok.codebook_dim}")
    classes = _num_classes(job.data)
    if gen is not None and classes is not None and gen.num_classes != classes:
        problems.append(f"{prefix}model.num_classes: {gen.num_classes}, but {job.data.dataset} has {classes} classes")


def check_job(job, workspace: Workspace, problems: list[str], tokenizers: dict, prefix: str = "") -> None:
    if job.kind == "tokenizer":
        _check_data(job.data, f"{prefix}data", problems, job.model.in_channels)
        tokenizers[job.name] = job.model
    elif job.kind == "train":
        check_train(job, workspace, problems, tokenizers, prefix)
    elif job.kind == "sweep":
        check_train(job.train, workspace, problems, tokenizers, f"{prefix}train.")
    elif job.kind == "eval":
        tok = _header(job.tokenizer, "tokenizer", f"{prefix}tokenizer", workspace, problems)
        _header(job.generator, "generator", f"{prefix}generator", workspace, problems)
        _check_data(job.data, f"{prefix}data", problems)
        if tok is not None and job.schedule[-1] != tok.latent_size:
            problems.append(f"{prefix}schedule: ends at {job.schedule[-1]}, the tokenizer's latent is {tok.latent_size}")
    elif job.kind == "pipeline":
        for name, step in job.steps.items():
            check_job(step, workspace, problems, tokenizers, f"steps.{name}.")


def check_inputs(job, workspace: Workspace) -> None:
    problems: list[str] = []
    check_job(job, workspace, problems, {})
    if problems:
        raise SpecError([f"{job.name}: {p}" for p in problems])
