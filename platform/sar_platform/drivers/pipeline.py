"""Pipelines: named steps in order, each step's outputs feeding later `step:<name>` references."""
from __future__ import annotations

from sar_platform.report import comparison_table, final_metrics, headline_columns, log_table
from sar_platform.spec.common import STEP_REF

# Which output of a referenced step a field takes.
REFERENCE_OUTPUT = {"tokenizer": "tokenizer", "init_from": "generator", "generator": "generator"}


def resolve(step, outputs: dict[str, dict]):
    """The step with every `step:<name>` replaced by that step's output path."""
    if step.kind == "sweep":
        return step.model_copy(update={"train": resolve(step.train, outputs)})
    update = {}
    for field, key in REFERENCE_OUTPUT.items():
        value = getattr(step, field, None)
        if isinstance(value, str) and (m := STEP_REF.match(value)):
            produced = outputs[m.group(1)]
            if key not in produced:
                raise ValueError(f"step {step.name}: {field}: {value} produced no {key} (it produced {sorted(produced)})")
            update[field] = produced[key]
    return step.model_copy(update=update)


def run(job, session, parent, run_name: str) -> dict:
    from sar_platform.runner import driver

    handle = session.open_run(f"{session.workspace.root}/{run_name}", run_name, job, parent)
    outputs: dict[str, dict] = {}
    for name, step in job.steps.items():
        step_run = f"{run_name}.{name}"
        done = session.outputs(step_run)
        if done is not None:
            print(f"[sar] {step_run}: finished earlier, reusing its outputs", flush=True)
            outputs[name] = done
            continue
        print(f"[sar] === step {name} ({step.kind}) ===", flush=True)
        outputs[name] = driver(step.kind)(resolve(step, outputs), session, parent=handle, run_name=step_run)

    result = {"kind": "pipeline", "steps": outputs, "mlflow_run_id": handle.run_id}
    if job.compare:
        rows = [{"step": name, **final_metrics(outputs[name].get("metrics", {}))} for name in job.compare]
        columns = headline_columns(rows, ["step"])
        print(f"\n[sar] comparison:\n{comparison_table(rows, columns)}\n", flush=True)
        log_table(handle, rows, columns, "comparison")
        result["comparison"] = rows
    handle.finish()
    session.save_outputs(run_name, result)
    return result
