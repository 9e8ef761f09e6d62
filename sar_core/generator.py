"""The FlexVAR/VAR scale-wise autoregressive transformer.

Sequence layout for a schedule (h_1..h_N): the first h_1^2 positions hold the class token (start of
generation); the h_{i+1}^2 positions of scale i+1 hold the up-sampled code vectors of scale i's
tokens. Every position predicts the token at its own place in scale i, so one parallel pass over
the whole sequence gives the logits of all scales (teacher forcing when the inputs come from ground
truth, student forcing when they come from the model's own samples). Attention is block-causal:
a token of scale k sees every token of scales <= k.

Architecture facts follow the reference repositories: width 64*depth, heads = depth, AdaLN blocks
conditioned on the class embedding, L2-normalised q/k with a learned per-head scale, a null class
for classifier-free guidance, a learnable 2-D sinusoidal position map area-resized to each scale
(so any schedule works), and an AdaLN head over the codebook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sar_core.schedule import ScaleSchedule, ScheduleError
from sar_core.tokenizer import upsample_codes

GENERATOR_FAMILY_FIELDS = {"flexvar": ("pos_grid",), "var": ("scales", "phi_count", "phi_ratio")}
"""The config fields only one family's generator reads."""


@dataclass(frozen=True)
class GeneratorConfig:
    depth: int = 16
    width: int = 0  # 0: 64 * depth, the reference rule
    num_heads: int = 0  # 0: depth
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    vocab_size: int = 8912
    codebook_dim: int = 32
    pos_grid: int = 32  # side of the learnable position map; resized to every scale
    class_dropout: float = 0.1
    drop_path: float = -1.0  # < 0: 0.1 * depth / 24, the reference rule
    attn_l2_norm: bool = True
    norm_eps: float = 1e-6
    family: str = "flexvar"  # a key of sar_core.families.MODEL_FAMILIES
    scales: tuple[int, ...] = ()  # var: the fixed schedule its absolute positions are learned for
    phi_count: int = 4  # var: the tokenizer's phi convolutions (0: one per scale)
    phi_ratio: float = 0.5  # var: phi(h) = (1 - r) h + r conv(h)

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(self.scales))
        from sar_core.families import check_family  # the family table imports this module
        check_family(self)
        if self.depth < 1:
            raise ValueError(f"generator depth must be >= 1, got {self.depth}")
        if self.embed_dim % self.heads:
            raise ValueError(f"generator width {self.embed_dim} is not divisible by num_heads {self.heads}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")

    @property
    def embed_dim(self) -> int:
        return self.width or 64 * self.depth

    def unread_fields(self) -> dict[str, str]:
        """Field -> why this family's generator never reads it."""
        from sar_core.families import family_unread_fields
        return family_unread_fields(self, GENERATOR_FAMILY_FIELDS)

    @property
    def heads(self) -> int:
        return self.num_heads or self.depth

    @property
    def drop_path_rate(self) -> float:
        return self.drop_path if self.drop_path >= 0 else 0.1 * self.depth / 24

    @property
    def null_class(self) -> int:
        return self.num_classes


