"""What `sar submit` checks before sending anything: every file a job reads or writes is found in
the spec tree (pipelines, sweeps, metric files), and a local path is refused unless it lies under a
shared file system named with --shared-path or $SAR_SHARED_PATHS."""
from sar_platform.driver.submit import file_fields, unseen_paths
from sar_platform.spec import load_job
from tests.support.specs import train_spec, write_spec

ON_S3 = {"tokenizer": "s3://bucket/tok.safetensors", "optim": "{steps: 2}"}


def test_every_path_of_a_pipeline_is_found_with_its_field(tmp_path):
    job = load_job(write_spec(tmp_path, f"""
        kind: pipeline
        name: p
        storage: {{path: /mnt/fsx/ws}}
        steps:
          post:
            kind: train
            tokenizer: /mnt/fsx/tok.safetensors
            init_from: /mnt/fsx/gen.safetensors
            schedule: {{scales: [1, 2, 3, 5, 7]}}
            data: {{dataset: image_folder, root: /data/imagenet}}
            optim: {{steps: 2}}
            eval: {{metrics: {{feature_network: inception, inception_weights: /mnt/fsx/pt_inception-2015-12-05-6726825d.pth,
                               reference: /mnt/fsx/ref.npz, num_samples: 10, batch_size: 5, is_splits: 2}}}}
          score:
            kind: eval
            generator: step:post
            tokenizer: /mnt/fsx/tok.safetensors
            schedule: [1, 2, 3, 5, 7]
    """))
    found = dict(file_fields(job))
    assert found["storage.path"] == "/mnt/fsx/ws"
    assert found["steps.post.tokenizer"] == found["steps.score.tokenizer"] == "/mnt/fsx/tok.safetensors"
    assert found["steps.post.init_from"] == "/mnt/fsx/gen.safetensors" and found["steps.score.generator"] == "step:post"
    assert found["steps.post.data.root"] == "/data/imagenet"
    assert found["steps.post.eval.metrics.inception_weights"].endswith("pt_inception-2015-12-05-6726825d.pth")
    assert found["steps.post.eval.metrics.reference"] == "/mnt/fsx/ref.npz"

    (problem,) = unseen_paths(job, ["/mnt/fsx"])  # each path once; step references and the rest are shared
    assert problem.startswith("steps.post.data.root: /data/imagenet is a path on this machine")
    assert "--shared-path" in problem and "/mnt/fsx" in problem
    assert unseen_paths(job, ["/mnt/fsx", "/data"]) == []


def test_s3_inputs_need_no_shared_path_and_a_local_workspace_does(tmp_path, monkeypatch):
    on_s3 = load_job(write_spec(tmp_path, train_spec("t", head=("storage: {path: s3://bucket/ws}",), **ON_S3)))
    assert unseen_paths(on_s3, []) == []
    local = load_job(write_spec(tmp_path, train_spec("t", **ON_S3)))  # storage.path defaults to ./workspace
    (problem,) = unseen_paths(local, [])
    assert problem.startswith(f"storage.path: {local.storage.path} is a path on this machine")
    monkeypatch.setenv("SAR_SHARED_PATHS", f"/elsewhere:{local.storage.path}")
    from sar_platform.driver.submit import shared_paths

    assert unseen_paths(local, shared_paths(None)) == []
