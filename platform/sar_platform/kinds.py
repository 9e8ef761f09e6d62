"""The job-kind table: the one place where a job kind meets its driver, the checks of its inputs and
the worker code its driver launches. Everything that depends on a job's kind looks it up here.

Adding a kind: its spec class (spec/jobs.py), its driver (driver/<kind>.py), its worker if it runs
one (worker/), and one entry in `KINDS`.

This is also the one module that imports both sides: drivers never import worker code, they are
handed it (`ENTRIES`, through the session), so the driver and worker rooms stay independent.

Runs in the `sar` process (and is unpickled in Tune trial functions, which run nested jobs through it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sar_platform.driver import evaluate, pipeline, sweep, tokenizer, train
from sar_platform.driver.checks import CheckContext, check_eval, check_tokenizer, check_train
from sar_platform.driver.session import Entries, Session, WorkerEntry
from sar_platform.services.storage import Workspace
from sar_platform.services.tracking import RunHandle
from sar_platform.spec.loader import Locator, SpecError
from sar_platform.worker import generator_task, score, tasks, tokenizer_task


@dataclass(frozen=True)
class JobKind:
    driver: Callable[..., dict]
    """run(job, session, parent, run_name) -> outputs (also written to runs/<run_name>/outputs.json)."""
    check: Callable[..., None] | None
    """check(job, context, prefix): the job's own inputs on disk, before anything starts."""
    worker: WorkerEntry | None = None
    """The Ray Train worker the driver runs (None: the driver runs other jobs)."""


KINDS: dict[str, JobKind] = {
    "tokenizer": JobKind(tokenizer.run, check_tokenizer, WorkerEntry(
        tokenizer_task.train_tokenizer, tokenizer_task.CHECKPOINT_FILE, output="tokenizer")),
    "train": JobKind(train.run, check_train, WorkerEntry(
        generator_task.train_generator, generator_task.CHECKPOINT_FILE, output="generator")),
    "eval": JobKind(evaluate.run, check_eval, WorkerEntry(score.score_generator)),
    "sweep": JobKind(sweep.run, None),  # its trials are train jobs
    "pipeline": JobKind(pipeline.run, None),  # its steps are jobs of the other kinds
}


def run_job(job, session: Session, parent: RunHandle | None, run_name: str) -> dict:
    """Run a job of any kind under `run_name`, nested under the MLflow run `parent` (if any)."""
    return KINDS[job.kind].driver(job, session, parent, run_name)


def check_inputs(job, workspace: Workspace, locator: Locator | None = None, skip_remote: bool = False) -> list[str]:
    """Every kind's checks over the job and the jobs inside it; SpecError lists every problem, at
    the spec location of the field it names when the `locator` of the job's file is given. Returns
    the fields left unchecked (s3:// inputs, with `skip_remote`)."""
    context = CheckContext(workspace, skip_remote=skip_remote, written=None if locator is None else locator.writes)
    _check(job, context, "")
    if context.problems:
        raise SpecError([located(p, job, locator) for p in context.problems])
    return context.skipped


def located(problem: str, job, locator: Locator | None) -> str:
    """`<field path>: <message>` -> `file:line:col: <field path>: <message>` (or `<job>: ...`)."""
    if locator is None:
        return f"{job.name}: {problem}"
    return f"{locator.where(problem.split(':', 1)[0].strip())}: {problem}"


def _check(job, context: CheckContext, prefix: str) -> None:
    check = KINDS[job.kind].check
    if check is not None:
        check(job, context, prefix)
    for inner_prefix, inner in job.inner_jobs():
        _check(inner, context, prefix + inner_prefix)


ENTRIES = Entries(
    workers={kind: k.worker for kind, k in KINDS.items() if k.worker is not None},
    encode_shards=tasks.encode_token_shards,
    prepare_eval_assets=tasks.prepare_eval_assets,
    run_job=run_job,
)
