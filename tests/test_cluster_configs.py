"""The shipped cluster configs are well-formed: the AWS launcher file passes Ray's own launcher
schema, the KubeRay manifest asks for the Ray version the project pins, and every node type can
reach the shared paths and dependencies the ImageNet job needs."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

from sar_platform.spec import load_job
from tests.conftest import REPO

CLUSTER = REPO / "cluster"


def test_the_aws_launcher_config_passes_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")


def test_the_kuberay_cluster_pins_rays_version_and_mounts_the_shared_volume():
    manifest = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    assert manifest["spec"]["rayVersion"] == ray.__version__
    pods = [manifest["spec"]["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in manifest["spec"]["workerGroupSpecs"]]
    for pod in pods:
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["image"].startswith(f"rayproject/ray:{ray.__version__}")
            assert "torch" in " ".join(container.get("command", [])), "every pod installs torch"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{container['name']} mounts undeclared volume {mount['name']}"
            assert "/mnt/fsx" in {m["mountPath"] for m in container.get("volumeMounts", [])}


def test_the_imagenet_job_fits_the_aws_cluster():
    job = load_job(REPO / "jobs" / "imagenet256-d16-sar.yaml")
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    gpu = config["available_node_types"]["gpu_worker"]
    gpus_per_node = 8  # p4de.24xlarge
    assert job.resources.num_workers * job.resources.gpus_per_worker <= gpu["max_workers"] * gpus_per_node
    assert job.storage.path.startswith("s3://") and job.mlflow.tracking_uri, "multi-node runs need shared storage and MLflow"
    assert job.data.root.startswith("/mnt/fsx") and "/mnt/fsx" in " ".join(config["docker"]["run_options"])
