"""`sweep` jobs: Ray Tune over any train-spec field, one TorchTrainer and one MLflow child run per trial.

Train V2 pattern: the Tune trainable is a function that builds and fits a TorchTrainer whose
`TuneReportCallback` forwards rank 0's reports to Tune, so ASHA sees every training report and can
stop a trial (its worker group and placement group are released with it). Each trial runs its train
job through the session's `run` (the job-kind table), with the trial's tags and Tune's callback.

A trial that fails is restarted `trial_retries` times (Tune's FailureConfig; the restart resumes
its checkpoints and MLflow run); a sweep that still has failed trials at the end is FAILED and
raises JobFailed naming them.

Runs in the `sar` process; `run_trial` runs in the Tune trial's own process.
"""
from __future__ import annotations

import math
import sys
from functools import partial

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from sar_platform.driver.compare import Comparison, sweep_arms
from sar_platform.driver.inputs import prepare_train_inputs
from sar_platform.driver.guidance import guidance_metrics
from sar_platform.driver.report import (comparison_table, final_diagnostics, headline, headline_columns, log_sweep_figure,
                                        log_table)
from sar_platform.driver.session import JobFailed, Session
from sar_platform.spec.overrides import trial_job
from sar_platform.services.tracking import RunHandle, Tracker

# The trial function only waits on its TorchTrainer, whose workers hold the resources. It reserves a
# byte of memory rather than a sliver of CPU (a bundle cannot be empty), so that a worker asking for
# every CPU of a node (cpus_per_worker: 2 on a 2-core laptop) still fits beside it.
TRIAL_RESOURCES = {"cpu": 0, "memory": 1}


def tune_domain(domain):
    if domain.grid is not None:
        return ray.tune.grid_search(list(domain.grid))
    if domain.choice is not None:
        return ray.tune.choice(list(domain.choice))
    if domain.uniform is not None:
        return ray.tune.uniform(*domain.uniform)
    if domain.loguniform is not None:
        return ray.tune.loguniform(*domain.loguniform)
    return ray.tune.randint(domain.randint[0], domain.randint[1] + 1)  # inclusive bounds in the spec


def param_space(job) -> dict:
    space = {path: tune_domain(d) for path, d in job.space.items()}
    if job.seeds is not None:
        space["seed"] = ray.tune.grid_search(list(job.seeds))
    return space


def trial_run_name(run_name: str, trial_id: str) -> str:
    return f"{run_name}.{trial_id}"


def quiet_actor_exit(unraisable) -> None:
    """Tune ends a finished trial's process with SIGTERM, and Ray's handler raises SystemExit wherever
    the process happens to be. Inside a garbage-collection callback Python cannot raise it and prints
    "Exception ignored ... SystemExit" to the user's console: the process's normal end, not a
    fault. Only that is dropped; every other unraisable exception goes to Python's own hook."""
    if not isinstance(unraisable.exc_value, SystemExit):
        sys.__unraisablehook__(unraisable)


def run_trial(config: dict, sweep, session_state: dict, parent: RunHandle, run_name: str) -> None:
    """The Tune trainable: this trial's train spec, run as a train job under the sweep's MLflow run."""
    sys.unraisablehook = quiet_actor_exit
    trial_id = ray.tune.get_context().get_trial_id()
    name = trial_run_name(run_name, trial_id)
    tags = {"sar.trial_id": trial_id, **{f"sar.sweep.{k}": str(v) for k, v in config.items()}}
    session = Session.for_trial(session_state, Tracker(parent.tracking_uri, sweep.mlflow.experiment, parent.server_root), tags,
                                callbacks=(TuneReportCallback(),))
    session.run(trial_job(sweep, config, name=name), parent, name)


