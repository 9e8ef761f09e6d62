"""Runs that survive crashes, corrupt checkpoints, each other and a vanishing MLflow server.

Every interrupted run here is compared with one uninterrupted twin (`twin`, same spec, same thread
count): killed and resumed — by Ctrl-C, SIGTERM, SIGKILL of the driver, SIGKILL of a worker, a
damaged latest checkpoint, a failing final evaluation — it ends with the same weights and final
metrics, and no training step reaches MLflow twice. Faults are injected by PID into processes the
test started, at exact steps: the runs wait at hold points (tests/support/holds.py) while a
fault is sent, so no run can finish before its fault arrives however fast the machine is."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from sar_core.checkpoint import read_tensors
from sar_platform.driver.session import JobFailed
from sar_platform.runner import run_job
from sar_platform.services.mlflow_server import ensure_server, stop_server
from sar_platform.spec import load_located_job
from tests.conftest import REPO
from tests.support.processes import (SAR, command, descendants, environment, free_port, interruptible, is_loopback,
                                     sockets_of, wait_until)
from tests.support.servers import experiment_runs, mlflow_server
from tests.conftest import TINY_GENERATOR
from tests.support.specs import EVAL, flow_yaml, local_run, sweep_spec, train_body, train_spec, write_spec, written_fields

pytestmark = pytest.mark.ray
STEPS = 40
CHECKPOINT_EVERY = 4
DROPPING_MODEL = flow_yaml({**written_fields(TINY_GENERATOR), "drop_path": 0.3})


def resumable_spec(tmp_path: Path, name: str, mlflow_uri: str, tokenizer_path, *extra: str, steps: int = STEPS,
                   evaluate: bool = True) -> Path:
    """A tiny train job whose randomness matters: drop-path and class dropout draw from torch's
    global generator every step, so a resume that reseeded it instead of restoring it would drift."""
    text = train_spec(name, "data: {limit: 256}", f"checkpoint: {{every_steps: {CHECKPOINT_EVERY}, keep: 2}}",
                      "log: {every_steps: 2}", f"eval: {EVAL if evaluate else '{at_end: false}'}", *extra,
                      head=local_run(tmp_path, mlflow_uri, name), tokenizer=tokenizer_path,
                      optim=f"{{lr: 0.002, batch_size: 16, steps: {steps}}}", model=DROPPING_MODEL)
    return write_spec(tmp_path, text, f"{name}.yaml")


def run_in_process(path: Path, resume: bool = False) -> dict:
    job, locator = load_located_job(path)
    return run_job(job, spec_text=path.read_text(), resume=resume, locator=locator)


def final_state(outputs: dict) -> tuple[dict, dict]:
    """(final weights, final metrics without timings) of a finished run."""
    weights = read_tensors(outputs["generator"])
    metrics = {k: v for k, v in outputs["metrics"].items() if k not in ("steps_per_s", "eval/seconds")}
    return weights, metrics


def assert_same_run(outputs: dict, twin: tuple[dict, dict]) -> None:
    weights, metrics = final_state(outputs)
    twin_weights, twin_metrics = twin
    assert weights.keys() == twin_weights.keys()
    assert all(torch.equal(weights[k], twin_weights[k]) for k in weights), "the resumed run drifted from its twin"
    assert metrics == twin_metrics


def the_run(uri: str, experiment: str):
    (run,) = experiment_runs(uri, experiment)  # one MLflow run, continued across every restart
    return run


def logged_steps(uri: str, run, key: str = "loss/total") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, key))


def snapshot(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None


def latest_step(run_dir: Path) -> int:
    """The step of the latest checkpoint Ray Train has registered (0: none)."""
    name = latest_checkpoint(run_dir)
    return int(name.rsplit("_", 1)[1]) if name else 0


def latest_checkpoint(run_dir: Path) -> str | None:
    state = snapshot(run_dir)
    return state["latest_checkpoint_result"]["checkpoint_dir_name"] if state and state["latest_checkpoint_result"] else None


@pytest.fixture(scope="module")
def twin(tmp_path_factory, ray_local, mlflow_uri, tokenizer_path):
    """The uninterrupted run every interrupted one must match."""
    tmp_path = tmp_path_factory.mktemp("twin")
    return final_state(run_in_process(resumable_spec(tmp_path, "twin", mlflow_uri, tokenizer_path)))


# -- processes, sockets, environments ---------------------------------------------------------

def ray_processes(title: str) -> list[int]:
    """This test process's Ray processes (its own cluster's) whose title starts with `title`."""
    return [pid for pid in descendants(os.getpid()) if command(pid).startswith(f"ray::{title}")]


def readme_socket_list() -> str:
    return (REPO / "docs" / "failures-and-resuming.md").read_text().split("## Listening sockets", 1)[1].split("\n## ", 1)[0]


# -- the driver: Ctrl-C, SIGTERM, SIGKILL, damaged checkpoints -------------------------------

class Job:
    """A `sar run` subprocess whose output is collected as it comes (`output()`)."""

    def __init__(self, path: Path, *flags: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*SAR, "run", str(path), "--num-cpus", "2", *flags], cwd=path.parent, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                     preexec_fn=interruptible)
        self.pid, self.lines = self.proc.pid, []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True)
        self.reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def poll(self):
        return self.proc.poll()

    def wait_until(self, predicate, timeout: float, what: str):
        """`predicate()`, once true while the run goes on (fails with the run's output if it ends first)."""
        return wait_until(predicate, timeout, what, alive=lambda: self.poll() is None, detail=lambda: self.output()[-3000:])

    def stop(self, sig: int) -> tuple[int, str]:
        """Send `sig` to the driver alone; (exit status, output)."""
        os.kill(self.pid, sig)
        status = self.proc.wait(timeout=300)
        self.reader.join(timeout=120)  # Ray's processes hold the pipe until they are gone
        return status, self.output()


def damage(run_dir: Path, how: str) -> str:
    """Damage the latest checkpoint Ray Train would resume from; returns its name."""
    name = latest_checkpoint(run_dir)
    model = run_dir / name / "generator.safetensors"
    data = bytearray(model.read_bytes())
    if how == "truncate":
        model.write_bytes(bytes(data[: len(data) // 3]))
    else:  # one flipped bit among the tensors: the file still parses
        data[-1000] ^= 0x10
        model.write_bytes(bytes(data))
    return name


def test_ctrl_c_sigterm_and_sigkill_of_the_driver_and_damaged_checkpoints_end_like_the_uninterrupted_run(
        tmp_path, mlflow_uri, tokenizer_path, twin, holds):
    path = resumable_spec(tmp_path, "resumable", mlflow_uri, tokenizer_path)
    run_dir = tmp_path / "ws" / "runs" / "resumable"
    at_8, at_16 = "resumable.checkpoint-8", "resumable.checkpoint-16"
    holds.arm(at_8, at_16)

    # 1. Ctrl-C: KILLED, exit 130, the way to continue printed. Meanwhile: a second `sar run` of the
    #    same spec (with or without --resume) is refused naming the live one, and every listening
    #    socket of the job is on loopback.
    first = Job(path)
    lock = tmp_path / "ws" / "locks" / "resumable.lock"
    first.wait_until(lambda: lock.exists() and f'"pid": {first.pid}' in lock.read_text(), 300, "the run's lock")
    second = subprocess.run([*SAR, "run", str(path), "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert second.returncode == 2 and f"run resumable is in use by a live `sar run`: PID {first.pid}" in second.stderr
    first.wait_until(lambda: latest_step(run_dir) >= 4, 300, "the first checkpoint")
    third = subprocess.run([*SAR, "run", str(path)], cwd=tmp_path, capture_output=True, text=True)  # not --resume
    assert third.returncode == 2 and f"run resumable is in use by a live `sar run`: PID {first.pid}" in third.stderr
    job_processes = descendants(first.pid) | {first.pid}
    exposed = {pid: [a for a in addresses if not is_loopback(a)] for pid, addresses in sockets_of(job_processes).items()}
    exposed = {pid: a for pid, a in exposed.items() if a}
    documented = readme_socket_list()
    assert all(f"`{command(pid).split()[0]}`" in documented for pid in exposed), exposed
    # Ray's workers (where MLflow clients run); its dashboard and runtime-env agents never import
    # MLflow, and Ray starts them with the environment it captured at import, not the driver's.
    workers = {p: environment(p) for p in job_processes
               if command(p).startswith("ray::") and not command(p).startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))}
    workers = {p: env for p, env in workers.items() if env}  # still there
    assert workers and not [command(p) for p, env in workers.items() if env.get("MLFLOW_DISABLE_TELEMETRY") != "true"]
    holds.wait(at_8, 300, alive=lambda: first.poll() is None)
    first.wait_until(lambda: latest_step(run_dir) == 8, 300, "checkpoint 8 registered")
    status, out = first.stop(signal.SIGINT)
    holds.release(at_8)
    assert status == 130, out[-3000:]
    assert f"Continue with: sar run {path} --resume" in out and "MLflow runs marked KILLED: resumable" in out
    assert the_run(mlflow_uri, "resumable").info.status == "KILLED"

    # 2. resumed, then SIGTERM (what `ray job stop` sends): KILLED, exit 143; its latest checkpoint
    #    then gets one flipped bit
    again = Job(path, "--resume")
    holds.wait(at_16, 300, alive=lambda: again.poll() is None)
    again.wait_until(lambda: "resuming from step" in again.output() and latest_step(run_dir) == 16, 300, "checkpoint 16")
    status, out = again.stop(signal.SIGTERM)
    holds.release(at_16)
    assert status == 143, out[-3000:]
    assert the_run(mlflow_uri, "resumable").info.status == "KILLED"
    flipped = damage(run_dir, "bit flip")
    holds.arm(at_16)

    # 3. resumed from the checkpoint before the damaged one (reported, set aside), then SIGKILL of
    #    the driver alone: nothing can mark the run, and Ray's processes must still go with it
    again = Job(path, "--resume")
    holds.wait(at_16, 300, alive=lambda: again.poll() is None)
    again.wait_until(lambda: "resuming from step" in again.output() and latest_step(run_dir) == int(flipped[-8:]), 300,
                     f"{flipped} trained again")
    job_processes = descendants(again.pid)
    _, out = again.stop(signal.SIGKILL)
    holds.release(at_16)
    assert f"checkpoint {flipped} is damaged (generator.safetensors does not match its checksum" in out, out[-3000:]
    assert f"resuming from step {int(flipped[-8:]) - CHECKPOINT_EVERY}" in out and (run_dir / "damaged" / flipped).is_dir()
    wait_until(lambda: not [p for p in job_processes if command(p)], 45,
               f"Ray's processes to end with the driver: {[command(p) for p in job_processes if command(p)]}")
    truncated = damage(run_dir, "truncate")

    # 4. resumed again: past the truncated checkpoint to the end, equal to the uninterrupted twin
    final = subprocess.run([*SAR, "run", str(path), "--resume", "--num-cpus", "2"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert f"checkpoint {truncated} is damaged (generator.safetensors has" in final.stdout
    run = the_run(mlflow_uri, "resumable")
    assert run.info.status == "FINISHED"
    assert logged_steps(mlflow_uri, run) == list(range(2, STEPS + 1, 2))  # every step once, none twice
    assert_same_run(json.loads((run_dir / "outputs.json").read_text()), twin)


# -- workers: SIGKILL mid-training (retried), SIGKILL in the final evaluation (resumed) --------

def kill_workers_at(point: str, holds, killed: list, ready=lambda: True) -> threading.Thread:
    """Once a worker holds at `point` (and `ready()`): SIGKILL every train worker, then forget the point."""
    def watch():
        holds.wait(point)
        wait_until(ready, 300, f"the run's state at {point}")
        for pid in ray_processes("RayTrainWorker"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        holds.release(point)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_killed_worker_resumes_exactly_and_a_failed_final_evaluation_reruns_alone(
        tmp_path, ray_local, mlflow_uri, tokenizer_path, twin, holds):
    path = resumable_spec(tmp_path, "worker-kills", mlflow_uri, tokenizer_path, "max_failures: 1")
    run_dir = tmp_path / "ws" / "runs" / "worker-kills"
    killed: list[int] = []
    # mid-training: Ray Train restarts the worker group from the latest checkpoint (max_failures: 1)
    # in the final evaluation (the final checkpoint is saved): no retry is left, the run fails
    holds.arm("worker-kills.checkpoint-12", "worker-kills.final-evaluation")
    mid_training = kill_workers_at("worker-kills.checkpoint-12", holds, killed)
    final = f"checkpoint_{STEPS:08d}"
    in_evaluation = kill_workers_at("worker-kills.final-evaluation", holds, killed,
                                    ready=lambda: latest_checkpoint(run_dir) == final)  # registered by the driver
    with pytest.raises(JobFailed, match="worker-kills failed"):
        run_in_process(path)
    mid_training.join(timeout=60)
    in_evaluation.join(timeout=60)
    assert len(killed) >= 2
    run = the_run(mlflow_uri, "worker-kills")
    assert run.info.status == "FAILED" and "fid" not in run.data.metrics
    assert not (run_dir / "outputs.json").exists()
    manifest = (run_dir / final / "manifest.json").read_text()

    outputs = run_in_process(path, resume=True)  # the training is complete: only the evaluation runs
    assert (run_dir / final / "manifest.json").read_text() == manifest  # the final checkpoint was not rewritten
    run = the_run(mlflow_uri, "worker-kills")
    assert run.info.status == "FINISHED" and "fid" in run.data.metrics
    assert logged_steps(mlflow_uri, run) == list(range(2, STEPS + 1, 2))
    assert_same_run(outputs, twin)


# -- tracking never kills training ------------------------------------------------------------

def test_a_run_survives_its_mlflow_server_stopping_and_restarting_with_every_metric_arriving(
        tmp_path, ray_local, tokenizer_path, holds):
    root, port = tmp_path / "mlflow", free_port()
    outage = []

    def stop_and_restart():  # the server is away while steps 5-8 train and checkpoint 8 is saved
        holds.wait("server-away.checkpoint-4")
        stop_server(root)
        outage.append(time.monotonic())
        holds.release("server-away.checkpoint-4")
        holds.wait("server-away.checkpoint-8")
        ensure_server(root, port)
        outage.append(time.monotonic())
        holds.release("server-away.checkpoint-8")

    with mlflow_server(root, port) as uri:
        path = resumable_spec(tmp_path, "server-away", uri, tokenizer_path, steps=12, evaluate=False)
        holds.arm("server-away.checkpoint-4", "server-away.checkpoint-8")
        thread = threading.Thread(target=stop_and_restart, daemon=True)
        thread.start()
        outputs = run_in_process(path)
        thread.join(timeout=60)
        assert len(outage) == 2  # the server really was away while checkpoint 8 was trained and saved
        run = the_run(uri, "server-away")
        assert run.info.status == "FINISHED" and outputs["metrics"]["step"] == 12
        assert logged_steps(uri, run) == [2, 4, 6, 8, 10, 12]
        assert logged_steps(uri, run, "grad_norm") == [2, 4, 6, 8, 10, 12]


# -- sweeps: trials retried after an infrastructure failure, failed trials named ----------------

def trial_sweep(tmp_path: Path, name: str, mlflow_uri: str, tokenizer_path, space: str, *head: str, **start) -> Path:
    """A sweep over `space` of 2-step trials on 64 images, checkpointed and logged every step."""
    body = train_body("data: {limit: 64}", "checkpoint: {every_steps: 1}", "log: {every_steps: 1}", "eval: {at_end: false}",
                      tokenizer=tokenizer_path, optim="{batch_size: 8, steps: 2}", **start)
    text = sweep_spec(name, body, (space,), "metric: loss/total", head=(*local_run(tmp_path, mlflow_uri, name), *head))
    return write_spec(tmp_path, text, f"{name}.yaml")


def test_a_12_trial_sweep_4_at_a_time_survives_a_killed_trial_with_one_run_per_trial(
        tmp_path, ray_local, mlflow_uri, tokenizer_path):
    path = trial_sweep(tmp_path, "wide", mlflow_uri, tokenizer_path, "optim.lr: {grid: [1.0e-4, 2.0e-4, 3.0e-4, 4.0e-4, "
                       "5.0e-4, 6.0e-4, 7.0e-4, 8.0e-4, 9.0e-4, 1.0e-3, 1.1e-3, 1.2e-3]}",
                       "max_concurrent_trials: 4", "resources: {num_workers: 1, cpus_per_worker: 0.5}")
    killed = []

    def kill_one_trial():  # an infrastructure failure: a trial's process dies
        trials = wait_until(lambda: ray_processes("ImplicitFunc"), 600, "a running trial")
        os.kill(trials[0], signal.SIGKILL)
        killed.append(trials[0])

    thread = threading.Thread(target=kill_one_trial, daemon=True)
    thread.start()
    outputs = run_in_process(path)
    thread.join(timeout=10)
    assert killed
    assert len(outputs["trials"]) == 12 and all(t["status"] == "finished" for t in outputs["trials"]), outputs["trials"]
    runs = experiment_runs(mlflow_uri, "wide")
    parent = next(r for r in runs if r.info.run_name == "wide")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 13 and len(children) == 12  # the retried trial continued its own run
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_non_finite_loss_fails_its_run_naming_the_step_and_a_sweep_with_a_failed_trial_fails_naming_it(
        tmp_path, ray_local, mlflow_uri, tokenizer_path):
    from sar_core import ScaleGenerator, load_model, save_model

    tok = load_model(tokenizer_path, kind="tokenizer")
    good = ScaleGenerator(TINY_GENERATOR).set_codebook(tok.codebook.weight.detach())
    save_model(good, tmp_path / "good.safetensors")
    with torch.no_grad():
        good.head.weight[0, 0] = float("nan")  # what an undetected bit flip in the weights does
    save_model(good, tmp_path / "nan.safetensors")
    path = trial_sweep(tmp_path, "with-nan", mlflow_uri, tokenizer_path,
                       f"init_from: {{grid: [{tmp_path / 'good.safetensors'}, {tmp_path / 'nan.safetensors'}]}}",
                       "trial_retries: 0", "resources: {num_workers: 1, cpus_per_worker: 1}",
                       init_from=tmp_path / "good.safetensors")
    with pytest.raises(JobFailed) as failed:
        run_in_process(path)
    message = str(failed.value)
    assert "sweep with-nan: 1 of 2 trials failed" in message and f"init_from={tmp_path / 'nan.safetensors'}" in message
    assert "step 1: non-finite loss/total = nan" in message
    runs = {r.info.run_name: r for r in experiment_runs(mlflow_uri, "with-nan")}
    statuses = sorted(r.info.status for name, r in runs.items() if name != "with-nan")
    assert statuses == ["FAILED", "FINISHED"] and runs["with-nan"].info.status == "FAILED"


# -- two jobs on one machine ------------------------------------------------------------------

def test_two_jobs_at_once_on_one_machine_both_finish_without_a_traceback(tmp_path, mlflow_uri, tokenizer_path):
    jobs = [Job(resumable_spec(tmp_path, name, mlflow_uri, tokenizer_path, steps=8, evaluate=False)) for name in ("left", "right")]
    for job in jobs:
        status = job.proc.wait(timeout=600)
        job.reader.join(timeout=120)
        assert status == 0, job.output()[-3000:]
        assert "Traceback" not in job.output() and "multiple active Ray instances" not in job.output(), job.output()[-3000:]
        assert "PreemptionWatcher" not in job.output()  # Ray's error-level line that is no error
        assert "Creating a file package" not in job.output() and "ignored by default" not in job.output()  # upload chatter


def test_a_workspace_server_restarted_on_another_port_is_found_there_and_the_run_ends_finished(
        tmp_path, ray_local, tokenizer_path, holds):
    # the embedded server (no mlflow.tracking_uri): killed at checkpoint 4 and restarted, as by
    # `sar ui`, while another process holds its old port
    port = free_port()
    path = resumable_spec(tmp_path, "server-moved", "unused", tokenizer_path, steps=8)
    path.write_text(path.read_text().replace('mlflow: {tracking_uri: "unused", experiment: server-moved}',
                                             f"mlflow: {{experiment: server-moved, port: {port}}}"))
    root = tmp_path / "ws" / "mlflow"
    moved = []

    def restart_elsewhere():
        holds.wait("server-moved.checkpoint-4")
        try:
            stop_server(root)
            with socket.socket() as squatter:
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's connections may linger
                squatter.bind(("127.0.0.1", port))
                squatter.listen()
                moved.append(ensure_server(root, port).uri)
                holds.release("server-moved.checkpoint-4")
                holds.wait("server-moved.final-evaluation")  # the squatter keeps the old port to the end
        finally:  # whatever failed here, the run goes on (and the assertions below say what went wrong)
            holds.release("server-moved.checkpoint-4")
            holds.release("server-moved.final-evaluation")

    holds.arm("server-moved.checkpoint-4", "server-moved.final-evaluation")
    thread = threading.Thread(target=restart_elsewhere, daemon=True)
    thread.start()
    try:
        outputs = run_in_process(path)
        thread.join(timeout=60)
        assert moved and not moved[0].endswith(f":{port}")
        run = the_run(moved[0], "server-moved")
        assert run.info.status == "FINISHED" and "fid" in run.data.metrics and outputs["metrics"]["step"] == 8
        assert logged_steps(moved[0], run) == [2, 4, 6, 8]
    finally:
        stop_server(root)
