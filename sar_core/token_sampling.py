"""Token sampling from logits: temperature, top-k, top-p, and classifier-free guidance.

Guidance follows the VAR/FlexVAR convention: `cfg` is the weight w in
    logits = (1 + w) * cond - w * uncond,
so cfg = 0 is plain conditional sampling (a standard guidance scale of 1) and the reference repos'
and the paper's "CFG 2.5" is cfg = 2.5 here. The weight can ramp across scales:
    constant     w_i = cfg
    linear       w_i = cfg * i / (N - 1)          (VAR / FlexVAR inference: the first scale unguided)
    half_linear  w_i = cfg * (1 + i / (N - 1)) / 2 (the released SAR code's training rollouts)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

CfgRamp = Literal["constant", "linear", "half_linear"]


@dataclass(frozen=True)
class SamplingConfig:
    cfg: float = 2.5
    cfg_ramp: CfgRamp = "linear"
    top_k: int = 900
    top_p: float = 0.96
    temperature: float = 1.0

    def __post_init__(self):
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0 (0 disables guidance), got {self.cfg}")
        if self.cfg_ramp not in ("constant", "linear", "half_linear"):
            raise ValueError(f"cfg_ramp must be constant, linear or half_linear, got {self.cfg_ramp!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 or 1 keeps every token), got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def unread_fields(self) -> dict[str, str]:
        """Field -> why sampling with these settings never reads it."""
        if self.cfg == 0:
            return {"cfg_ramp": "is only read when cfg > 0 (cfg 0 samples without guidance)"}
        return {}

    def summary(self) -> str:
        """The settings in one line, as figures and provenance records show them."""
        guidance = f"cfg {self.cfg:g} ({self.cfg_ramp} ramp)" if self.cfg > 0 else "no cfg"
        return f"{guidance}, top-k {self.top_k}, top-p {self.top_p:g}, temperature {self.temperature:g}"

    def cfg_at(self, scale_index: int, num_scales: int) -> float:
        ratio = scale_index / (num_scales - 1) if num_scales > 1 else 1.0
        if self.cfg_ramp == "linear":
            return self.cfg * ratio
        if self.cfg_ramp == "half_linear":
            return self.cfg * 0.5 * (1.0 + ratio)
        return self.cfg


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    return cond + cfg * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set to -inf every token outside the top-k and outside the smallest top-p nucleus.

    The most likely token always survives. top_k = 0 or >= V, and top_p = 0 or 1, disable a filter.
    """
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the mass before it already reaches top_p
        remove_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_tokens(
    logits_BlV: torch.Tensor,
    top_k: int = 0,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per position: (B, l, V) logits -> (B, l) indices.

    The same distribution as `filter_logits` then softmax, computed on the k survivors only (a
    top-k selection instead of a full-vocabulary sort), and drawn as argmax(p / Exp(1)) noise, an
    exact categorical draw that needs no cumulative sums over the vocabulary.
    """
    V = logits_BlV.shape[-1]
    logits = logits_BlV.float() / temperature
    use_p = 0.0 < top_p < 1.0
    if 0 < top_k < V:
        logits, order = logits.topk(top_k, dim=-1)  # sorted, descending
    elif use_p:
        logits, order = logits.sort(dim=-1, descending=True)
    else:
        order = None
    probs = logits.softmax(dim=-1)
    if use_p:  # logits are sorted: drop a token once the mass before it reaches top_p
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
    noise = torch.empty_like(probs).exponential_(generator=generator)
    choice = (probs / noise).argmax(dim=-1)
    return choice if order is None else order.gather(-1, choice[..., None])[..., 0]
