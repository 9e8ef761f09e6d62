"""Real components for platform tests: one MLflow tracking server subprocess on a free loopback port,
a small tokenizer trained on real Fashion-MNIST (the local Ray, `ray_local`, is in tests/conftest.py)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from sar_core import MultiScaleVQ, save_model
from sar_core.data.fashion_mnist import load_tensors
from sar_platform.services.mlflow_server import ensure_server, stop_server
from tests.conftest import REPO, TINY_TOKENIZER


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    info = ensure_server(root, port=0)
    assert info.uri.startswith("http://127.0.0.1:")
    yield info.uri
    stop_server(root)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    """A tokenizer trained briefly on real Fashion-MNIST (in-process: its quality is not under test)."""
    torch.manual_seed(0)
    images, _ = load_tensors("train", limit=1024)
    tok = MultiScaleVQ(TINY_TOKENIZER)
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    for i in range(30):
        _, loss, _ = tok(images[torch.randint(0, len(images), (32,), generator=torch.Generator().manual_seed(i))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model(tok, tmp_path_factory.mktemp("tokenizer") / "tokenizer.safetensors")


GENERATOR_MODEL = "{depth: 2, width: 64, num_heads: 2, num_classes: 10, vocab_size: 64, codebook_dim: 8, pos_grid: 8}"


def eval_spec(num_samples: int = 100) -> str:
    """The tests' evaluation section (flow-style YAML): unguided, nucleus sampling, a small sample."""
    return f"{{sampling: {{cfg: 1.0, top_k: 0, top_p: 0.95}}, metrics: {{num_samples: {num_samples}, batch_size: 50, is_splits: 2}}}}"


EVAL = eval_spec()


def spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def experiment_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


__all__ = ["EVAL", "GENERATOR_MODEL", "eval_spec", "REPO", "experiment_runs", "spec"]
