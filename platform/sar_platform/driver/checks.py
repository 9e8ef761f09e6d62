"""Checks that need more than the spec file (checkpoints, data on disk), one per job kind, run before
Ray or MLflow start: a wrong checkpoint or missing data is reported in seconds, not after minutes of
set-up. The job-kind table (kinds.py) names each kind's check and walks pipelines and sweeps.

Runs in the `sar` process.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from sar_core.checkpoint import CheckpointError, read_header
from sar_core.data.dataset import DataDamagedError
from sar_core.families import family, unread_objective_fields
from sar_core.objectives import ObjectiveConfig
from sar_platform.services.storage import StorageUnreachable, Workspace
from sar_platform.spec.common import STEP_REF, external_run, step_output


@dataclass
class CheckContext:
    """What the checks of one job tree share: where checkpoints are, what they found wrong, and the
    tokenizer configs that earlier pipeline steps will produce (by step name)."""

    workspace: Workspace
    problems: list[str] = field(default_factory=list)
    """`<field path>: <what is wrong>` each (the path locates the problem in the spec file)."""
    tokenizers: dict = field(default_factory=dict)
    skip_remote: bool = False
    """Leave s3:// inputs unchecked (`sar validate --skip-remote`, for a machine without S3 access)."""
    skipped: list[str] = field(default_factory=list)
    """The fields left unchecked because they are remote and `skip_remote` is set."""
    generators: dict = field(default_factory=dict)
    """The generator configs that earlier train steps will produce (by step name)."""
    written: Callable[[str], bool] | None = None
    """Whether the spec file writes a dotted field path (None: the job was not read from a file)."""

    def writes(self, dotted: str, differs_from_default: bool) -> bool:
        """Whether the spec sets a field; for a job built without a file, whether its value is not the default."""
        return self.written(dotted) if self.written is not None else differs_from_default


def _other_pipelines_output(ref: str, kind: str, field_: str, ctx: CheckContext) -> str | None:
    """The checkpoint a `step:<pipeline>/<name>` reference takes from this workspace (None, with the
    problem recorded, while that step has not finished or produced none)."""
    run = external_run(ref)
    try:
        outputs = ctx.workspace.read_json(ctx.workspace.outputs_path(run))
    except StorageUnreachable as e:
        ctx.problems.append(f"{field_}: {ref}: cannot read the workspace ({e}); check the network, the endpoint "
                            "and the S3 credentials")
        return None
    if outputs is None:
        ctx.problems.append(f"{field_}: {ref}: run {run} has not finished in the workspace {ctx.workspace.root}; "
                            f"run the pipeline {run.split('.', 1)[0]} there first")
        return None
    try:
        produced = step_output({STEP_REF.match(ref).group(1): outputs}, ref)
    except ValueError as e:
        ctx.problems.append(f"{field_}: {e}")
        return None
    if kind not in produced:
        ctx.problems.append(f"{field_}: {ref} produced no {kind} (it produced {sorted(produced)})")
        return None
    return produced[kind]


def _header(path: str, kind: str, field_: str, ctx: CheckContext):
    """The model config in a checkpoint's header (None when the path is a step of this pipeline,
    not yet produced, or wrong)."""
    if STEP_REF.match(path):
        if external_run(path) is None:
            return None
        if ctx.skip_remote and not ctx.workspace.is_local:
            ctx.skipped.append(field_)
            return None
        path = _other_pipelines_output(path, kind, field_, ctx)
        if path is None:
            return None
    if "://" in path and ctx.skip_remote:
        ctx.skipped.append(field_)
        return None
    try:
        if "://" in path and not ctx.workspace.exists(path):
            ctx.problems.append(f"{field_}: {path} does not exist")
            return None
        found, config, _ = read_header(ctx.workspace.local_copy(path))
    except CheckpointError as e:
        ctx.problems.append(f"{field_}: {e}")
        return None
    except StorageUnreachable as e:
        ctx.problems.append(f"{field_}: {e}; check the network, the endpoint and the S3 credentials, or check "
                            "everything else with `sar validate --skip-remote`")
        return None
    if found != kind:
        ctx.problems.append(f"{field_}: {path} holds a {found}, not a {kind}")
        return None
    return config


def _check_data(data, field_: str, ctx: CheckContext, in_channels: int | None = None) -> bool:
    """Whether the data set is there (problems are recorded)."""
    dataset = data.image_dataset()
    try:
        dataset.check_available()
    except (FileNotFoundError, DataDamagedError) as e:
        ctx.problems.append(f"{field_}: {e}")
        return False
    if in_channels not in (None, dataset.channels):
        ctx.problems.append(f"{field_}: {data.dataset} images have {dataset.channels} channel(s), "
                            f"the tokenizer expects {in_channels}")
    return True


