"""Pipelines: named steps in order, each step's outputs feeding later `step:<name>[@best|@last]`
references (the step's run is tagged with what each took and why), then the comparison of the
`compare` steps (driver/compare.py) on the pipeline's run.

Runs in the `sar` process; every step runs through the session's `run` (the job-kind table).
"""
from __future__ import annotations

import dataclasses

from sar_platform.driver.compare import Comparison, step_arms
from sar_platform.driver.report import log_table
from sar_platform.driver.session import Session
from sar_platform.services.tracking import RunHandle


def run(job, session: Session, parent: RunHandle | None, run_name: str) -> dict:
    handle = session.open_run(run_name, job, parent)
    # Other pipelines' steps (their outputs were checked before the run started).
    external = {target: session.outputs(run) for target, run in job.external_steps().items()}
    outputs: dict[str, dict] = {}
    for name, step in job.steps.items():
        step_run = f"{run_name}.{name}"
        done = session.outputs(step_run)
        if done is not None:
            print(f"[sar] {step_run}: finished earlier, reusing its outputs", flush=True)
            outputs[name] = done
            continue
        print(f"[sar] === step {name} ({step.kind}) ===", flush=True)
        seen = {**external, **outputs}
        chosen = step.reference_tags(seen)  # which checkpoint each step: reference took, and why
        for field, ref in step.step_references():
            print(f"[sar] {step_run}.{field}: {ref} is {chosen[f'sar.ref.{field}.chosen']}", flush=True)
        step_session = dataclasses.replace(session, run_tags={**session.run_tags, **chosen})
        outputs[name] = step_session.run(step.resolve(seen), handle, step_run)

    result = {"kind": job.kind, "steps": outputs, "mlflow_run_id": handle.run_id}
    if job.compare:
        comparison = Comparison([arm for name in job.compare for arm in step_arms(name, job.steps[name].resolve({**external, **outputs}),
                                                                                  outputs[name])], job.baseline, job.pairs)
        print(f"\n[sar] comparison:\n{comparison.render()}\n", flush=True)
        result.update(comparison.log(handle))
    handle.finish()
    session.save_outputs(run_name, result)
    return result
