"""The cluster path for real, on the loopback cluster of conftest.py (a head and a worker node, S3,
the cluster MLflow recipe with artifacts on S3, Ray token authentication): `sar submit` and the
`sar jobs` commands over the Jobs API, everything a run writes on S3, a worker node lost mid-run,
placements refused before anything starts, local paths refused before submission, and a stopped
sweep resumed without re-running its finished trial."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.conftest import BIN, BUCKET
from tests.support.servers import experiment_runs
from tests.support.processes import wait_until
from tests.support.specs import EVAL, pipeline_spec, sweep_spec, train_body, train_spec, train_step, write_spec

pytestmark = pytest.mark.cluster
TOKENIZER = f"s3://{BUCKET}/inputs/tokenizer.safetensors"
STORAGE = f"s3://{BUCKET}/ws"  # one workspace: token shards and evaluation assets are shared by the tests


@pytest.fixture(scope="module")
def specs(cluster, tokenizer_path):
    """A folder for this module's specs outside the repository (`sar submit` sends a spec's text, not
    its file), and the tokenizer uploaded to S3."""
    cluster.s3().upload_file(str(tokenizer_path), BUCKET, TOKENIZER.split(f"{BUCKET}/", 1)[1])
    folder = cluster.root / "specs"
    folder.mkdir()
    return folder


def on_s3(cluster, name: str) -> tuple[str, str]:
    """`head` lines of a job on the test cluster: its workspace on S3, its runs in experiment `name`."""
    return f'storage: {{path: {STORAGE}, s3_endpoint: "{cluster.s3_endpoint}"}}', f"mlflow: {{experiment: {name}}}"


def submittable(specs, name: str, text: str) -> str:
    """The spec written in this module's folder."""
    return str(write_spec(specs, text, f"{name}.yaml"))


def two_node_train(specs, cluster, name: str, *fields: str, optim: str, max_failures: int = 0) -> str:
    """A tiny two-worker train job on 256 images with storage on S3."""
    head = (*on_s3(cluster, name), "resources: {num_workers: 2, cpus_per_worker: 1}  # one per node: each has one CPU",
            f"max_failures: {max_failures}")
    return submittable(specs, name, train_spec(name, "data: {limit: 256}", *fields, head=head, tokenizer=TOKENIZER, optim=optim))


def submitted_id(out: subprocess.CompletedProcess) -> str:
    match = re.search(r"\[sar\] submitted (\S+)", out.stdout)
    assert match, out.stdout[-3000:] + out.stderr[-3000:]
    return match.group(1)


def job_logs(cluster, job_id: str):
    """What `sar jobs logs` shows of the job (called when a wait fails)."""
    return lambda: cluster.sar("jobs", "logs", job_id, "--address", cluster.address).stdout


