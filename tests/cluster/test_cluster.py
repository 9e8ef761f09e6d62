"""The cluster path for real, on the loopback cluster of conftest.py (a head and a worker node, S3,
the cluster MLflow recipe with artifacts on S3, Ray token authentication): `sar submit` and the
`sar jobs` commands over the Jobs API, everything a run writes on S3, a worker node lost mid-run,
placements refused before anything starts, local paths refused before submission, and a stopped
sweep resumed without re-running its finished trial."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.conftest import BIN, BUCKET
from tests.conftest import REPO
from tests.sar_platform.conftest import EVAL, GENERATOR_MODEL, tokenizer_path  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
TOKENIZER = f"s3://{BUCKET}/inputs/tokenizer.safetensors"
STORAGE = f"s3://{BUCKET}/ws"  # one workspace: token shards and evaluation assets are shared by the tests


@pytest.fixture(scope="module")
def specs(cluster, tokenizer_path):  # noqa: F811
    """A folder for this module's specs inside the repository (what `sar submit` ships), and the
    tokenizer uploaded to S3."""
    cluster.s3().upload_file(str(tokenizer_path), BUCKET, TOKENIZER.split(f"{BUCKET}/", 1)[1])
    folder = REPO / "jobs" / f".test-{cluster.root.name}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def train_spec(specs, cluster, name: str, body: str, max_failures: int = 0) -> str:
    """A tiny two-worker train job with storage on S3, as a path relative to the repository."""
    text = f"""
kind: train
name: {name}
storage: {{path: {STORAGE}, s3_endpoint: "{cluster.s3_endpoint}"}}
mlflow: {{experiment: {name}}}
resources: {{num_workers: 2, cpus_per_worker: 1}}  # one per node: each has one CPU
max_failures: {max_failures}
tokenizer: {TOKENIZER}
model: {GENERATOR_MODEL}
schedule: {{scales: [1, 2, 3, 5, 7]}}
data: {{limit: 256}}
""" + textwrap.dedent(body)
    path = specs / f"{name}.yaml"
    path.write_text(text)
    return str(path.relative_to(REPO))


def submitted_id(out: subprocess.CompletedProcess) -> str:
    match = re.search(r"\[sar\] submitted (\S+)", out.stdout)
    assert match, out.stdout[-3000:] + out.stderr[-3000:]
    return match.group(1)


def runs(cluster, experiment: str):
    client = MlflowClient(cluster.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


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
    spec = train_spec(specs, cluster, "two-nodes", f"""
        optim: {{lr: 0.001, batch_size: 16, steps: 6}}
        checkpoint: {{every_steps: 3}}
        log: {{every_steps: 3}}
        eval: {EVAL}
    """)
    out = cluster.sar("submit", spec, "--address", cluster.address)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    job_id = submitted_id(out)
    assert f"[sar] {job_id}: SUCCEEDED" in out.stdout
    (found,) = runs(cluster, "two-nodes")
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
    spec = train_spec(specs, cluster, "node-loss", """
        optim: {lr: 0.001, batch_size: 16, steps: 80}
        checkpoint: {every_steps: 10}
        log: {every_steps: 5}
        eval: {at_end: false}
    """, max_failures=2)
    job_id = submitted_id(cluster.sar("submit", spec, "--address", cluster.address, "--no-wait"))
    deadline = time.monotonic() + 400
    while not any("checkpoint_00000020/" in k for k in cluster.keys("ws/runs/node-loss/")):  # 10 is surely registered
        assert time.monotonic() < deadline, cluster.sar("jobs", "logs", job_id, "--address", cluster.address).stdout
        time.sleep(0.5)
    assert cluster.kill_node("worker") > 0
    cluster.start_worker()  # the node comes back (a replacement machine)

    follow = cluster.sar("jobs", "logs", job_id, "--follow", "--address", cluster.address)
    assert follow.returncode == 0, follow.stdout[-5000:]
    start = int(follow.stdout.split("[node-loss] resuming from step ")[1].split()[0])
    assert start >= 10 and start % 10 == 0
    (found,) = runs(cluster, "node-loss")  # the same MLflow run continued
    assert found.info.status == "FINISHED"
    steps = {m.step for m in MlflowClient(cluster.tracking_uri).get_metric_history(found.info.run_id, "loss/total")}
    assert {5, 10, start, 80} <= steps
    assert "ws/runs/node-loss/checkpoint_00000080/generator.safetensors" in cluster.keys("ws/runs/node-loss/")


def test_placements_the_cluster_cannot_give_are_refused_before_any_mlflow_run(cluster, specs):
    # Both nodes have one CPU: a 2-CPU worker never fits, and two 1-CPU workers streaming through
    # Ray Data would leave its read tasks no CPU (the job would hang).
    path = specs / "placement.yaml"
    path.write_text(f"""
