"""A pipeline end to end on real Ray and MLflow: tokenizer -> TF pretraining (2 DDP workers, random
schedules) -> {TF-continue, SAR} from the same checkpoint -> comparison. One MLflow run per job,
nested under the pipeline's run, with the spec, metrics, figures and checkpoint location."""
import math

import pytest

from sar_core.checkpoint import load_model
from sar_platform.runner import run_job
from sar_platform.spec import load_job
from tests.support.servers import experiment_runs
from tests.support.specs import EVAL, SCALES, TOKENIZER_MODEL, lines, local_run, pipeline_spec, train_step, write_spec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_local, mlflow_uri):
    tmp = tmp_path_factory.mktemp("pipeline")

    def post_training(*fields: str) -> str:  # 4 steps from the pretrained checkpoint, with diagnostics
        return train_step("data: {limit: 512}", *fields, "checkpoint: {every_steps: 4}",
                          "log: {every_steps: 2, diagnostics_every: 2}", f"eval: {EVAL}", tokenizer="step:tokenizer",
                          init_from="step:pretrain", optim="{lr: 0.001, batch_size: 16, steps: 4}")

    path = write_spec(tmp, pipeline_spec("mini", {
        "tokenizer": lines("kind: tokenizer", f"model: {TOKENIZER_MODEL}", "data: {limit: 512}",
                           "optim: {lr: 0.002, weight_decay: 0.0, batch_size: 16, steps: 6}", "checkpoint: {every_steps: 6}",
                           "log: {every_steps: 3}", "eval_images: 64"),
        "pretrain": train_step("data: {limit: 512}", "resources: {num_workers: 2}", "checkpoint: {every_steps: 3}",
                               "log: {every_steps: 2}", f"eval: {EVAL}", schedule=f"{{scales: {SCALES}, random: true}}",
                               tokenizer="step:tokenizer", optim="{lr: 0.001, batch_size: 16, steps: 6}"),
        "tf": post_training(),
        "sar": post_training("objective: {preset: paper, sampling: stochastic}"),
        "score": lines("kind: eval", "generator: step:sar", "tokenizer: step:tokenizer", f"schedule: {SCALES}",
                       f"eval: {EVAL}"),
    }, "compare: [pretrain, tf, sar]", "baseline: tf", head=local_run(tmp, mlflow_uri, "pipeline-test")))
    outputs = run_job(load_job(path), spec_text=path.read_text())
    runs = {r.info.run_name: r for r in experiment_runs(mlflow_uri, "pipeline-test")}
    return outputs, runs, mlflow_uri


def test_every_step_ran_and_the_comparison_has_the_four_metrics_with_their_errors(pipeline):
    outputs, _, _ = pipeline
    rows = {r["arm"]: r for r in outputs["comparison"]}
    assert list(rows) == ["pretrain", "tf", "sar"]
    for row in rows.values():
        assert {"fid", "is", "precision", "recall", "fid_se", "is_se", "precision_se", "recall_se"} <= set(row)
        assert row["fid"] > 0 and row["is"] >= 1 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert 0 < row["fid_se"] < row["fid"] and row["n"] == 1
    assert rows["sar"]["objective.kind"] == "sar" and rows["tf"]["objective.kind"] == "tf"  # what differs
    (sar_vs_tf, pretrain_vs_tf) = sorted(outputs["differences"], key=lambda d: d["difference"], reverse=True)
    assert sar_vs_tf["difference"] == "sar - tf" and sar_vs_tf["basis"] == "one run each: sample-draw noise only"
    assert sar_vs_tf["fid_diff"] == pytest.approx(rows["sar"]["fid"] - rows["tf"]["fid"])
    assert sar_vs_tf["fid_ci95"] == pytest.approx(1.96 * (rows["sar"]["fid_se"] ** 2 + rows["tf"]["fid_se"] ** 2) ** 0.5)
    assert any(v.startswith("sar vs tf: FID") for v in outputs["verdicts"])


def test_the_comparison_has_the_gap_per_scale_of_every_arm_that_measured_it(pipeline):
    outputs, _, _ = pipeline
    gaps = {(g["arm"], g["context"], g["scale"]): g for g in outputs["gaps"]}
    assert {arm for arm, _, _ in gaps} == {"tf", "sar"}  # pretrain logged no diagnostics
    assert set(gaps) == {(arm, c, s) for arm in ("tf", "sar") for c in ("sf", "ar") for s in (2, 3, 5, 7)}
    sar_metrics = outputs["steps"]["sar"]["metrics"]
    assert gaps["sar", "ar", 7]["gap"] == pytest.approx(sar_metrics["diag/ar/loss/s07"] - sar_metrics["diag/tf/loss/s07"])
    assert gaps["sar", "ar", 7]["n"] == 1 and math.isnan(gaps["sar", "ar", 7]["ci95"])  # one seed: no interval