def jobs_client(cluster):
    """The Jobs API from this test process (which runs with RAY_AUTH_MODE=disabled): the token as a header."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.address, headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"})


def worker_nodes(cluster, submission_id: str) -> set[str]:
    """The custom resources (node_head / node_worker) of the nodes that ran the job's Train workers."""
    ray_job = jobs_client(cluster).get_job_info(submission_id).job_id
    listed = {}
    for kind in ("actors", "nodes"):
        out = subprocess.run([str(BIN / "ray"), "list", kind, "--detail", "--format", "json", "--limit", "1000",
                              "--address", cluster.address], env=cluster.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        listed[kind] = json.loads(out.stdout)
    names = {n["node_id"]: next(k for k in n["resources_total"] if k.startswith("node_")) for n in listed["nodes"]}
    return {names[a["node_id"]] for a in listed["actors"] if a["class_name"] == "RayTrainWorker" and a["job_id"] == ray_job}


def test_a_two_node_job_on_s3_succeeds_and_the_job_commands_show_it(cluster, specs):
    spec = two_node_train(specs, cluster, "two-nodes", "checkpoint: {every_steps: 3}", "log: {every_steps: 3}",
                          f"eval: {EVAL}", optim="{lr: 0.001, batch_size: 16, steps: 6}")
    out = cluster.sar("submit", spec, "--address", cluster.address)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    job_id = submitted_id(out)
    assert f"[sar] {job_id}: SUCCEEDED" in out.stdout
    (found,) = experiment_runs(cluster.tracking_uri, "two-nodes")
    url = f"{cluster.tracking_uri}/#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"
    assert f"[sar] MLflow run two-nodes: {url}" in out.stdout

    assert worker_nodes(cluster, job_id) == {"node_head", "node_worker"}  # one worker per node

    keys = cluster.keys("ws/")
    assert {"ws/runs/two-nodes/checkpoint_00000006/generator.safetensors", "ws/runs/two-nodes/outputs.json",
            "ws/runs/two-nodes/checkpoint_manager_snapshot.json"} <= set(keys)
    assert any(k.startswith("ws/shards/fashion_mnist-train-n256-") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("ws/eval-assets/reference/") for k in keys)

    assert found.info.status == "FINISHED" and {"fid", "is", "precision", "recall"} <= set(found.data.metrics)
    assert found.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server...
    artifacts = cluster.keys("mlflow/")  # ...which keeps them on S3
    assert any(k.endswith(f"{found.info.run_id}/artifacts/spec.yaml") for k in artifacts)
    assert any(f"{found.info.run_id}/artifacts/figures/" in k and k.endswith(".png") for k in artifacts)

    listing = cluster.sar("jobs", "list", "--address", cluster.address).stdout
    assert re.search(rf"{job_id}\s+SUCCEEDED\s+.*{re.escape(spec)}", listing), listing
    status = cluster.sar("jobs", "status", job_id, "--address", cluster.address).stdout
    assert f"{job_id}: SUCCEEDED" in status and url in status
    logs = cluster.sar("jobs", "logs", job_id, "--address", cluster.address).stdout
    assert "[two-nodes] step 6/6" in logs

    # The S3 secret is nowhere: not in MLflow's params or tags, the job's logs, its runtime
    # environment (what the dashboard shows), or the MLflow server's log.
    secret = cluster.env["AWS_SECRET_ACCESS_KEY"]
    runtime_env = jobs_client(cluster).get_job_info(job_id).runtime_env
    assert not [k for k in runtime_env.get("env_vars", {}) if k.startswith("AWS_")]
    recorded = json.dumps([found.data.params, found.data.tags, runtime_env])
    server_log = (cluster.root / "mlflow" / "server.log").read_text()
    assert secret not in recorded + logs + out.stdout + out.stderr + server_log


def test_a_worker_node_lost_mid_run_resumes_from_the_s3_checkpoint_in_the_same_mlflow_run(cluster, specs):
    spec = two_node_train(specs, cluster, "node-loss", "checkpoint: {every_steps: 10}", "log: {every_steps: 5}",
                          "eval: {at_end: false}", optim="{lr: 0.001, batch_size: 16, steps: 80}", max_failures=2)
    job_id = submitted_id(cluster.sar("submit", spec, "--address", cluster.address, "--no-wait"))
    wait_until(lambda: any("checkpoint_00000020/" in k for k in cluster.keys("ws/runs/node-loss/")), 400,
               "checkpoint 20 (10 is surely registered)", detail=job_logs(cluster, job_id))
    assert cluster.kill_node("worker") > 0
    cluster.start_worker()  # the node comes back (a replacement machine)

    follow = cluster.sar("jobs", "logs", job_id, "--follow", "--address", cluster.address)
    assert follow.returncode == 0, follow.stdout[-5000:]
    start = int(follow.stdout.split("[node-loss] resuming from step ")[1].split()[0])
    assert start >= 10 and start % 10 == 0
    (found,) = experiment_runs(cluster.tracking_uri, "node-loss")  # the same MLflow run continued
    assert found.info.status == "FINISHED"
    steps = {m.step for m in MlflowClient(cluster.tracking_uri).get_metric_history(found.info.run_id, "loss/total")}
    assert {5, 10, start, 80} <= steps
    assert "ws/runs/node-loss/checkpoint_00000080/generator.safetensors" in cluster.keys("ws/runs/node-loss/")


def test_placements_the_cluster_cannot_give_are_refused_before_any_mlflow_run(cluster, specs):
    # Both nodes have one CPU: a 2-CPU worker never fits, and two 1-CPU workers streaming through
    # Ray Data would leave its read tasks no CPU (the job would hang).
    spec = submittable(specs, "placement", pipeline_spec("placement", {
        "big": train_step("resources: {num_workers: 1, cpus_per_worker: 2}", tokenizer=TOKENIZER, optim="{steps: 2}"),
        "stream": train_step("resources: {num_workers: 2, cpus_per_worker: 1}", "data: {loader: ray_data}",
                             tokenizer=TOKENIZER, optim="{steps: 2}"),
    }, head=on_s3(cluster, "placement")))
    out = cluster.sar("submit", spec, "--address", cluster.address, timeout=300)
    assert out.returncode == 1 and "FAILED" in out.stdout
    assert "steps.big.resources.cpus_per_worker: 2 per worker, but the largest node has 1 CPU(s)" in out.stdout
    assert "steps.stream.data.loader: ray_data needs 1 CPU free beside the training workers" in out.stdout
    assert experiment_runs(cluster.tracking_uri, "placement") == []


def test_a_spec_reading_a_local_file_is_refused_before_submission(cluster, specs, tokenizer_path):
    spec = two_node_train(specs, cluster, "local-tokenizer", optim="{steps: 2}")
    Path(spec).write_text(Path(spec).read_text().replace(TOKENIZER, str(tokenizer_path)))
    before = cluster.sar("jobs", "list", "--address", cluster.address).stdout
    out = cluster.sar("submit", spec, "--address", cluster.address)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"tokenizer: {tokenizer_path} is a path on this machine" in out.stderr and "--shared-path" in out.stderr
    assert cluster.sar("jobs", "list", "--address", cluster.address).stdout == before  # nothing was submitted


def test_jobs_stop_ends_the_runs_killed_and_a_resumed_sweep_skips_its_finished_trial(cluster, specs):
    trial = train_body("data: {limit: 256}", "checkpoint: {every_steps: 10}", "log: {every_steps: 5}", "eval: {at_end: false}",
                       tokenizer=TOKENIZER, optim="{lr: 0.001, batch_size: 16, steps: 20}")
    spec = submittable(specs, "stopped-sweep", sweep_spec(
        "stopped-sweep", trial, ("optim.lr: {grid: [0.001, 0.002]}",), "metric: loss/total", "max_concurrent_trials: 1",
        head=(*on_s3(cluster, "stopped-sweep"), "resources: {num_workers: 1, cpus_per_worker: 1}")))
    job_id = submitted_id(cluster.sar("submit", spec, "--address", cluster.address, "--no-wait"))
    logs = job_logs(cluster, job_id)
    done = wait_until(lambda: [k for k in cluster.keys("ws/runs/stopped-sweep.") if k.endswith("/outputs.json")], 400,
                      "a finished trial", detail=logs)
    finished_trial = done[0].split("/")[2]  # stopped-sweep.<trial id>
    # Stop once the next trial has checkpointed: Tune has then recorded the first one as finished
    # (it saves its experiment state every 10 s).
    wait_until(lambda: [k for k in cluster.keys("ws/runs/stopped-sweep.") if "/checkpoint_" in k and finished_trial not in k],
               400, "the next trial's checkpoint", detail=logs)

    stop = cluster.sar("jobs", "stop", job_id, "--address", cluster.address)
    assert stop.returncode == 0 and f"{job_id}: STOPPED" in stop.stdout, stop.stdout + stop.stderr
    by_name = {r.info.run_name: r for r in experiment_runs(cluster.tracking_uri, "stopped-sweep")}
    assert by_name["stopped-sweep"].info.status == "KILLED"
    assert by_name[finished_trial].info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in by_name.values())

    resumed = cluster.sar("submit", spec, "--address", cluster.address, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert f"{finished_trial}: training" not in resumed.stdout  # the finished trial did not run again
    by_name = {r.info.run_name: r for r in experiment_runs(cluster.tracking_uri, "stopped-sweep")}
    assert len(by_name) == 3 and all(r.info.status == "FINISHED" for r in by_name.values())
    history = MlflowClient(cluster.tracking_uri).get_metric_history(by_name[finished_trial].info.run_id, "loss/total")
    assert sorted(m.step for m in history) == [5, 10, 15, 20]  # logged once, never repeated
