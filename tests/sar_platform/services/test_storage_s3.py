"""The workspace on a real S3 server (moto's, on loopback: `s3_endpoint`; `storage.s3_endpoint` points at it):
JSON outputs, folders such as token shards downloaded once per machine, the evaluation assets every
node mirrors, and credentials that only come from the environment (never inside the filesystem
object Ray pickles to its workers)."""
import pickle
import secrets

import boto3
import pytest

from sar_platform.services.storage import EVAL_ASSETS, Workspace

SECRET = "secret-" + secrets.token_hex(12)


@pytest.fixture
def workspace(s3_endpoint, monkeypatch, tmp_path):
    for key, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "SAR_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    bucket = f"b{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return Workspace(f"s3://{bucket}/ws", s3_endpoint)


def test_outputs_and_folders_round_trip_through_s3(workspace, tmp_path):
    uri = workspace.outputs_path("job")
    assert not workspace.exists(uri) and workspace.read_json(uri) is None
    workspace.write_json(uri, {"fid": 1.5})
    assert workspace.exists(uri) and workspace.read_json(uri) == {"fid": 1.5}

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "_manifest.json").write_text("{}")
    (shards / "shard-00000.parquet").write_bytes(b"PAR1")
    folder = workspace.path("shards", "set")
    workspace.upload_folder(shards, folder)
    local = workspace.local_folder(folder)
    assert sorted(p.name for p in local.iterdir()) == ["_manifest.json", "shard-00000.parquet"]
    assert workspace.local_folder(folder) == local  # downloaded once per machine


def test_evaluation_assets_saved_on_one_node_are_mirrored_on_another(workspace, tmp_path, monkeypatch):
    mirror = workspace.eval_cache()
    (mirror / "reference").mkdir(parents=True)
    (mirror / "reference" / "fashion_mnist-train-abc.npz").write_bytes(b"features")
    workspace.save_eval_cache(mirror)
    assert workspace.exists(workspace.path(EVAL_ASSETS, "reference", "fashion_mnist-train-abc.npz"))

    monkeypatch.setenv("SAR_CACHE", str(tmp_path / "other-node"))  # another machine's empty cache
    other = workspace.eval_cache()
    assert other != mirror and (other / "reference" / "fashion_mnist-train-abc.npz").read_bytes() == b"features"


def test_credentials_come_from_the_environment_and_never_travel_in_the_filesystem(workspace):
    storage_path, filesystem = workspace.ray_storage()
    assert storage_path.endswith("/ws/runs") and "://" not in storage_path
    assert SECRET.encode() not in pickle.dumps(filesystem) and SECRET not in repr(filesystem)
    workspace.write_json(workspace.outputs_path("probe"), {})  # and yet it writes: the SDK found the keys
    assert workspace.exists(workspace.outputs_path("probe"))
