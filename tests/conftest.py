"""Shared fixtures: tiny model configs (CPU, seconds), real Fashion-MNIST, a tokenizer trained on it,
the local Ray and an S3 server (their helpers: tests/support)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sar_core import GeneratorConfig, MultiScaleVQ, ScaleGenerator, ScaleSchedule, TokenizerConfig, save_model
from tests.support.holds import Holds, session_holds

REPO = Path(__file__).resolve().parents[1]

# Ray 2.60 turns on token auth for clusters it starts; the tests only talk to their own loopback
# clusters, so they switch it off rather than juggle token files.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# One data cache for the whole session (real reference features; never the user's ~/.cache):
# kept between local runs, fresh in CI. Set before anything reads it, Ray workers included.
os.environ.setdefault("SAR_DATA_CACHE", str(REPO / ".pytest_cache" / "d" / "sar-data-cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
SESSION_HOLDS = session_holds()  # before any Ray starts: its workers inherit the hold folder

TINY_TOKENIZER = TokenizerConfig(
    image_size=28, in_channels=1, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
    z_channels=32, codebook_size=64, codebook_dim=8, norm_groups=8, attention=False,
)
TINY_SCHEDULE = ScaleSchedule((1, 2, 3, 5, 7))
TINY_GENERATOR = GeneratorConfig(
    depth=2, width=64, num_heads=2, num_classes=10, vocab_size=64, codebook_dim=8, pos_grid=8,
)


@pytest.fixture
def tokenizer() -> MultiScaleVQ:
    torch.manual_seed(0)
    return MultiScaleVQ(TINY_TOKENIZER).eval()


@pytest.fixture
def generator_model(tokenizer) -> ScaleGenerator:
    torch.manual_seed(1)
    model = ScaleGenerator(TINY_GENERATOR).set_codebook(tokenizer.codebook.weight)
    # The reference init gates every residual branch at 1e-5, which makes an untrained model's
    # logits nearly input-independent; open the gates so tests can see how inputs propagate.
    with torch.no_grad():
        for block in model.blocks:
            block.ada_ln[-1].bias[: 2 * model.config.embed_dim].fill_(1.0)
    return model.eval()


@pytest.fixture
def schedule() -> ScaleSchedule:
    return TINY_SCHEDULE


@pytest.fixture(scope="session")
def fmnist_small():
    """2,048 real training images and 512 test images, in [-1, 1]."""
    from sar_core.data.fashion_mnist import load_tensors

    return load_tensors("train", limit=2048), load_tensors("test", limit=512)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    """A tokenizer trained briefly on real Fashion-MNIST (in-process: its quality is not under test)."""
    from sar_core.data.fashion_mnist import load_tensors

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


@pytest.fixture
def holds() -> Holds:
    """Hold points every process of this session (Ray workers included) stops at when armed."""
    return SESSION_HOLDS


@pytest.fixture(scope="session")
def ray_local():
    """The embedded cluster `sar run` would start (2 CPUs, loopback, the repository as working_dir),
    started once for the whole session: Ray allows one per process."""
    from sar_platform.driver import embedded_ray
    from sar_platform.services.ray_env import repository_runtime_env

    reaper = embedded_ray.start(2, repository_runtime_env(REPO), configure_logging=False)
    yield
    embedded_ray.stop(reaper)


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback, for the tests of one module."""
    from tests.support.servers import s3_server

    with s3_server() as endpoint:
        yield endpoint
