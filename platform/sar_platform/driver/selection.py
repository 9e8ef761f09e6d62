"""What a train run's selection rule (`eval.select`) chose, recorded once the run has finished:
outputs.json's `selection` (the rule, every evaluation, the best step and its value, why training
ended, the best checkpoint's location) and the run's `sar.select.*` tags. `step:<name>@best`
takes the checkpoint recorded here.

Runs in the `sar` process (and in Tune trial functions).
"""
from __future__ import annotations

import json

from sar_platform.driver.run_checkpoints import kept_checkpoint
from sar_platform.driver.session import Session, WorkerEntry
from sar_platform.services.selection import SELECTION_FILE, BestStep
from sar_platform.services.tracking import RunHandle


def evaluations(checkpoint) -> list:
    """The selection evaluations a Ray Train checkpoint carries ([] without one)."""
    if checkpoint is None:
        return []
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{SELECTION_FILE}") as f:
        return json.loads(f.read().decode())["history"]


def record_selection(job, result, session: Session, run_name: str, handle: RunHandle, entry: WorkerEntry) -> dict:
    """outputs.json's `selection` of a finished run; its best checkpoint must still be kept intact."""
    rule = job.eval.select
    best = BestStep.from_history(rule, evaluations(result.checkpoint))
    record = {"rule": rule.describe(), "metric": rule.report_key, "mode": rule.better,
              "evaluations": [[step, value] for step, value in best.history], "best_step": best.best_step,
              "best_value": best.best_value if best.best_step is not None else None,
              "stopped_early": best.should_stop, "stop_reason": best.stop_reason(), "why": best.outcome()}
    tags = {"sar.select.rule": rule.describe(), "sar.select.outcome": best.outcome()}
    if best.best_step is not None:
        folder, problem = kept_checkpoint(session.workspace, run_name, best.best_step)
        if folder is None:
            record["missing"] = problem
        else:
            record["checkpoint"] = session.checkpoint_uri(folder)
            record[entry.output] = f"{record['checkpoint']}/{entry.checkpoint_file}"
            tags["sar.select.best_checkpoint"] = record["checkpoint"]
    handle.set_tags(tags)
    return record
