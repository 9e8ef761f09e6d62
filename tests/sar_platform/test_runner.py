"""Running jobs for real: sweeps with ASHA under one MLflow parent, and bad input refused before Ray
or MLflow do anything."""
import subprocess
import time

import pytest

from sar_platform.runner import run_job
from sar_platform.spec import load_job
from tests.support.processes import SAR
from tests.support.servers import experiment_runs
from tests.support.specs import EVAL, lines, local_run, sweep_spec, train_body, write_spec

pytestmark = pytest.mark.ray


def tiny_train(tokenizer_path, steps: int, *extra: str) -> str:
    """The fields of a tiny train job on 256 images (unindented YAML lines)."""
    return train_body("data: {limit: 256}", *extra, tokenizer=tokenizer_path, optim=f"{{lr: 0.001, batch_size: 16, steps: {steps}}}")


def test_a_sweep_gives_one_child_run_per_trial_and_asha_stops_the_bad_one(tmp_path, ray_local, mlflow_uri, tokenizer_path):
    # gamma=5 inflates loss/total at the first rung, so ASHA stops that trial; the third trial (a
    # repeat of the first) can only start if the stopped trial released its worker. Each worker takes
    # both CPUs of the cluster, as on a 2-core laptop: a trial function holding any CPU would hang it.
    body = tiny_train(tokenizer_path, 6, "objective: {kind: sar}", "checkpoint: {every_steps: 6}",
                      "log: {every_steps: 2, diagnostics_every: 6}", f"eval: {EVAL}")
    path = write_spec(tmp_path, sweep_spec(
        "asha", body, ("objective.gamma: {grid: [0.0, 5.0, 0.0]}",), "metric: fid",
        "scheduler: {metric: loss/total, mode: min, grace_period: 1, reduction_factor: 2}", "max_concurrent_trials: 1",
        head=(*local_run(tmp_path, mlflow_uri, "sweep-test"), "resources: {num_workers: 1, cpus_per_worker: 2}")))
    outputs = run_job(load_job(path), spec_text=path.read_text())
    trials = outputs["trials"]
    assert [t["objective.gamma"] for t in trials] == [0.0, 5.0, 0.0]
    assert trials[1]["status"].startswith("stopped") and "fid" not in trials[1]
    finished = [t for t in trials if t["status"] == "finished"]
    assert len(finished) == 2 and all({"fid", "is", "precision", "recall"} <= set(t) for t in finished)
    assert finished[0]["fid"] == pytest.approx(finished[1]["fid"])  # identical trials, identical results
    assert all({"diag/gap/ar", "diag/ar/loss/s07", "diag/tf/loss/s07"} <= set(t) for t in finished)  # for comparisons

    runs = experiment_runs(mlflow_uri, "sweep-test")
    parent = next(r for r in runs if r.info.run_name == "asha")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and len(runs) == 4
    by_gamma = {float(c.data.params["objective.gamma"]): c for c in children if c.info.status == "KILLED"}
    assert list(by_gamma) == [5.0]
    assert sum("fid" in c.data.metrics for c in children) == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"trials.md", "trials.csv", "figures/fid_vs_params.png"} <= artifacts
    assert "best_fid" in parent.data.metrics


def test_bad_specs_and_inputs_fail_fast_naming_the_field_and_create_no_run(tmp_path, mlflow_uri, tokenizer_path):
    base = lines("kind: train", "name: bad", *local_run(tmp_path, mlflow_uri, "bad-test"))
    cases = {
        "typo.yaml": (base + tiny_train(tokenizer_path, 4, "objective: {kind: sar, samplng: cfg}"),
                      "objective.samplng: unknown field"),
        "missing.yaml": (base + tiny_train(tmp_path / "nope.safetensors", 4), "tokenizer: checkpoint"),
        "schedule.yaml": (base + tiny_train(tokenizer_path, 4).replace("[1, 2, 3, 5, 7]", "[1, 2, 4]"),
                          "schedule.scales: ends at 4 but the tokenizer's latent is 7x7"),
    }
    for name, (text, expected) in cases.items():
        started = time.monotonic()
        out = subprocess.run([*SAR, "run", str(write_spec(tmp_path, text, name))], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 2, (name, out.stderr)
        assert expected in out.stderr, (name, out.stderr)
        assert time.monotonic() - started < 60  # before Ray or any training starts
    assert experiment_runs(mlflow_uri, "bad-test") == []
    assert not (tmp_path / "ws" / "runs").exists()
    # earlier work is never overwritten: an existing run folder needs --resume (killed runs resume
    # exactly: tests/sar_platform/test_robust_runs.py)
    (tmp_path / "ws" / "runs" / "bad").mkdir(parents=True)
    again = subprocess.run([*SAR, "run", str(write_spec(tmp_path, base + tiny_train(tokenizer_path, 4), "again.yaml"))],
                           cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 2 and "sar run --resume" in again.stderr