def test_post_training_starts_from_the_pretrained_checkpoint(pipeline):
    outputs, _, _ = pipeline
    steps = outputs["steps"]
    pretrained = load_model(steps["pretrain"]["generator"], kind="generator")
    tf, sar = (load_model(steps[s]["generator"], kind="generator") for s in ("tf", "sar"))
    assert tf.config == sar.config == pretrained.config
    # both continued from the same weights and moved away from them, differently
    w = "blocks.0.attn.qkv.weight"
    assert not tf.state_dict()[w].equal(pretrained.state_dict()[w])
    assert not tf.state_dict()[w].equal(sar.state_dict()[w])
    assert steps["pretrain"]["generator"].endswith("checkpoint_00000006/generator.safetensors")


def test_one_mlflow_run_per_job_nested_under_the_pipeline(pipeline):
    _, runs, _ = pipeline
    assert set(runs) == {"mini", "mini.tokenizer", "mini.pretrain", "mini.tf", "mini.sar", "mini.score"}
    parent = runs["mini"].info.run_id
    for name in ("mini.tokenizer", "mini.pretrain", "mini.tf", "mini.sar", "mini.score"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent
        assert runs[name].info.status == "FINISHED"


def test_the_parent_run_carries_its_own_fields_and_the_comparison_not_copies_of_its_children(pipeline):
    _, runs, _ = pipeline
    params, metrics = runs["mini"].data.params, runs["mini"].data.metrics
    assert params["compare"] == "['pretrain', 'tf', 'sar']" and params["baseline"] == "tf"
    assert not any(k.startswith("steps.") for k in params) and len(params) < 40
    assert {"compare/sar/fid", "compare/sar/fid_se", "compare/tf/fid", "diff/sar-tf/fid_diff", "diff/sar-tf/fid_ci95",
            "diff/sar-tf/fid_beyond_noise", "diff/sar-tf/fid_p", "diff/sar-tf/fid_p_holm"} <= set(metrics)
    assert metrics["diff/sar-tf/fid_p_holm"] >= metrics["diff/sar-tf/fid_p"]  # Holm over 4 metrics x 2 pairs


def test_a_child_run_records_its_own_read_fields_and_what_it_is(pipeline, tmp_path):
    _, runs, uri = pipeline
    from mlflow.tracking import MlflowClient

    from sar_platform.spec import load_job

    tf, sar = runs["mini.tf"], runs["mini.sar"]
    assert "objective.gamma" not in tf.data.params and "objective.rollout.cfg" not in tf.data.params  # tf reads neither
    assert sar.data.params["objective.preset"] == "paper" and sar.data.params["objective.sampling"] == "stochastic"
    assert "objective.rollout.cfg" not in sar.data.params and sar.data.params["objective.rollout.top_p"] == "0.95"
    assert not any(k.startswith("steps.") for k in sar.data.params)
    assert sar.data.tags["mlflow.note.content"].startswith("sar (paper preset), γ=1, stochastic rollout")
    assert "from mini.pretrain @ step 6" in sar.data.tags["sar.summary"]
    # its spec.yaml is its own resolved spec, which validates as a spec on its own
    spec = MlflowClient(uri).download_artifacts(sar.info.run_id, "spec.yaml", str(tmp_path))
    job = load_job(spec)
    assert job.kind == "train" and job.name == "sar" and job.objective.preset == "paper" and job.init_from.endswith(".safetensors")
    assert "submitted.yaml" not in {a.path for a in MlflowClient(uri).list_artifacts(sar.info.run_id)}


def test_every_metric_records_how_it_was_made(pipeline):
    _, runs, _ = pipeline
    tags = runs["mini.sar"].data.tags
    assert tags["sar.eval.feature_network"] == "fmnist_classifier" and tags["sar.eval.feature_fingerprint"].startswith("fmnist-")
    assert tags["sar.eval.reference"] == "fashion_mnist/train[n=100,seed=0]" and tags["sar.eval.num_samples"] == "100"
    assert tags["sar.eval.seed"] == "0" and tags["sar.eval.bootstrap_resamples"] == "20"
    assert tags["sar.eval.sampler"] == "schedule 1-2-3-5-7, cfg 1 (linear ramp), top-k 0, top-p 0.95, temperature 1"
    assert tags["sar.eval.checkpoint_step"] == "10"  # 4 post-training steps after pretraining's 6


def test_post_training_continues_the_step_axis_of_its_checkpoint(pipeline):
    _, runs, uri = pipeline
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    pretrain = [m.step for m in client.get_metric_history(runs["mini.pretrain"].info.run_id, "loss/total")]
    sar = [m.step for m in client.get_metric_history(runs["mini.sar"].info.run_id, "loss/total")]
    assert pretrain[-1] == 6 and sar == [8, 10] and runs["mini.sar"].data.tags["sar.step_offset"] == "6"


def test_diagnostics_of_runs_with_different_objectives_share_the_probe(pipeline):
    _, runs, _ = pipeline
    tf, sar = runs["mini.tf"].data.tags, runs["mini.sar"].data.tags
    assert tf["sar.probe"] == sar["sar.probe"]
    assert tf["sar.probe"].startswith("fashion_mnist/test[n=64,seed=0], eval sampler, ")
    assert tf["sar.probe"].endswith(" x4 rollout, calibrated on 0.5")
    assert tf["sar.probe.digest"] == sar["sar.probe.digest"]
    gauges = {"diag/gap/sf", "diag/sf/loss/s07", "diag/cal/gap/sf", "diag/cal/temperature", "diag/acc_gap/ar"}
    assert gauges <= set(runs["mini.tf"].data.metrics) & set(runs["mini.sar"].data.metrics)


def test_a_train_run_carries_params_curves_metrics_tags_and_artifacts(pipeline):
    _, runs, uri = pipeline
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    sar = runs["mini.sar"]
    params, metrics, tags = sar.data.params, sar.data.metrics, sar.data.tags
    assert params["objective.kind"] == "sar" and params["objective.csfl_target"] == "teacher_soft"
    assert params["optim.lr"] == "0.001" and params["schedule.scales"] == "[1, 2, 3, 5, 7]"
    assert {"loss/total", "loss/tf", "loss/tf_nll", "loss/csf", "lr", "steps_per_s", "fid", "is", "precision", "recall"} <= set(metrics)
    assert {"diag/gap/sf", "diag/tf/loss/s07", "diag/sf/loss/s07", "diag/kl/s07"} <= set(metrics)
    assert [m.step for m in client.get_metric_history(sar.info.run_id, "loss/total")] == [8, 10]
    assert tags["sar.spec_name"] == "sar" and tags["sar.git_commit"] and tags["sar.checkpoint"].endswith("checkpoint_00000004")
    artifacts = {a.path for a in client.list_artifacts(sar.info.run_id)} | {
        a.path for a in client.list_artifacts(sar.info.run_id, "figures/step_0000010")} | {
        a.path for a in client.list_artifacts(sar.info.run_id, "eval/step_0000010")}
    assert "spec.yaml" in artifacts and "eval/step_0000010/provenance.json" in artifacts
    assert {f"figures/step_0000010/{f}" for f in ("samples_grid.png", "trajectory.png", "student_forcing.png")} <= artifacts
    parent_artifacts = {a.path for a in client.list_artifacts(runs["mini"].info.run_id)} | {
        a.path for a in client.list_artifacts(runs["mini"].info.run_id, "figures")}
    assert {"comparison.md", "comparison.csv", "gaps.csv", "figures/gap_per_scale.png"} <= parent_artifacts


def test_only_rank_0_logs_and_metrics_are_averaged_over_workers(pipeline):
    _, runs, uri = pipeline
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history(runs["mini.pretrain"].info.run_id, "loss/total")
    # One value per report (log every 2 steps, checkpoint every 3), not one per worker.
    assert [m.step for m in history] == [2, 3, 4, 6]


def test_an_eval_job_scores_a_checkpoint_at_that_checkpoints_step(pipeline):
    outputs, runs, uri = pipeline
    from mlflow.tracking import MlflowClient

    score = runs["mini.score"]
    assert {"fid", "fid_se", "is", "precision", "recall"} <= set(score.data.metrics)
    assert [m.step for m in MlflowClient(uri).get_metric_history(score.info.run_id, "fid")] == [10]
    assert score.data.tags["sar.eval.checkpoint_step"] == "10" and "from mini.sar @ step 10" in score.data.tags["sar.summary"]
    # the same checkpoint, sampler and seed as the SAR run's final evaluation: the same samples, the same FID
    assert score.data.metrics["fid"] == pytest.approx(runs["mini.sar"].data.metrics["fid"], rel=1e-6)
