"""A job that the cluster's node types can hold, but not the nodes up now, asks the autoscaler for
its workers and waits with progress lines until they are up (or the timeout, which names what
never came); what no node type can hold is refused at once, and without known node types (a
cluster started by hand) nothing is waited for."""
import json

import pytest
import yaml

from sar_platform.driver import cluster_nodes
from sar_platform.driver.cluster_nodes import NodeType, types_from_env, types_from_launcher, wait_for_nodes
from sar_platform.driver.placement import placement_problems
from sar_platform.spec import load_job
from tests.conftest import REPO

HEAD, P4DE = {"CPU": 0.0}, {"CPU": 96.0, "GPU": 8.0}


@pytest.fixture
def imagenet():
    return load_job(REPO / "jobs" / "imagenet256-d16-sar.yaml")


@pytest.fixture
def aws_types():
    return types_from_launcher(yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text()))


class Cluster:
    """Nodes that join one by one, one per poll; a clock that moves only when the waiter sleeps."""

    def __init__(self, joining: list[list[dict]]):
        self.joining, self.now, self.requests, self.lines = joining, 0.0, [], []

    def alive(self):
        return self.joining[min(int(self.now // cluster_nodes.POLL_S), len(self.joining) - 1)]

    def sleep(self, seconds):
        self.now += seconds

    def wait(self, job, timeout_s, types):
        problems = placement_problems(job, self.alive())
        return wait_for_nodes(job, problems, timeout_s, self.alive, types, self.requests.append,
                              say=self.lines.append, sleep=self.sleep, clock=lambda: self.now)


def test_the_aws_node_types_are_read_from_the_launcher_config(aws_types):
    assert aws_types == [NodeType("head", HEAD, 1, 1), NodeType("gpu_worker", P4DE, 4, 4)]


def test_a_job_the_node_types_hold_waits_for_its_nodes_with_progress(imagenet, aws_types):
    cluster = Cluster([[HEAD], [HEAD, P4DE], [HEAD, P4DE, P4DE], [HEAD, *[P4DE] * 4]])
    assert cluster.wait(imagenet, 600, aws_types) == []
    assert cluster.lines[0].startswith("waiting for 4 gpu_worker node(s) with 96 CPU, 8 GPU: 0 up")
    assert [line.split(" (")[0].rsplit(": ", 1)[1] for line in cluster.lines] == ["0 up", "1 up", "2 up"]
    assert cluster.requests == [[{"CPU": 10, "GPU": 1}] * 32, []]  # asked for, then the request cleared


def test_nodes_that_never_come_end_the_wait_at_the_timeout_naming_them(imagenet, aws_types):
    cluster = Cluster([[HEAD, P4DE]])
    (problem,) = cluster.wait(imagenet, 30, aws_types)
    assert problem.startswith("resources.num_workers: 32 workers")
    assert "after waiting 30 s for nodes: waiting for 4 gpu_worker node(s) with 96 CPU, 8 GPU: 1 up" in problem
    assert cluster.requests[-1] == []


def test_what_no_node_type_can_hold_is_refused_at_once(imagenet, aws_types):
    too_big = imagenet.model_copy(update={"resources": imagenet.resources.model_copy(update={"cpus_per_worker": 100})})
    cluster = Cluster([[HEAD]])
    (problem,) = cluster.wait(too_big, 600, aws_types)
    assert "cpus_per_worker: 100 per worker, but the largest node has 96 CPU(s)" in problem
    assert "even with every node the cluster can have: head x1 (no CPU/GPU); gpu_worker x4 (96 CPU, 8 GPU)" in problem
    assert cluster.requests == [] and cluster.now == 0


def test_without_node_types_only_the_nodes_up_now_count(imagenet):
    cluster = Cluster([[HEAD]])
    problems = placement_problems(imagenet, [HEAD])
    assert cluster.wait(imagenet, 600, None) == problems and cluster.requests == []


def test_node_types_come_from_the_environment_when_the_autoscaler_reports_none(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster_nodes.ray_private, "autoscaler_node_groups", lambda: None)
    monkeypatch.setattr(cluster_nodes, "LAUNCHER_CONFIG", tmp_path / "absent.yaml")
    monkeypatch.delenv(cluster_nodes.NODE_TYPES_ENV, raising=False)
    assert cluster_nodes.node_types() is None
    declared = [{"name": "gpu", "resources": P4DE, "min": 4, "max": 4}]
    monkeypatch.setenv(cluster_nodes.NODE_TYPES_ENV, json.dumps(declared))
    assert cluster_nodes.node_types() == types_from_env(json.dumps(declared)) == [NodeType("gpu", P4DE, 4, 4)]