def unwrap(model: nn.Module) -> "ScaleGenerator":
    """The generator inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(model, "module", model)


class KVCache:
    """Keys and values of the scales generated so far, for one attention layer."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class SelfAttention(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        C, H = cfg.embed_dim, cfg.heads
        self.num_heads, self.head_dim = H, C // H
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))  # keys carry no bias
        self.proj = nn.Linear(C, C)
        self.l2_norm = cfg.attn_l2_norm
        if self.l2_norm:
            self.log_scale = nn.Parameter(torch.full((1, H, 1, 1), math.log(4.0)))
            self.softmax_scale = 1.0
        else:
            self.softmax_scale = 0.25 / math.sqrt(self.head_dim)

    def forward(self, x_BLC, attn_mask=None, cache: KVCache | None = None):
        B, L, C = x_BLC.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x_BLC, self.qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, c)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.log_scale.clamp(max=math.log(100.0)).exp()
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.extend(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.softmax_scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class MLP(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        hidden = round(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class AdaLNBlock(nn.Module):
    def __init__(self, cfg: GeneratorConfig, drop_path_p: float):
        super().__init__()
        C = cfg.embed_dim
        self.attn = SelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.norm = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.drop_path_p = drop_path_p

    def forward(self, x_BLC, cond_BD, attn_mask=None, cache=None):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_ln(cond_BD).unsqueeze(1).chunk(6, dim=-1)
        h = self.attn(self.norm(x_BLC) * (1 + scale1) + shift1, attn_mask, cache)
        x_BLC = x_BLC + drop_path(h * gamma1, self.drop_path_p, self.training)
        h = self.mlp(self.norm(x_BLC) * (1 + scale2) + shift2)
        return x_BLC + drop_path(h * gamma2, self.drop_path_p, self.training)


class AdaLNHead(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        C = cfg.embed_dim
        self.norm = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x_BLC, cond_BD):
        scale, shift = self.ada_ln(cond_BD).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(x_BLC) * (1 + scale) + shift


def sincos_2d(channels: int, size: int) -> torch.Tensor:
    """(1, C, size, size) 2-D sinusoidal map: half the channels encode rows, half columns."""
    if channels % 4:
        raise ValueError(f"position map needs a channel count divisible by 4, got {channels}")
    quarter = channels // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)
    angles = torch.arange(size, dtype=torch.float64)[:, None] * freqs[None]  # (size, C/4)
    enc = torch.cat([angles.sin(), angles.cos()], dim=1)  # (size, C/2)
    rows = enc[:, None, :].expand(size, size, -1)
    cols = enc[None, :, :].expand(size, size, -1)
    return torch.cat([rows, cols], dim=-1).permute(2, 0, 1).unsqueeze(0).float()


class UpsampledInputs:
    """Generation's next-scale inputs on FlexVAR's pathway: scale i's sampled map, up-sampled."""

    def __init__(self, model: "ScaleGenerator"):
        self.model = model

    def next(self, idx_Bl: torch.Tensor, si: int, schedule: ScaleSchedule) -> torch.Tensor:
        """Scale `si`'s sampled tokens (B, h^2) -> the input of scale si + 1, (B, h_{si+1}^2, Cvae)."""
        return self.model.upsample_tokens(idx_Bl, schedule[si + 1])


class ScaleGenerator(nn.Module):
    """The FlexVAR family's generator; `sar_core.var_generator.VarGenerator` overrides what VAR does
    differently (positions, and how token maps become the next scale's input)."""

    kind = "generator"
    family = "flexvar"

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        C = config.embed_dim
        self.token_embed = nn.Linear(config.codebook_dim, C)
        self.class_embed = nn.Embedding(config.num_classes + 1, C)  # last row: the null class
        self.start_pos = nn.Parameter(torch.zeros(1, 1, C))
        self.init_positions(config)
        n = config.depth
        rates = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # linear ramp
        self.blocks = nn.ModuleList(AdaLNBlock(config, p) for p in rates)
        self.head_norm = AdaLNHead(config)
        self.head = nn.Linear(C, config.vocab_size)
        # The tokenizer's unit-norm codebook, frozen: inputs are built from token indices with it,
        # and a checkpoint carries it so that a generator is never paired with the wrong tokenizer.
        self.register_buffer("codebook", torch.zeros(config.vocab_size, config.codebook_dim))
        self.reset_parameters()

    def reset_parameters(self, init_adaln: float = 0.5, init_gamma: float = 1e-5, init_head: float = 0.02):
        """The reference initialisation: small truncated normals, near-identity residual branches."""
        std = math.sqrt(1 / self.config.embed_dim / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.start_pos, std=std)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_norm.ada_ln[-1].weight.mul_(init_adaln)
            C, depth = self.config.embed_dim, self.config.depth
            for block in self.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * depth))
                block.mlp.fc2.weight.div_(math.sqrt(2 * depth))
                block.ada_ln[-1].weight[2 * C:].mul_(init_adaln)  # scales and shifts
                block.ada_ln[-1].weight[: 2 * C].mul_(init_gamma)  # residual gates

    def init_positions(self, config: GeneratorConfig) -> None:
        self.pos_grid = nn.Parameter(sincos_2d(config.embed_dim, config.pos_grid))

    def attach_tokenizer(self, tokenizer: nn.Module) -> "ScaleGenerator":
        """Copy what the inputs are built with from `tokenizer` (here its codebook)."""
        return self.set_codebook(tokenizer.codebook.weight.detach().cpu())

    def matches_tokenizer(self, tokenizer: nn.Module) -> bool:
        """Whether this generator's frozen input buffers are `tokenizer`'s."""
        codes = tokenizer.normalized_codebook().to(self.codebook.device)
        return self.codebook.shape == codes.shape and torch.allclose(self.codebook, codes, atol=1e-5)

    @classmethod
    def training_schedule_problem(cls, config: GeneratorConfig, scales: tuple[int, ...], random: bool) -> str | None:
        """Why a spec cannot train a `config` generator on `scales` (randomly drawn per step when
        `random`), before anything runs (None: it can). FlexVAR trains on any schedule."""
        return None

    def schedule_problem(self, schedule: ScaleSchedule) -> str | None:
        """Why this generator cannot run `schedule` (None: it can). FlexVAR's positions serve any schedule."""
        return None

    def set_codebook(self, codes_VC: torch.Tensor) -> "ScaleGenerator":
        if codes_VC.shape != self.codebook.shape:
            raise ValueError(f"codebook of shape {tuple(codes_VC.shape)} does not fit generator {tuple(self.codebook.shape)}")
        self.codebook.copy_(F.normalize(codes_VC.detach().float(), dim=-1))
        return self

    # -- inputs ---------------------------------------------------------------------------------
    def check_labels(self, label_B: torch.Tensor) -> None:
        if label_B.dtype not in (torch.int64, torch.int32) or label_B.ndim != 1:
            raise ValueError(f"labels must be a 1-D integer tensor, got {label_B.dtype} {tuple(label_B.shape)}")
        lo, hi = int(label_B.min()), int(label_B.max())
        if lo < 0 or hi > self.config.null_class:
            raise ValueError(
                f"class label out of range: got labels in [{lo}, {hi}], the model has {self.config.num_classes} "
                f"classes (0..{self.config.num_classes - 1}) plus the null class {self.config.null_class}"
            )

    def drop_labels(self, label_B: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class dropout for CFG training: replace labels by the null class with p = class_dropout."""
        p = self.config.class_dropout
        if p == 0.0:
            return label_B
        drop = torch.rand(label_B.shape, generator=generator, device=label_B.device) < p
        return torch.where(drop, torch.full_like(label_B, self.config.null_class), label_B)

    def position_embedding(self, schedule: ScaleSchedule) -> torch.Tensor:
        """(1, L, C): the position map area-resized to every scale of the schedule."""
        maps = [F.interpolate(self.pos_grid, size=(s, s), mode="area").flatten(2) for s in schedule]
        return torch.cat(maps, dim=2).transpose(1, 2)

    def upsample_tokens(self, idx_Bl: torch.Tensor, size: int) -> torch.Tensor:
        """A square token map (B, h*h) or (B, h, h) -> up-sampled code vectors (B, size^2, Cvae)."""
        h = math.isqrt(idx_Bl[0].numel())
        return upsample_codes(self.codebook, idx_Bl.reshape(-1, h, h), size)

    def scale_inputs(self, idx_BL: torch.Tensor, schedule: ScaleSchedule) -> torch.Tensor:
        """(B, L) tokens of all scales -> (B, L - h_1^2, Cvae): scale i's tokens feed scale i+1."""
        return self.inputs_from_maps(schedule.split(idx_BL), schedule)

    def inputs_from_maps(self, maps, schedule: ScaleSchedule) -> torch.Tensor:
        """Token maps (B, h_i^2) of scales 1..N-1 (more are ignored) -> inputs (B, L - h_1^2, Cvae) of
        scales 2..N. FlexVAR: map i, up-sampled, feeds scale i+1."""
        if len(schedule) == 1:
            return self.codebook.new_zeros(maps[0].shape[0], 0, self.config.codebook_dim)
        return torch.cat([self.upsample_tokens(m, s) for m, s in zip(maps[: len(schedule) - 1], schedule.scales[1:])], dim=1)

    def staggered_inputs(self, ground_truth, drawn, schedule: ScaleSchedule, context: str) -> torch.Tensor:
        """The Stagger-Scale Rollout's student inputs: scale i+1 fed from the map drawn at scale i.
        On FlexVAR's pathway scale i+1 reads map i alone, so the ground truth below never enters
        (and `context` has nothing to choose)."""
        return self.inputs_from_maps(drawn, schedule)

    def input_stream(self, batch_size: int) -> UpsampledInputs:
        """Generation's next-scale inputs, one sampled scale at a time."""
        return UpsampledInputs(self)

    def start_tokens(self, cond_BD: torch.Tensor, schedule: ScaleSchedule, pos_1LC: torch.Tensor) -> torch.Tensor:
        n = schedule.token_counts[0]
        return cond_BD[:, None, :] + self.start_pos + pos_1LC[:, :n]

    # -- forward --------------------------------------------------------------------------------
    def trunk(self, x_BLC, cond_BD, attn_mask=None, caches: list[KVCache] | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x_BLC = block(x_BLC, cond_BD, attn_mask, None if caches is None else caches[i])
        return self.head(self.head_norm(x_BLC, cond_BD))

    def forward(self, label_B: torch.Tensor, x_BlCv: torch.Tensor, schedule: ScaleSchedule) -> torch.Tensor:
        """Labels + next-scale inputs (B, L - h_1^2, Cvae) -> logits (B, L, V) for every scale."""
        if (problem := self.schedule_problem(schedule)) is not None:
            raise ScheduleError(problem)
        expected = schedule.num_tokens - schedule.token_counts[0]
        if x_BlCv.shape[1:] != (expected, self.config.codebook_dim):
            raise ScheduleError(
                f"inputs of shape {tuple(x_BlCv.shape)} do not fit schedule {schedule}: expected (B, {expected}, "
                f"{self.config.codebook_dim})"
            )
        cond_BD = self.class_embed(label_B)
        pos_1LC = self.position_embedding(schedule)
        x_BLC = torch.cat([self.start_tokens(cond_BD, schedule, pos_1LC), self.token_embed(x_BlCv) + pos_1LC[:, schedule.token_counts[0]:]], dim=1)
        return self.trunk(x_BLC, cond_BD, schedule.block_causal_mask(x_BLC.device))

    def forward_tokens(self, label_B: torch.Tensor, idx_BL: torch.Tensor, schedule: ScaleSchedule) -> torch.Tensor:
        """One parallel pass from token maps (B, L): teacher forcing on ground truth, student
        forcing on the model's own samples. The last scale's tokens are targets only."""
        return self(label_B, self.scale_inputs(idx_BL, schedule), schedule)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
