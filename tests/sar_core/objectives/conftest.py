"""Fixtures for the objective tests: a recording DDP stand-in, small batches, and a TF-pretrained
tiny generator on real Fashion-MNIST tokens (built once per session)."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sar_core import GeneratorConfig, MultiScaleVQ, ScaleGenerator, ScaleSchedule, TokenizerConfig
from sar_core.objectives import ObjectiveConfig, TokenBatch, build_objective


@contextlib.contextmanager
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU every op of a 2-thread
    pool waits for a descheduled worker: a scheduler slice per op, 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@dataclass
class Call:
    label: torch.Tensor
    x: torch.Tensor
    schedule: ScaleSchedule
    logits: torch.Tensor


class Recorder(nn.Module):
    """Stands in for DistributedDataParallel (the generator is `.module`) and records every forward."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.calls: list[Call] = []

    def forward(self, label_B, x_BlCv, schedule):
        logits = self.module(label_B, x_BlCv, schedule)
        if logits.requires_grad:
            logits.retain_grad()
        self.calls.append(Call(label_B, x_BlCv, schedule, logits))
        return logits


def hand_upsample(codebook_VC: torch.Tensor, idx_Bl: torch.Tensor, size: int) -> torch.Tensor:
    """Token map (B, h*h) -> its code vectors bicubic-resized to (B, size*size, C), written out by hand."""
    B, h = idx_Bl.shape[0], int(idx_Bl.shape[1] ** 0.5)
    emb = codebook_VC[idx_Bl].reshape(B, h, h, -1).permute(0, 3, 1, 2)
    return F.interpolate(emb, size=(size, size), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)


def hand_inputs(codebook_VC, maps, schedule) -> torch.Tensor:
    """Generator inputs of scales 2..N from per-scale token maps, built by hand."""
    return torch.cat([hand_upsample(codebook_VC, m, s) for m, s in zip(maps, schedule.scales[1:])], dim=1)


def make_batch(schedule: ScaleSchedule, B: int = 6, V: int = 64, seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (B,), generator=g)
    return TokenBatch(labels, torch.randint(0, V, (B, schedule.num_tokens), generator=g), schedule)


@pytest.fixture
def batch(schedule) -> TokenBatch:
    return make_batch(schedule)


@pytest.fixture
def confident_model(generator_model):
    """The fixture generator with a 100x head and a 10x class embedding: like a trained model its
    predictions are peaked (top token ~0.3) and depend on the class, so sampling settings bite."""
    with torch.no_grad():
        generator_model.head.weight.mul_(100.0)
        generator_model.class_embed.weight.mul_(10.0)
    return generator_model


@pytest.fixture
def recorder(generator_model) -> Recorder:
    return Recorder(generator_model)


# -- Fashion-MNIST: real tokens and a teacher-forcing-pretrained generator --------------------------

GAP_SCHEDULE = ScaleSchedule((1, 2, 3, 5, 7))
GAP_TOKENIZER = TokenizerConfig(image_size=28, in_channels=1, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                                z_channels=16, codebook_size=64, codebook_dim=8, norm_groups=4, attention=False)
GAP_GENERATOR = GeneratorConfig(depth=2, width=64, num_heads=2, num_classes=10, vocab_size=64, codebook_dim=8, pos_grid=8)


@dataclass
class PretrainedSetup:
    config: GeneratorConfig
    state: dict  # generator weights after teacher-forcing pretraining
    train: tuple[torch.Tensor, torch.Tensor]  # (labels, tokens)
    test: TokenBatch

    def generator(self) -> ScaleGenerator:
        model = ScaleGenerator(self.config)
        model.load_state_dict(copy.deepcopy(self.state))
        return model


@torch.no_grad()
def fit_codebook(tokenizer: MultiScaleVQ, images: torch.Tensor, schedule: ScaleSchedule, iters: int = 10) -> None:
    """Train the tokenizer's quantiser: spherical k-means of the per-scale latents of real images.

    The encoder keeps its (seeded) random initialisation, a random-feature encoder: the tests need
    real, structured token maps, not reconstructions, and gradient training of even a tiny VQ-VAE
    costs minutes on a shared 2-core CPU.
    """
    f = tokenizer.encode_latent(images)
    z = torch.cat([F.normalize(F.interpolate(f, size=(s, s), mode="area"), dim=1).permute(0, 2, 3, 1).flatten(0, 2)
                   for s in schedule])
    g = torch.Generator().manual_seed(0)
    z = z[torch.randperm(len(z), generator=g)[:20000]]
    V = tokenizer.config.codebook_size
    codes = z[:V].clone()
    for _ in range(iters):
        assign = (z @ codes.T).argmax(1)
        sums = torch.zeros_like(codes).index_add_(0, assign, z)
        empty = torch.bincount(assign, minlength=V) == 0
        sums[empty] = z[torch.randint(0, len(z), (int(empty.sum()),), generator=g)]
        codes = F.normalize(sums, dim=1)
    tokenizer.codebook.weight.copy_(codes)


def train_steps(model, objective, labels, tokens, schedule, steps: int, lr: float, batch_size: int, seed: int):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        i = torch.randint(0, len(labels), (batch_size,), generator=rng)
        out = objective(model, TokenBatch(labels[i], tokens[i], schedule), step, rng)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    return out


@pytest.fixture(scope="session")
def pretrained_setup(fmnist_small) -> PretrainedSetup:
    """A tiny tokenizer fitted on 2,048 real images, and a generator teacher-forced on their tokens."""
    with single_thread():
        return build_pretrained_setup(fmnist_small)


def build_pretrained_setup(fmnist_small) -> PretrainedSetup:
    (train_x, train_y), (test_x, test_y) = fmnist_small
    torch.manual_seed(0)
    tokenizer = MultiScaleVQ(GAP_TOKENIZER).eval()
    fit_codebook(tokenizer, train_x, GAP_SCHEDULE)
    with torch.no_grad():
        train_tokens = tokenizer.tokenize_flat(train_x, GAP_SCHEDULE)
        test_tokens = tokenizer.tokenize_flat(test_x[:256], GAP_SCHEDULE)
    torch.manual_seed(0)
    model = ScaleGenerator(GAP_GENERATOR).set_codebook(tokenizer.codebook.weight)
    train_steps(model, build_objective(ObjectiveConfig()), train_y, train_tokens, GAP_SCHEDULE,
                steps=60, lr=3e-3, batch_size=32, seed=0)
    return PretrainedSetup(GAP_GENERATOR, copy.deepcopy(model.state_dict()), (train_y, train_tokens),
                           TokenBatch(test_y[:256], test_tokens, GAP_SCHEDULE))
