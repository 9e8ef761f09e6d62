"""Token sampling from logits: temperature, top-k, top-p, and classifier-free guidance.

Guidance follows the VAR/FlexVAR convention: `cfg` is the weight w in
    logits = (1 + w) * cond - w * uncond,
so cfg = 0 is plain conditional sampling (a standard guidance scale of 1) and the reference repos'
and the paper's "CFG 2.5" is cfg = 2.5 here. The weight can ramp across the scales i = 0..N-1:
    constant     w_i = cfg
    linear       w_i = cfg * i / (N - 1)           the project's ramp: the first scale unguided, the
                                                   last at exactly cfg, whatever the number of scales
    flexvar      w_i = cfg * i / min(N - 1, 9)     FlexVAR's inference code: `linear` on schedules of
                                                   up to 10 scales; on longer ones (its 13-step
                                                   setting, 512 px) w keeps rising past cfg
                                                   (3.33 at the 13th scale for cfg 2.5)
    half_linear  w_i = cfg * (1 + i / (N - 1)) / 2 the released SAR code's training rollouts

`flexvar_max_size` adds FlexVAR's rules for scales its training never saw (its `max_pn`, 16 at
256 px): a scale larger than that, or whose size is not one of FLEXVAR_TRAINED_SIZES, is drawn
greedily (top-k 1), and a scale larger than that gets the full cfg (no ramp). Left at None, every
scale is drawn with top_k / top_p on the ramp.

`SAMPLING_PRESETS` names complete settings: `flexvar_eval` is FlexVAR's published evaluation,
`var_eval` VAR's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import torch

CfgRamp = Literal["constant", "linear", "flexvar", "half_linear"]

FLEXVAR_TRAINED_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 23, 24, 32)
"""The scale sizes FlexVAR's sampler draws with top-k / top-p; any other size it draws greedily."""

FLEXVAR_RAMP_STEPS = 9
"""FlexVAR's guidance ratio si / min(N - 1, 9): its ramp reaches cfg at the 10th scale."""


