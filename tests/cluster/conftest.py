"""One real loopback cluster for the cluster tests (started once for their module, 40-120 s on 2
cores, and ended with it: a second Ray left running would make Ray Train's placement-group cleaner
in later tests' clusters fail to find its own cluster, and a trial ASHA stops would leak its CPUs):

- an S3 server (moto's, `s3_endpoint` of tests/conftest.py) with one bucket, for the specs'
  `storage.path: s3://...` and MLflow's artifacts;
- the cluster MLflow recipe (`cluster/mlflow-server.sh start`) with artifacts on that S3;
- a Ray head and a Ray worker node started with `ray start` on 127.0.0.1 with distinct ports, each
  with one CPU and a custom resource naming it (`node_head`, `node_worker`), token authentication on.

Every process of the cluster carries an environment marker, so a node can be killed (SIGKILL, the
whole node as a machine loss would) and the cluster torn down by PID, never with `ray stop`, which
would end every Ray on the machine.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.processes import free_ports, kill_marked

BIN = Path(sys.executable).parent
MARK = "SAR_TEST_CLUSTER"
NODE_MARK = "SAR_TEST_NODE"
BUCKET = "sar-test"


@dataclass
class LoopbackCluster:
    root: Path
    env: dict
    """The environment of the cluster's nodes and of `sar` commands talking to it."""
    s3_endpoint: str
    tracking_uri: str
    gcs_port: int = 0
    dashboard_port: int = 0
    node_ids: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(self, *args: str, node: str) -> None:
        env = {**self.env, NODE_MARK: f"{self.env[MARK]}-{node}"}
        out = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def start_head(self) -> None:
        self.gcs_port, self.dashboard_port, client, agent, metrics, runtime_env = free_ports(6)
        self.ray("start", "--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                 f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
                 f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
                 "--num-cpus=1", '--resources={"node_head": 1}', f"--temp-dir={self.root / 'ray'}",
                 "--disable-usage-stats", node="head")

    def start_worker(self) -> None:
        agent, metrics, runtime_env = free_ports(3)
        self.ray("start", f"--address=127.0.0.1:{self.gcs_port}", "--node-ip-address=127.0.0.1",
                 f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
                 f"--runtime-env-agent-port={runtime_env}", "--num-cpus=1", '--resources={"node_worker": 1}',
                 # Its own session folder, as another machine has: runtime environments, logs.
                 f"--temp-dir={self.root / 'rayw'}", "--disable-usage-stats", node="worker")

    def kill_node(self, node: str) -> int:
        """SIGKILL every process of one node (its raylet, agents and workers): a machine lost."""
        return kill_marked(NODE_MARK, f"{self.env[MARK]}-{node}")

    def stop(self) -> None:
        kill_marked(MARK, self.env[MARK], signal.SIGTERM)
        time.sleep(2)
        kill_marked(MARK, self.env[MARK])

    def sar(self, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run `sar` as a user on the submitting machine would (cwd: the repository root)."""
        return subprocess.run([str(BIN / "sar"), *args], cwd=REPO, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def cluster_env(root: Path, tracking_uri: str) -> dict:
    """What every node and `sar` command of the test cluster sees: S3 credentials only here (the
    secret is random: tests check it never reaches MLflow or the logs), Ray's token, the cluster's
    MLflow server as $MLFLOW_TRACKING_URI (as the cluster configs set it on the head), the venv first
    on PATH (as on a cluster image)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_"))}
    env.update({
        MARK: root.name,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "AWS_ACCESS_KEY_ID": "sar-test-key", "AWS_SECRET_ACCESS_KEY": "secret-" + secrets.token_hex(12),
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # `sar jobs stop` -> SIGTERM; the driver gets this long to close its MLflow runs before SIGKILL.
        "RAY_JOB_STOP_WAIT_TIME_S": "30",
        # A killed node is declared dead after 5 missed 1-s health checks (Ray's default: 5 x 3 s).
        "RAY_health_check_period_ms": "1000",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PYTHONUNBUFFERED": "1",
        "SAR_CACHE": str(root / "cache"),  # local copies of s3:// files, per test cluster
    })
    return env


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    root = Path(tempfile.mkdtemp(prefix="sarc", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    (mlflow_port,) = free_ports(1)
    env = cluster_env(root, f"http://127.0.0.1:{mlflow_port}")
    mlflow_env = {**env, "SAR_MLFLOW_BACKEND": f"sqlite:///{root / 'mlflow.db'}", "SAR_MLFLOW_DIR": str(root / "mlflow"),
                  "SAR_MLFLOW_ARTIFACTS": f"s3://{BUCKET}/mlflow", "SAR_S3_ENDPOINT": s3_endpoint,
                  "SAR_MLFLOW_HOST": "127.0.0.1", "SAR_MLFLOW_PORT": str(mlflow_port), "SAR_MLFLOW_WORKERS": "1"}
    recipe = [str(REPO / "cluster" / "mlflow-server.sh")]
    c = LoopbackCluster(root, env, s3_endpoint, f"http://127.0.0.1:{mlflow_port}")
    c.s3().create_bucket(Bucket=BUCKET)
    # The MLflow server starts while the Ray nodes do (each takes 10-30 s on 2 busy cores).
    mlflow = subprocess.Popen(["bash", *recipe, "start"], env=mlflow_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        c.start_head()
        c.start_worker()
        out, _ = mlflow.communicate(timeout=180)
        assert mlflow.returncode == 0, out
        yield c
    finally:
        c.stop()
        subprocess.run(["bash", *recipe, "stop"], env=mlflow_env, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
