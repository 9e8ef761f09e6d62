"""The converged-base protocol on real Ray and MLflow: a run whose weights barely move (lr 1e-9),
so that its selection evaluations are equal within far less than min_delta: the first one stays
the best, the rule stops training `patience` evaluations later, Ray Train keeps that best
checkpoint with `keep: 1` while deleting the one between, and a later step takes it with
`step:pretrain@best`, its run saying which and why; another pipeline in the same workspace takes it
with `step:converged/pretrain@best` (how the ablations share one base)."""
import json
import re
from pathlib import Path

import pytest

from sar_core.checkpoint import read_header
from sar_platform.runner import run_job
from sar_platform.spec import load_job
from tests.support.servers import experiment_runs
from tests.support.specs import eval_spec, local_run, pipeline_spec, train_step, write_spec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_local, mlflow_uri, tokenizer_path):
    tmp = tmp_path_factory.mktemp("selection")
    scoring = eval_spec(100)[1:-1]  # sampling and metrics, flow style, without the braces
    on_256 = ("data: {limit: 256}",)
    path = write_spec(tmp, pipeline_spec("converged", {
        "pretrain": train_step(*on_256, "checkpoint: {every_steps: 2, keep: 1}", "log: {every_steps: 2}",
                               f"eval: {{every_steps: 2, select: {{patience: 2, min_delta: 0.5}}, figures: false, {scoring}}}",
                               tokenizer=tokenizer_path, optim="{lr: 1.0e-9, batch_size: 16, steps: 10}"),
        "tf": train_step(*on_256, "checkpoint: {every_steps: 1}", "log: {every_steps: 1}", "eval: {at_end: false}",
                         tokenizer=tokenizer_path, init_from="step:pretrain@best", optim="{lr: 0.001, batch_size: 16, steps: 1}"),
    }, head=(*local_run(tmp, mlflow_uri, "selection-test"), "resources: {num_workers: 1, cpus_per_worker: 2}")))
    outputs = run_job(load_job(path), spec_text=path.read_text())
    runs = {r.info.run_name: r for r in experiment_runs(mlflow_uri, "selection-test")} | {"uri": mlflow_uri}
    return outputs["steps"], runs, Path(f"{tmp}/ws/runs/converged.pretrain"), (tmp, tokenizer_path)


def test_the_rule_keeps_the_first_evaluation_and_stops_training_patience_evaluations_later(pipeline):
    steps, _, _, _ = pipeline
    selection = steps["pretrain"]["selection"]
    assert [s for s, _ in selection["evaluations"]] == [2, 4, 6]  # not 8 or 10: training ended at 6
    assert max(v for _, v in selection["evaluations"]) - min(v for _, v in selection["evaluations"]) < 0.5
    assert selection["best_step"] == 2 and selection["best_value"] == selection["evaluations"][0][1]
    assert selection["stopped_early"] and selection["stop_reason"].startswith(
        "stopped at step 6: 2 evaluations without improving by at least 0.5 on select/fid")
    assert selection["rule"] == ("lowest select/fid (selection samples, seed 1), improving by at least 0.5; "
                                 "stop after 2 evaluations without improvement")
    assert steps["pretrain"]["metrics"]["step"] == 6 and "fid" in steps["pretrain"]["metrics"]  # final evaluation at 6


def test_retention_keeps_the_best_and_the_latest_checkpoint_and_the_best_carries_its_evaluations(pipeline):
    steps, _, run_dir, _ = pipeline
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == ["checkpoint_00000002", "checkpoint_00000006"]
    assert steps["pretrain"]["checkpoint"].endswith("checkpoint_00000006")
    assert steps["pretrain"]["selection"]["generator"] == f"{run_dir}/checkpoint_00000002/generator.safetensors"
    history = json.loads((run_dir / "checkpoint_00000006" / "selection.json").read_text())["history"]
    assert history == steps["pretrain"]["selection"]["evaluations"]  # what a resumed run replays