def scheduler(job, total_reports: int):
    if job.scheduler is None:
        return None
    s = job.scheduler
    return ASHAScheduler(metric=s.metric, mode=s.mode, max_t=max(total_reports, s.grace_period),
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def trial_rows(results, job, tracker: Tracker, parent: RunHandle, total_steps: int) -> list[dict]:
    """One row per trial (finished: it reached its last step); the MLflow runs of trials ASHA
    stopped are closed as KILLED."""
    children = {r.data.tags.get("sar.trial_id"): r for r in tracker.children(parent)}
    rows = []
    for res in results:
        metrics = res.metrics or {}
        trial_id = metrics.get("trial_id", "")  # Tune adds it to every result
        child = children.get(trial_id)
        row = {"trial": trial_id}
        row.update({p: res.config.get(p) for p in param_names(job)})
        finished = metrics.get("step", 0) >= total_steps
        row["status"] = "error" if res.error else ("finished" if finished else f"stopped at step {metrics.get('step', '?')}")
        row.update(headline(metrics))
        row.update(final_diagnostics(metrics))  # the trials table shows the headline; the CSV and comparisons keep these
        row.update(guidance_metrics(metrics))  # a guidance grid's cfg/<g>/... keys, for the comparison's best guidance
        row.update({k: v for k, v in metrics.items() if k.startswith("cont/")})  # continuation quality per k
        if child is not None and child.info.status == "RUNNING":
            tracker.client.set_terminated(child.info.run_id, "FAILED" if res.error else "KILLED")
        rows.append(row)
    return rows


def param_names(job) -> list[str]:
    return [*job.space, *(["seed"] if job.seeds is not None else [])]


def build_tuner(job, session: Session, handle: RunHandle, run_name: str, total_reports: int) -> ray.tune.Tuner:
    """A new Tuner, or (with --resume) the sweep's earlier one, continuing its unfinished trials."""
    storage_path, filesystem = session.workspace.ray_storage()
    trainable = ray.tune.with_resources(
        partial(run_trial, sweep=job, parent=handle, run_name=run_name, session_state=session.trial_state()),
        TRIAL_RESOURCES,
    )
    experiment = f"{storage_path}/{run_name}"
    if session.resume and ray.tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        return ray.tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                      storage_filesystem=filesystem)
    return ray.tune.Tuner(
        trainable, param_space=param_space(job),
        tune_config=ray.tune.TuneConfig(num_samples=job.num_samples, max_concurrent_trials=job.max_concurrent_trials,
                                        scheduler=scheduler(job, total_reports)),
        run_config=ray.tune.RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
                                      failure_config=ray.tune.FailureConfig(max_failures=job.trial_retries)),
    )


def run(job, session: Session, parent: RunHandle | None, run_name: str) -> dict:
    handle = session.open_run(run_name, job, parent)
    base = trial_job(job, {}, name=f"{run_name}.base")
    inputs = prepare_train_inputs(base, session)  # shared shards are encoded once, before trials start
    total_reports = math.ceil(inputs.steps / base.log.every_steps) + 2
    results = build_tuner(job, session, handle, run_name, total_reports).fit()
    rows = trial_rows(results, job, session.tracker, handle, inputs.steps)
    columns = headline_columns(rows, ["trial", *param_names(job), "status"])
    print(f"\n[sar] sweep {run_name}: {len(rows)} trials\n{comparison_table(rows, columns)}\n", flush=True)
    log_table(handle, rows, columns, "trials")
    log_sweep_figure(handle, rows, param_names(job), job.metric)
    compared = {}
    if job.seeds is not None and len(job.seeds) > 1:  # every configuration across its seeds, paired against the first
        arms = sweep_arms(run_name, job, rows)
        comparison = Comparison(arms, arms[0].name if len(arms) > 1 else None)
        print(f"[sar] sweep {run_name} across seeds:\n{comparison.render()}\n", flush=True)
        compared = comparison.log(handle)
    best = best_row(rows, job.metric, job.mode)
    if best is not None:
        handle.log_metrics({f"best_{job.metric}": best[job.metric]}, step=0)
    if failed := failed_trials(results, job):
        handle.finish("FAILED")  # no outputs.json: `sar run --resume` runs the failed trials again
        raise JobFailed(f"sweep {run_name}: {len(failed)} of {len(rows)} trials failed (after {job.trial_retries} "
                        f"retries each):\n  " + "\n  ".join(failed))
    handle.finish()
    outputs = {"kind": job.kind, "trials": rows, "best": best, "mlflow_run_id": handle.run_id, **compared}
    if best is not None:
        best_outputs = session.outputs(trial_run_name(run_name, best["trial"])) or {}
        outputs.update({k: best_outputs[k] for k in ("generator", "tokenizer") if k in best_outputs})
        outputs["metrics"] = headline(best)
    session.save_outputs(run_name, outputs)
    return outputs


def failed_trials(results, job) -> list[str]:
    """`<trial> (<its parameters>): <the workers' error>` of every trial that ended in an error."""
    failed = []
    for res in results:
        if res.error is None:
            continue
        trial = (res.metrics or {}).get("trial_id") or (res.path or "?").rstrip("/").rsplit("/", 1)[-1]
        params = ", ".join(f"{p}={res.config.get(p)}" for p in param_names(job))
        cause = getattr(res.error, "__cause__", None) or res.error
        failed.append(f"{trial} ({params}): {str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__}")
    return failed


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    scored = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r[metric])