def _check_batch(job, prefix: str, ctx: CheckContext) -> None:
    """The global batch fits in the training rows (a training step takes one batch without
    repeating rows; that it splits over the workers is checked when the spec is read)."""
    batch = job.optim.batch_size
    dataset = job.data.image_dataset()
    if getattr(dataset, "download", False):
        try:  # counting the rows must not start a download: skip until the data is here
            dataclasses.replace(dataset, download=False).check_available()
        except FileNotFoundError:
            return
    rows = dataset.split_size("train")
    if job.data.limit is not None:
        rows = min(rows, job.data.limit)
    if rows < batch:
        limit = f" (data.limit: {job.data.limit})" if job.data.limit is not None else ""
        ctx.problems.append(f"{prefix}optim.batch_size: {batch} is larger than the {rows} training images of "
                            f"{job.data.dataset}{limit}; lower the batch or use more data")


def _step_tokenizer(path: str, field_: str, ctx: CheckContext):
    """The tokenizer config behind a checkpoint path or a `step:<name>` of an earlier tokenizer step."""
    tok = _header(path, "tokenizer", field_, ctx)
    if tok is None and (m := STEP_REF.match(path)):
        tok = ctx.tokenizers.get(m.group(1))
    return tok


def check_tokenizer(job, ctx: CheckContext, prefix: str = "") -> None:
    if _check_data(job.data, f"{prefix}data", ctx, job.model.in_channels):
        _check_batch(job, prefix, ctx)
    ctx.tokenizers[job.name] = job.model


def _step_generator(path: str, field_: str, ctx: CheckContext):
    """The generator config behind a checkpoint path or a `step:<name>` of an earlier train step."""
    gen = _header(path, "generator", field_, ctx)
    if gen is None and (m := STEP_REF.match(path)):
        gen = ctx.generators.get(m.group(1))
    return gen


def _check_init_family(job, gen, ctx: CheckContext, prefix: str) -> None:
    """What the spec could not check at load for a job whose family comes from init_from alone: the
    objective settings only other families read, and schedules the family cannot train on."""
    defaults = ObjectiveConfig()
    for name, why in unread_objective_fields(gen.family).items():
        path = f"{prefix}objective.{name}"
        if ctx.writes(path, getattr(job.objective, name) != getattr(defaults, name)):
            ctx.problems.append(f"{path}: {why}; init_from {job.init_from} holds a {gen.family} generator")
    generator = family(gen.family).generator
    if (problem := generator.training_schedule_problem(gen, job.schedule.scales, job.schedule.random)) is not None:
        ctx.problems.append(f"{prefix}schedule: {problem} (init_from {job.init_from} holds a {gen.family} generator)")


def check_train(job, ctx: CheckContext, prefix: str = "") -> None:
    tok = _step_tokenizer(job.tokenizer, f"{prefix}tokenizer", ctx)
    gen = job.model
    if job.init_from is not None:
        gen = _step_generator(job.init_from, f"{prefix}init_from", ctx) or gen
        if job.model is None and gen is not None:
            _check_init_family(job, gen, ctx, prefix)
    ctx.generators[job.name] = gen
    if _check_data(job.data, f"{prefix}data", ctx):
        _check_batch(job, prefix, ctx)
    if tok is not None and job.schedule.scales[-1] != tok.latent_size:
        ctx.problems.append(f"{prefix}schedule.scales: ends at {job.schedule.scales[-1]} but the tokenizer's latent is "
                            f"{tok.latent_size}x{tok.latent_size}; the last scale must equal it")
    if tok is not None and gen is not None:
        if gen.vocab_size != tok.codebook_size or gen.codebook_dim != tok.codebook_dim:
            ctx.problems.append(f"{prefix}model: vocab_size/codebook_dim {gen.vocab_size}/{gen.codebook_dim} do not match "
                                f"the tokenizer's codebook {tok.codebook_size}x{tok.codebook_dim}")
    classes = job.data.image_dataset().num_classes
    if gen is not None and classes is not None and gen.num_classes != classes:
        ctx.problems.append(f"{prefix}model.num_classes: {gen.num_classes}, but {job.data.dataset} has {classes} classes")


def check_eval(job, ctx: CheckContext, prefix: str = "") -> None:
    tok = _header(job.tokenizer, "tokenizer", f"{prefix}tokenizer", ctx)
    _header(job.generator, "generator", f"{prefix}generator", ctx)
    _check_data(job.data, f"{prefix}data", ctx)
    if tok is not None and job.schedule[-1] != tok.latent_size:
        ctx.problems.append(f"{prefix}schedule: ends at {job.schedule[-1]}, the tokenizer's latent is {tok.latent_size}")
