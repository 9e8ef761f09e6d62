"""The MLflow links `sar submit` and `sar jobs status` print open on the submitting machine: a
run's page on the head's private address or an in-cluster service name is shown on the local end
of the tunnel ($SAR_MLFLOW_URL, or 127.0.0.1 with the command that forwards it there), and
`sar ui --address` browses the cluster's server through that tunnel."""
import subprocess

from sar_platform.driver.jobs import local_link, run_urls
from tests.support.processes import SAR, free_ports

PAGE = "/#/experiments/3/runs/abc"


def test_a_run_on_an_in_cluster_address_is_linked_on_this_machine_with_the_forwarding_command(monkeypatch):
    monkeypatch.delenv("SAR_MLFLOW_URL", raising=False)
    (found,) = run_urls(f"[sar] MLflow run imagenet: http://sar-platform-mlflow:5000{PAGE}\n")
    assert found.startswith(f"imagenet: http://127.0.0.1:5000{PAGE} (forward the server here first:")
    assert "kubectl port-forward svc/sar-platform-mlflow 5000:5000" in found and "ray attach CLUSTER.yaml -p 5000" in found
    monkeypatch.setenv("SAR_MLFLOW_URL", "http://localhost:15000/")
    assert local_link(f"http://10.0.3.7:5000{PAGE}") == f"http://localhost:15000{PAGE}"
    assert local_link(f"http://127.0.0.1:5000{PAGE}") == f"http://127.0.0.1:5000{PAGE}"  # a local cluster's


def test_sar_ui_address_lists_a_running_servers_experiments(mlflow_uri):
    out = subprocess.run([*SAR, "ui", "--address", mlflow_uri], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"MLflow UI: {mlflow_uri}")


def test_sar_ui_address_without_a_server_says_how_to_forward_one(tmp_path):
    (port,) = free_ports(1)
    out = subprocess.run([*SAR, "ui", "--address", f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"no MLflow server answers at http://127.0.0.1:{port}" in out.stderr and "kubectl port-forward" in out.stderr