kind: pipeline
name: placement
storage: {{path: {STORAGE}, s3_endpoint: "{cluster.s3_endpoint}"}}
mlflow: {{experiment: placement}}
steps:
  big:
    kind: train
    resources: {{num_workers: 1, cpus_per_worker: 2}}
    tokenizer: {TOKENIZER}
    model: {GENERATOR_MODEL}
    schedule: {{scales: [1, 2, 3, 5, 7]}}
    optim: {{steps: 2}}
  stream:
    kind: train
    resources: {{num_workers: 2, cpus_per_worker: 1}}
    tokenizer: {TOKENIZER}
    model: {GENERATOR_MODEL}
    schedule: {{scales: [1, 2, 3, 5, 7]}}
    data: {{loader: ray_data}}
    optim: {{steps: 2}}
""")
    out = cluster.sar("submit", str(path.relative_to(REPO)), "--address", cluster.address, timeout=300)
    assert out.returncode == 1 and "FAILED" in out.stdout
    assert "steps.big.resources.cpus_per_worker: 2 per worker, but the largest node has 1 CPU(s)" in out.stdout
    assert "steps.stream.data.loader: ray_data needs 1 CPU free beside the training workers" in out.stdout
    assert runs(cluster, "placement") == []


def test_a_spec_reading_a_local_file_is_refused_before_submission(cluster, specs, tokenizer_path):  # noqa: F811
    spec = train_spec(specs, cluster, "local-tokenizer", "optim: {steps: 2}\n")
    (REPO / spec).write_text((REPO / spec).read_text().replace(TOKENIZER, str(tokenizer_path)))
    before = cluster.sar("jobs", "list", "--address", cluster.address).stdout
    out = cluster.sar("submit", spec, "--address", cluster.address)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"tokenizer: {tokenizer_path} is a path on this machine" in out.stderr and "--shared-path" in out.stderr
    assert cluster.sar("jobs", "list", "--address", cluster.address).stdout == before  # nothing was submitted


def test_jobs_stop_ends_the_runs_killed_and_a_resumed_sweep_skips_its_finished_trial(cluster, specs):
    path = specs / "stopped-sweep.yaml"
    path.write_text(f"""
kind: sweep
name: stopped-sweep
storage: {{path: {STORAGE}, s3_endpoint: "{cluster.s3_endpoint}"}}
mlflow: {{experiment: stopped-sweep}}
resources: {{num_workers: 1, cpus_per_worker: 1}}
train:
  tokenizer: {TOKENIZER}
  model: {GENERATOR_MODEL}
  schedule: {{scales: [1, 2, 3, 5, 7]}}
  data: {{limit: 256}}
  optim: {{lr: 0.001, batch_size: 16, steps: 20}}
  checkpoint: {{every_steps: 10}}
  log: {{every_steps: 5}}
  eval: {{at_end: false}}
space:
  optim.lr: {{grid: [0.001, 0.002]}}
metric: loss/total
max_concurrent_trials: 1
""")
    spec = str(path.relative_to(REPO))
    job_id = submitted_id(cluster.sar("submit", spec, "--address", cluster.address, "--no-wait"))
    deadline = time.monotonic() + 400
    while not (done := [k for k in cluster.keys("ws/runs/stopped-sweep.") if k.endswith("/outputs.json")]):
        assert time.monotonic() < deadline, cluster.sar("jobs", "logs", job_id, "--address", cluster.address).stdout
        time.sleep(0.5)
    finished_trial = done[0].split("/")[2]  # stopped-sweep.<trial id>
    # Stop once the next trial has checkpointed: Tune has then recorded the first one as finished
    # (it saves its experiment state every 10 s).
    while not [k for k in cluster.keys("ws/runs/stopped-sweep.") if "/checkpoint_" in k and finished_trial not in k]:
        assert time.monotonic() < deadline, cluster.sar("jobs", "logs", job_id, "--address", cluster.address).stdout
        time.sleep(0.5)

    stop = cluster.sar("jobs", "stop", job_id, "--address", cluster.address)
    assert stop.returncode == 0 and f"{job_id}: STOPPED" in stop.stdout, stop.stdout + stop.stderr
    by_name = {r.info.run_name: r for r in runs(cluster, "stopped-sweep")}
    assert by_name["stopped-sweep"].info.status == "KILLED"
    assert by_name[finished_trial].info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in by_name.values())

    resumed = cluster.sar("submit", spec, "--address", cluster.address, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert f"{finished_trial}: training" not in resumed.stdout  # the finished trial did not run again
    by_name = {r.info.run_name: r for r in runs(cluster, "stopped-sweep")}
    assert len(by_name) == 3 and all(r.info.status == "FINISHED" for r in by_name.values())
    history = MlflowClient(cluster.tracking_uri).get_metric_history(by_name[finished_trial].info.run_id, "loss/total")
    assert sorted(m.step for m in history) == [5, 10, 15, 20]  # logged once, never repeated
