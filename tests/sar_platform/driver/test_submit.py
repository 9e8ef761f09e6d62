"""What `sar submit` checks before sending anything: every file a job reads or writes is found in
the spec tree (pipelines, sweeps, metric files), and a local path is refused unless it lies under a
shared file system named with --shared-path or $SAR_SHARED_PATHS."""
import textwrap

from sar_platform.driver.submit import file_fields, unseen_paths
from sar_platform.spec import load_job
from tests.sar_platform.conftest import GENERATOR_MODEL

TRAIN = f"""
tokenizer: s3://bucket/tok.safetensors
model: {GENERATOR_MODEL}
schedule: {{scales: [1, 2, 3, 5, 7]}}
optim: {{steps: 2}}
"""


def load(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return load_job(path)


def test_every_path_of_a_pipeline_is_found_with_its_field(tmp_path):
    job = load(tmp_path, f"""
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
    """)
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
    on_s3 = load(tmp_path, "kind: train\nname: t\nstorage: {path: s3://bucket/ws}\n" + TRAIN)
    assert unseen_paths(on_s3, []) == []
    local = load(tmp_path, "kind: train\nname: t\n" + TRAIN)  # storage.path defaults to ./workspace
    (problem,) = unseen_paths(local, [])
    assert problem.startswith(f"storage.path: {local.storage.path} is a path on this machine")
    monkeypatch.setenv("SAR_SHARED_PATHS", f"/elsewhere:{local.storage.path}")
    from sar_platform.driver.submit import shared_paths

    assert unseen_paths(local, shared_paths(None)) == []