def test_the_run_records_the_selection_curve_apart_from_the_final_evaluation_and_the_rule(pipeline):
    steps, runs, _, _ = pipeline
    from mlflow.tracking import MlflowClient

    run = runs["converged.pretrain"]
    curve = MlflowClient(runs["uri"]).get_metric_history(run.info.run_id, "select/fid")
    assert [(m.step, m.value) for m in curve] == [tuple(e) for e in steps["pretrain"]["selection"]["evaluations"]]
    assert [m.step for m in MlflowClient(runs["uri"]).get_metric_history(run.info.run_id, "fid")] == [6]  # final only
    assert run.data.params["eval.select.patience"] == "2" and run.data.params["eval.select.seed"] == "1"
    assert run.data.metrics["select/best_step"] == 2 and run.data.metrics["select/stopped_early"] == 1
    assert run.data.tags["sar.select.best_checkpoint"].endswith("checkpoint_00000002")
    assert run.data.tags["sar.select.outcome"].endswith("stopped at step 6: 2 evaluations without improving by at "
                                                        f"least 0.5 on select/fid = {run.data.metrics['select/best_fid']:.4g} "
                                                        "(step 2); patience 2")


def test_the_next_step_starts_from_the_best_checkpoint_and_says_which_and_why(pipeline):
    steps, runs, run_dir, _ = pipeline
    _, _, meta = read_header(steps["tf"]["generator"])
    tags = runs["converged.tf"].data.tags
    assert tags["sar.input.init_from"] == f"{run_dir}/checkpoint_00000002/generator.safetensors"
    assert tags["sar.ref.init_from"] == "step:pretrain@best"
    assert tags["sar.ref.init_from.chosen"].startswith("the best checkpoint of step pretrain by its rule: lowest select/fid")
    assert tags["sar.step_offset"] == "2" and int(meta["step"]) == 3  # continues the best checkpoint's step axis


def continuation(tmp, tokenizer_path, mlflow_uri, name: str, base: str) -> Path:
    """A one-step pipeline continuing `base` (a step of another pipeline) in the fixture's workspace."""
    return write_spec(tmp, pipeline_spec(name, {
        "tf": train_step("data: {limit: 256}", "checkpoint: {every_steps: 1}", "log: {every_steps: 1}", "eval: {at_end: false}",
                         tokenizer=tokenizer_path, init_from=base, optim="{lr: 0.001, batch_size: 16, steps: 1}"),
    }, head=(*local_run(tmp, mlflow_uri, "selection-test"), "resources: {num_workers: 1, cpus_per_worker: 2}")), f"{name}.yaml")


def test_another_pipeline_continues_the_best_checkpoint_of_a_finished_one_in_the_same_workspace(pipeline):
    steps, runs, run_dir, (tmp, tokenizer_path) = pipeline
    path = continuation(tmp, tokenizer_path, runs["uri"], "continued", "step:converged/pretrain@best")
    outputs = run_job(load_job(path), spec_text=path.read_text())
    tags = {r.info.run_name: r for r in experiment_runs(runs["uri"], "selection-test")}["continued.tf"].data.tags
    assert tags["sar.input.init_from"] == f"{run_dir}/checkpoint_00000002/generator.safetensors"
    assert tags["sar.ref.init_from"] == "step:converged/pretrain@best"
    assert tags["sar.ref.init_from.chosen"].startswith("the best checkpoint of step converged/pretrain by its rule")
    assert "converged/pretrain" not in outputs["steps"]  # the other pipeline's step is not this one's


@pytest.mark.parametrize("base, problem", [
    ("step:never-ran/pretrain@best", "run never-ran.pretrain has not finished in the workspace"),
    ("step:converged/tf@best", "step converged/tf recorded no best checkpoint (it has no eval.select rule)"),
])
def test_a_reference_to_another_pipelines_step_that_is_not_there_is_refused_before_anything_runs(pipeline, base, problem):
    from sar_platform.kinds import check_inputs
    from sar_platform.services.storage import Workspace
    from sar_platform.spec import SpecError

    _, runs, _, (tmp, tokenizer_path) = pipeline
    job = load_job(continuation(tmp, tokenizer_path, runs["uri"], "refused", base))
    with pytest.raises(SpecError, match="steps.tf.init_from: " + re.escape(base)) as refused:
        check_inputs(job, Workspace.of(job.storage))
    assert problem in str(refused.value)
