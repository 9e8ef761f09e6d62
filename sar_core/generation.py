"""Scale-by-scale generation with a KV cache, classifier-free guidance and top-k / top-p sampling."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sar_core.generator import KVCache, ScaleGenerator
from sar_core.schedule import ScaleSchedule, ScheduleError
from sar_core.token_sampling import SamplingConfig, guided_logits, sample_tokens
from sar_core.tokenizer import MultiScaleVQ


@dataclass
class Generation:
    labels: torch.Tensor  # (B,)
    token_maps: list[torch.Tensor]  # per scale (B, h, h)
    images: torch.Tensor | None = None  # (B, C, H, W) in [-1, 1], decoded from the last scale
    scale_images: list[torch.Tensor] | None = None  # every scale decoded and resized to (H, W)
    logits: list[torch.Tensor] | None = field(default=None, repr=False)  # per scale (B, h*h, V), guided


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    was = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


def fit_size(img: torch.Tensor, size: int) -> torch.Tensor:
    if img.shape[-1] != size:
        img = F.interpolate(img, size=(size, size), mode="bicubic", align_corners=False)
    return img.clamp(-1, 1)


def decode_scales(tokenizer: MultiScaleVQ, token_maps: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """The image after every scale (the tokenizer's `decode_trajectory`), resized to size x size
    (trajectory figures)."""
    return [fit_size(img, size) for img in tokenizer.decode_trajectory(token_maps)]


def decode_prefix(tokenizer: MultiScaleVQ, token_maps: Sequence[torch.Tensor], n: int, size: int) -> torch.Tensor:
    """The image a generation shows after its first n scales, resized to size x size."""
    return fit_size(tokenizer.decode_maps(token_maps[:n]), size)


@torch.no_grad()
def generate(
    model: ScaleGenerator,
    tokenizer: MultiScaleVQ | None,
    label_B: torch.Tensor,
    schedule: ScaleSchedule,
    sampling: SamplingConfig = SamplingConfig(),
    rng: torch.Generator | None = None,
    prefix: Sequence[torch.Tensor] = (),
    decode_intermediates: bool = False,
    return_logits: bool = False,
) -> Generation:
    """Generate token maps for `schedule`, one scale per transformer pass over the new tokens only.

    `prefix` forces the token maps of the first len(prefix) scales (e.g. a ground-truth 4x4 start,
    as in the paper's Fig. 7); the logits of those scales are still computed and returned. Each
    scale's guidance weight and top-k come from `sampling` (its ramp, and FlexVAR's rules for
    untrained sizes when `flexvar_max_size` is set).
    With a tokenizer the last map is decoded to images (and every map, if `decode_intermediates`).
    """
    model.check_labels(label_B)
    if (problem := model.schedule_problem(schedule)) is not None:
        raise ScheduleError(problem)
    if tokenizer is not None:
        schedule.check_latent(tokenizer.config.latent_size)
    if len(prefix) > len(schedule):
        raise ValueError(f"prefix has {len(prefix)} token maps, the schedule only {len(schedule)} scales")
    B, N = label_B.shape[0], len(schedule)
    guided = sampling.cfg > 0
    labels = torch.cat([label_B, torch.full_like(label_B, model.config.null_class)]) if guided else label_B

    with eval_mode(model, *([tokenizer] if tokenizer is not None else [])):
        cond_BD = model.class_embed(labels)
        pos_1LC = model.position_embedding(schedule)
        stream = model.input_stream(B)
        caches = [KVCache() for _ in model.blocks]
        x_BlC = model.start_tokens(cond_BD, schedule, pos_1LC)
        maps, all_logits = [], []
        for si, size in enumerate(schedule):
            logits_BlV = model.trunk(x_BlC, cond_BD, caches=caches)
            if guided:
                logits_BlV = guided_logits(logits_BlV[:B], logits_BlV[B:], sampling.cfg_at(si, N, size))
            if return_logits:
                all_logits.append(logits_BlV.float())
            if si < len(prefix):
                idx_Bl = prefix[si].reshape(B, size * size).to(logits_BlV.device)
            else:
                idx_Bl = sample_tokens(logits_BlV, sampling.top_k_at(size), sampling.top_p, sampling.temperature, rng)
            maps.append(idx_Bl.reshape(B, size, size))
            if si + 1 < N:
                x_BlC = model.token_embed(stream.next(idx_Bl, si, schedule)) + pos_1LC[:, schedule.slices[si + 1]]
                if guided:
                    x_BlC = torch.cat([x_BlC, x_BlC])

        out = Generation(labels=label_B, token_maps=maps, logits=all_logits if return_logits else None)
        if tokenizer is not None:
            out.images = tokenizer.decode_maps(maps).clamp(-1, 1)
            if decode_intermediates:
                out.scale_images = decode_scales(tokenizer, maps, out.images.shape[-1])
    return out
