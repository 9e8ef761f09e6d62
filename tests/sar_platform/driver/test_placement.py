"""Placements a cluster can never give are refused by field, never waited for: the checks on node
lists (driver/placement.py), and `sar run` on an embedded 2-CPU Ray refusing the issue's hang
(`data.loader: ray_data` with `cpus_per_worker: 2`) right after connecting, before any MLflow run."""
import subprocess

import pytest

from sar_platform.driver.placement import placement_problems
from sar_platform.spec import load_job
from tests.support.processes import SAR
from tests.support.servers import experiment_runs
from tests.support.specs import local_run, pipeline_spec, sweep_spec, train_body, train_spec, train_step, write_spec

LAPTOP = [{"CPU": 2.0, "memory": 8e9}]
TWO_SMALL = [{"CPU": 1.0}, {"CPU": 1.0}]


def job(tmp_path, resources: str, *extra: str):
    """A tiny train job with these resources (and `extra` fields)."""
    return load_job(write_spec(tmp_path, train_spec("t", *extra, head=(f"resources: {resources}",), optim="{steps: 2}")))


def test_ray_data_with_workers_taking_every_cpu_is_refused_and_one_free_cpu_is_enough(tmp_path):
    hangs = job(tmp_path, "{num_workers: 1, cpus_per_worker: 2}", "data: {loader: ray_data}")
    (problem,) = placement_problems(hangs, LAPTOP)
    assert problem.startswith("data.loader: ray_data needs 1 CPU free beside the training workers")
    assert "resources.cpus_per_worker" in problem
    assert placement_problems(job(tmp_path, "{num_workers: 1, cpus_per_worker: 1}", "data: {loader: ray_data}"), LAPTOP) == []
    assert placement_problems(job(tmp_path, "{num_workers: 1, cpus_per_worker: 2}"), LAPTOP) == []  # memory loader
    # Half a CPU left on each of two nodes is no whole CPU for a read task.
    split = job(tmp_path, "{num_workers: 2, cpus_per_worker: 1.5}", "data: {loader: ray_data}")
    assert placement_problems(split, [{"CPU": 2.0}, {"CPU": 2.0}])[0].startswith("data.loader")


@pytest.mark.parametrize("resources, nodes, field", [
    ("{num_workers: 1, cpus_per_worker: 4}", LAPTOP, "resources.cpus_per_worker: 4 per worker, but the largest node has 2"),
    ("{num_workers: 1, gpus_per_worker: 1}", LAPTOP, "resources.gpus_per_worker: 1 per worker, but the largest node has 0"),
    ("{num_workers: 4, cpus_per_worker: 1}", TWO_SMALL, "resources.num_workers: 4 workers of {'CPU': 1.0} do not fit"),
    ("{num_workers: 2, cpus_per_worker: 1, placement_strategy: STRICT_PACK}", TWO_SMALL, "resources.num_workers: 2 workers"),
    ("{num_workers: 2, cpus_per_worker: 1, placement_strategy: STRICT_SPREAD}", LAPTOP, "resources.num_workers: 2 workers"),
])
def test_workers_that_never_fit_are_refused_naming_the_field(tmp_path, resources, nodes, field):
    (problem,) = placement_problems(job(tmp_path, resources), nodes)
    assert problem.startswith(field)
    if "STRICT" in resources:
        assert f"placement_strategy {resources.split('placement_strategy: ')[1].rstrip('}')}" in problem


def test_placements_that_fit_pass(tmp_path):
    assert placement_problems(job(tmp_path, "{num_workers: 2, cpus_per_worker: 1}"), TWO_SMALL) == []
    assert placement_problems(job(tmp_path, "{num_workers: 2, cpus_per_worker: 1, placement_strategy: STRICT_SPREAD}"),
                              TWO_SMALL) == []
    gpu_nodes = [{"CPU": 0.0}] + [{"CPU": 96.0, "GPU": 8.0}] * 4
    assert placement_problems(job(tmp_path, "{num_workers: 32, cpus_per_worker: 10, gpus_per_worker: 1}",
                                  "data: {loader: ray_data}"), gpu_nodes) == []


def test_pipeline_steps_and_concurrent_sweep_trials_are_checked_by_their_own_fields(tmp_path):
    pipeline = load_job(write_spec(tmp_path, pipeline_spec("p", {
        "fits": train_step(optim="{steps: 2}"),
        "big": train_step("resources: {num_workers: 1, cpus_per_worker: 8}", optim="{steps: 2}"),
    })))
    (problem,) = placement_problems(pipeline, LAPTOP)
    assert problem.startswith("steps.big.resources.cpus_per_worker: 8 per worker")
    sweep = load_job(write_spec(tmp_path, sweep_spec(
        "s", train_body("data: {loader: ray_data}", optim="{steps: 2}"), ("optim.lr: {grid: [0.001, 0.002]}",),
        "metric: loss/total", head=("resources: {num_workers: 1, cpus_per_worker: 1}", "max_concurrent_trials: 2"))))
    (problem,) = placement_problems(sweep, LAPTOP)  # two trials' workers take both CPUs: no reads
    assert problem.startswith("train.data.loader: ray_data") and "2 concurrent trials" in problem


@pytest.mark.ray
def test_sar_run_refuses_the_ray_data_hang_on_a_two_cpu_machine_before_any_mlflow_run(tmp_path, mlflow_uri, tokenizer_path):
    path = write_spec(tmp_path, train_spec(
        "hang", "data: {limit: 64, loader: ray_data}", tokenizer=tokenizer_path, optim="{steps: 2, batch_size: 8}",
        head=(*local_run(tmp_path, mlflow_uri, "placement-hang"), "resources: {num_workers: 1, cpus_per_worker: 2}")),
        "hang.yaml")
    out = subprocess.run([*SAR, "run", str(path), "--num-cpus", "2"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "hang: data.loader: ray_data needs 1 CPU free beside the training workers" in out.stderr
    assert experiment_runs(mlflow_uri, "placement-hang") == []