@dataclass(frozen=True)
class SamplingConfig:
    cfg: float = 2.5
    cfg_ramp: CfgRamp = "linear"
    top_k: int = 900
    top_p: float = 0.95
    temperature: float = 1.0
    flexvar_max_size: int | None = None

    def __post_init__(self):
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0 (0 disables guidance), got {self.cfg}")
        if self.cfg_ramp not in get_args(CfgRamp):
            raise ValueError(f"cfg_ramp must be one of {', '.join(get_args(CfgRamp))}, got {self.cfg_ramp!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 or 1 keeps every token), got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        size = self.flexvar_max_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"flexvar_max_size must be a scale size >= 1 (FlexVAR's max_pn, 16 at 256 px) "
                             f"or None, got {size!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SamplingConfig":
        return cls(**merge_sampling_preset(name, overrides))

    def unread_fields(self) -> dict[str, str]:
        """Field -> why sampling with these settings never reads it."""
        if self.cfg == 0:
            return {"cfg_ramp": "is only read when cfg > 0 (cfg 0 samples without guidance)"}
        return {}

    def summary(self) -> str:
        """The settings in one line, as figures and provenance records show them."""
        guidance = f"cfg {self.cfg:g} ({self.cfg_ramp} ramp)" if self.cfg > 0 else "no cfg"
        rules = f", FlexVAR size rules above {self.flexvar_max_size}" if self.flexvar_max_size is not None else ""
        return f"{guidance}, top-k {self.top_k}, top-p {self.top_p:g}, temperature {self.temperature:g}{rules}"

    def cfg_at(self, scale_index: int, num_scales: int, size: int | None = None) -> float:
        """Guidance weight of scale `scale_index` (0-based) of `num_scales`; `size` is its side length."""
        if self.cfg_ramp == "constant" or num_scales == 1 or self.above_trained_size(size):
            return self.cfg
        steps = min(num_scales - 1, FLEXVAR_RAMP_STEPS) if self.cfg_ramp == "flexvar" else num_scales - 1
        ratio = scale_index / steps
        if self.cfg_ramp == "half_linear":
            return self.cfg * 0.5 * (1.0 + ratio)
        return self.cfg * ratio

    def top_k_at(self, size: int) -> int:
        """The top-k a scale of this size is drawn with: 1 (greedy) where FlexVAR's rules say so."""
        if self.flexvar_max_size is not None and (self.above_trained_size(size) or size not in FLEXVAR_TRAINED_SIZES):
            return 1
        return self.top_k

    def above_trained_size(self, size: int | None) -> bool:
        return self.flexvar_max_size is not None and size is not None and size > self.flexvar_max_size


SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    # FlexVAR's published evaluation (its eval_c2i.py and scripts/evaluate_c2i.sh): cfg 2.5 on its
    # ramp, top-k 900, top-p 0.95, max_pn 16 (greedy and fully guided above 16x16 and off its sizes).
    "flexvar_eval": dict(cfg=2.5, cfg_ramp="flexvar", top_k=900, top_p=0.95, temperature=1.0, flexvar_max_size=16),
    # VAR's published FID evaluation (its README): autoregressive_infer_cfg with cfg 1.5 on the
    # linear ramp t = cfg * si / (N - 1), top-k 900, top-p 0.96, no smoothing.
    "var_eval": dict(cfg=1.5, cfg_ramp="linear", top_k=900, top_p=0.96, temperature=1.0),
}


def merge_sampling_preset(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The field values of sampling preset `name` with `overrides` on top: what `preset:` stands for."""
    if name not in SAMPLING_PRESETS:
        raise ValueError(f"unknown sampling preset {name!r}; presets: {', '.join(SAMPLING_PRESETS)}")
    known = {f.name for f in fields(SamplingConfig)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"unknown sampling field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
    return {**copy.deepcopy(SAMPLING_PRESETS[name]), **(overrides or {})}


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

    The distribution of `filter_logits` then softmax, drawn by inverting each position's CDF with
    one uniform. With top-k it is computed on the k survivors of a top-k selection, which come
    sorted, so the top-p nucleus is a prefix. With top-p alone no position is sorted unless it has
    to be: a draw from the whole vocabulary is kept when the tokens more likely than it hold less
    than top_p of the mass (it lies in the nucleus, so kept draws follow the nucleus distribution);
    the positions whose draw fell outside (probability 1 - nucleus mass <= 1 - top_p) are drawn
    again from their sorted nucleus, so every position follows it exactly.
    """
    V = logits_BlV.shape[-1]
    logits = logits_BlV.float()
    if temperature != 1.0:  # x / 1 is x: no pass over the logits for the common case
        logits = logits / temperature
    top_p = top_p if 0.0 < top_p < 1.0 else 0.0
    if 0 < top_k < V:
        logits, order = logits.topk(top_k, dim=-1)  # sorted, descending
        return order.gather(-1, sorted_draw(logits, top_p, generator)[..., None])[..., 0]
    probs = logits.softmax(dim=-1)
    choice = inverse_cdf_draw(probs, generator)
    if not top_p:
        return choice
    likelier = probs.gt(probs.gather(-1, choice[..., None]))
    outside = probs.mul_(likelier).sum(-1) >= top_p
    if outside.any():
        rows = outside.nonzero(as_tuple=True)
        sorted_logits, order = logits[rows].sort(dim=-1, descending=True)
        choice[rows] = order.gather(-1, sorted_draw(sorted_logits, top_p, generator)[..., None])[..., 0]
    return choice


def sorted_draw(sorted_logits: torch.Tensor, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Draw from logits sorted in descending order, cut to the top-p nucleus (0: no cut) -> positions."""
    probs = sorted_logits.softmax(dim=-1)
    if top_p:  # drop a token once the mass before it reaches top_p
        probs.masked_fill_(probs.cumsum(dim=-1).sub_(probs) >= top_p, 0.0)
    return inverse_cdf_draw(probs, generator)


def inverse_cdf_draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of unnormalised probabilities: the first whose cumulative mass exceeds a
    uniform draw times the total (float64 sums: a token's share is exact to ~1e-16)."""
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device, dtype=torch.float64)
    return torch.searchsorted(cdf, u.mul_(cdf[..., -1:]), right=True)[..., 0].clamp_(max=probs.shape[-1] - 1)
