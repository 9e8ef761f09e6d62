"""The shipped cluster configs are well-formed: the AWS launcher file passes Ray's own launcher
schema, every config runs the one image of cluster/Dockerfile (Ray's GPU image of the pinned Ray,
the locked dependencies), the KubeRay pods' requests fit their nodes, every node type can reach the
shared paths and dependencies the ImageNet job needs, each config starts the cluster MLflow recipe
(cluster/mlflow-server.sh) and tells the head where it is, and the dashboard and MLflow ports stay
private."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

from sar_platform.driver.placement import placement_problems
from sar_platform.driver.submit import unseen_paths
from sar_platform.spec import load_job
from tests.conftest import REPO

CLUSTER = REPO / "cluster"


def test_the_aws_launcher_config_passes_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["docker"]["image"].endswith(f"/sar-platform:{ray.__version__}")  # cluster/Dockerfile's
    assert "setup_commands" not in config, "the image carries every dependency: nothing installs at start"
    amis = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(amis) == 1 and next(iter(amis)).startswith("ami-")  # one pinned AMI, not Ray's default


def test_the_image_recipe_builds_on_the_pinned_ray_with_the_locked_dependencies():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}\nFROM rayproject/ray:${{RAY_VERSION}}-py311-gpu" in dockerfile
    assert "pip install --no-cache-dir -r cluster/requirements.lock" in dockerfile and "pip check" in dockerfile
    pins = dict(line.split("==", 1) for line in (CLUSTER / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["ray"] == ray.__version__ and pins["torch"].startswith("2.") and "+cpu" not in pins["torch"]
    assert {"mlflow", "einops", "pydantic", "boto3", "psycopg2-binary", "safetensors"} <= set(pins)
    assert any(name.startswith("nvidia-") for name in pins), "the CUDA libraries of the CUDA torch"


def test_the_aws_head_may_launch_workers_with_their_role_and_only_that_role():
    head = json.loads((CLUSTER / "aws-iam-head-policy.json").read_text())
    actions = {a for s in head["Statement"] for a in s["Action"]}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances", "iam:PassRole"} <= actions
    (pass_role,) = [s for s in head["Statement"] if "iam:PassRole" in s["Action"]]
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    worker_profile = config["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    assert worker_profile in pass_role["Resource"] and pass_role["Resource"] != "*"
    worker = json.loads((CLUSTER / "aws-iam-worker-policy.json").read_text())
    assert not [a for s in worker["Statement"] for a in s["Action"] if a.startswith(("ec2:", "iam:"))]


def test_fsx_is_mounted_on_the_host_before_docker_starts_and_bound_into_the_containers():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    assert any("mount -t lustre" in c and "/mnt/fsx" in c for c in config["initialization_commands"])
    assert "-v /mnt/fsx:/mnt/fsx" in config["docker"]["run_options"]


def kuberay(kind: str) -> dict:
    (found,) = [d for d in yaml.safe_load_all((CLUSTER / "kuberay-raycluster.yaml").read_text()) if d["kind"] == kind]
    return found


def test_the_kuberay_cluster_runs_the_image_and_mounts_the_shared_volume():
    manifest = kuberay("RayCluster")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    assert manifest["spec"]["rayVersion"] == ray.__version__
    (image,) = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text())["images"]
    assert image["newTag"] == ray.__version__
    pods = [manifest["spec"]["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in manifest["spec"]["workerGroupSpecs"]]
    for pod in pods:
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["image"] == image["name"], "every container runs the image kustomization.yaml names"
            assert container["resources"]["requests"] == container["resources"]["limits"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{container['name']} mounts undeclared volume {mount['name']}"
            if container["name"].startswith("ray-"):  # Ray's containers (not the MLflow server beside the head)
                assert "pip" not in " ".join(container.get("command", [])), "nothing installs at pod start"
                assert "/mnt/fsx" in {m["mountPath"] for m in container.get("volumeMounts", [])}


def test_kuberay_gpu_pods_fit_their_nodes_and_the_head_declares_them_as_node_types():
    cluster = kuberay("RayCluster")
    (group,) = cluster["spec"]["workerGroupSpecs"]
    requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
    p4de_cpus = 96
    assert int(requests["cpu"]) < p4de_cpus, "a pod asking for every vCPU of its node is never scheduled"
    head_env = {e["name"]: e.get("value") for e in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    declared = {t["name"]: t for t in json.loads(head_env["SAR_NODE_TYPES"])}
    gpu = declared[group["groupName"]]
    assert gpu["resources"] == {"CPU": int(requests["cpu"]), "GPU": int(requests["nvidia.com/gpu"])}
    assert gpu["min"] == group["minReplicas"] and gpu["max"] == group["maxReplicas"]
    job = load_job(REPO / "jobs" / "imagenet256-d16-sar.yaml")
    nodes = [declared["head"]["resources"]] + [gpu["resources"]] * group["replicas"]
    assert placement_problems(job, nodes) == []


def test_the_rayjob_runs_a_spec_the_image_carries_on_the_named_cluster():
    (job,) = [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text())]
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"]["ray.io/cluster"] == kuberay("RayCluster")["metadata"]["name"]
    spec = job["spec"]["entrypoint"].split(" run ", 1)[1].split()[0]
    assert (REPO / spec.removeprefix("/home/ray/sar-platform/")).is_file()


def test_the_imagenet_job_fits_the_aws_cluster_and_reads_only_what_every_node_sees():
    job = load_job(REPO / "jobs" / "imagenet256-d16-sar.yaml")
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"] == {"CPU": 96, "GPU": 8}  # p4de.24xlarge
    nodes = [dict(config["available_node_types"]["head"]["resources"])] + [gpu["resources"]] * gpu["min_workers"]
    assert placement_problems(job, nodes) == []  # 32 workers, and CPUs left for Ray Data's reads
    assert job.storage.path.startswith("s3://") and job.mlflow.tracking_uri is None  # the head's server
    assert job.data.root.startswith("/mnt/fsx") and "/mnt/fsx" in " ".join(config["docker"]["run_options"])
    assert unseen_paths(job, ["/mnt/fsx"]) == []  # `sar submit ... --shared-path /mnt/fsx`


def test_the_aws_cluster_starts_the_mlflow_recipe_and_gives_the_head_its_uri_and_rays_token():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    assert any("cluster/mlflow-server.sh postgres" in c for c in config["head_setup_commands"])
    head = config["head_start_ray_commands"]
    start = next(c for c in head if "mlflow-server.sh start" in c)
    assert "SAR_MLFLOW_ARTIFACTS=s3://" in start
    ray_head = next(c for c in head if "ray start --head" in c)
    assert "MLFLOW_TRACKING_URI=$(bash /home/ray/sar-platform/cluster/mlflow-server.sh uri)" in ray_head
    assert head.index(start) < head.index(ray_head)
    for line in [ray_head, *(c for c in config["worker_start_ray_commands"] if "ray start" in c)]:
        assert "RAY_AUTH_MODE=token" in line
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    # Ray's launcher opens only SSH to the outside unless a config names its own security group.
    assert "security_group" not in config["provider"]


def test_the_kuberay_cluster_runs_mlflow_beside_the_head_behind_a_cluster_only_service():
    service, cluster = kuberay("Service"), kuberay("RayCluster")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"]["ray.io/node-type"] == "head"
    assert "serviceType" not in cluster["spec"]["headGroupSpec"]  # the head's service stays ClusterIP too
    head_pod = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    containers = {c["name"]: c for c in head_pod["containers"]}
    mlflow = containers["mlflow"]
    assert "mlflow-server.sh run" in " ".join(mlflow["command"])
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["SAR_MLFLOW_BACKEND"]["value"].startswith("postgresql") and "@" in env["SAR_MLFLOW_BACKEND"]["value"]
    assert ":" not in env["SAR_MLFLOW_BACKEND"]["value"].split("://")[1].split("@")[0], "no password in the URI"
    assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"] and env["SAR_MLFLOW_ARTIFACTS"]["value"].startswith("s3://")
    port = service["spec"]["ports"][0]["port"]
    head_env = {e["name"]: e.get("value") for e in containers["ray-head"]["env"]}
    assert head_env["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:{port}"
    assert service["metadata"]["name"] in env["SAR_MLFLOW_ALLOWED_HOSTS"]["value"]
    pods = [head_pod] + [g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for container in (c for pod in pods for c in pod["containers"] if c["name"].startswith("ray-")):
        ray_env = {e["name"]: e for e in container["env"]}
        assert ray_env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in ray_env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_the_local_cluster_starts_the_same_recipe_before_the_head_and_on_loopback():
    script = (CLUSTER / "local-cluster.sh").read_text()
    assert 'SAR_MLFLOW_HOST=127.0.0.1' in script
    start = script.index('"${mlflow_recipe[@]}" start')
    head = script.index('MLFLOW_TRACKING_URI="$("${mlflow_recipe[@]}" uri)"')
    assert start < head < script.index("--head") and '"${mlflow_recipe[@]}" stop' in script
