"""The VAR family (FoundationVision/VAR): residual multi-scale quantisation and a generator whose
next-scale input is the accumulated f-hat.

Tokenizer: the encoder's latent f (B, Cvae, n, n) is quantised at a fixed schedule h_1..h_N, coarse
to fine, one residual at a time: area-resize the remaining residual to h_i, take the nearest code
(plain L2, the codebook is not normalised), embed and bicubic-resize the map to n x n (the last scale
is already n x n), blend it with a 3x3 convolution phi, add it to f-hat and subtract it from the
residual. `phi_count` convolutions are shared over the scales: scale i uses the one whose tick
(evenly spaced in [0, 1]) lies nearest to i / (N - 1). The decoder decodes f-hat, so an image needs
every scale's map.

Generator: FlexVAR's trunk (the same AdaLN blocks and head) with learned absolute positions for the
fixed schedule plus a level embedding per scale. Scale k+1's input is f-hat after scales 1..k,
area-resized to h_{k+1} (the generator holds the tokenizer's codebook and phi convolutions as frozen
buffers to build it), so the input depends on every earlier map, not only on map k.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from sar_core.generator import GeneratorConfig, ScaleGenerator
from sar_core.schedule import ScaleSchedule, ScheduleError
from sar_core.tokenizer import MultiScaleVQ, Quantized, TokenizerConfig


def phi_ticks(count: int) -> torch.Tensor:
    """Where the shared phi convolutions sit on [0, 1]: the reference's spacing (thirds for 4, halves else)."""
    edge = 1 / 3 / count if count == 4 else 1 / 2 / count
    return torch.linspace(edge, 1 - edge, count, dtype=torch.float64)


def phi_index(scale_index: int, num_scales: int, count: int) -> int:
    """The phi convolution scale `scale_index` of `num_scales` uses: the nearest tick to i / (N - 1)."""
    at = scale_index / (num_scales - 1) if num_scales > 1 else 0.0
    return int((phi_ticks(count) - at).abs().argmin())


def phi_blend(h_BChw: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, ratio: float) -> torch.Tensor:
    """phi(h) = (1 - r) h + r conv3x3(h); r = 0 leaves h as it is."""
    if ratio == 0:
        return h_BChw
    return h_BChw * (1 - ratio) + F.conv2d(h_BChw, weight, bias, padding=1) * ratio


class ResidualAccumulator:
    """f-hat of a residual schedule, scale by scale: codes, phi convolutions and the schedule they use."""

    def __init__(self, codes_VC: torch.Tensor, phi_weight: torch.Tensor, phi_bias: torch.Tensor, ratio: float,
                 scales: tuple[int, ...]):
        self.codes, self.phi_weight, self.phi_bias, self.ratio, self.scales = codes_VC, phi_weight, phi_bias, ratio, scales

    def contribution(self, idx_Bl: torch.Tensor, si: int) -> torch.Tensor:
        """Scale si's map (B, h*h) or (B, h, h) -> its term of f-hat, (B, Cvae, n, n)."""
        h, n = self.scales[si], self.scales[-1]
        emb = rearrange(self.codes[idx_Bl.reshape(-1, h, h)], "b h w c -> b c h w")
        if h != n:
            emb = F.interpolate(emb, size=(n, n), mode="bicubic", align_corners=False)
        k = phi_index(si, len(self.scales), self.phi_weight.shape[0])
        return phi_blend(emb, self.phi_weight[k], self.phi_bias[k], self.ratio)

    def next_input(self, f_hat: torch.Tensor, si: int) -> torch.Tensor:
        """f-hat after scale si, area-resized to scale si+1 -> (B, h_{si+1}^2, Cvae)."""
        s = self.scales[si + 1]
        return rearrange(F.interpolate(f_hat, size=(s, s), mode="area"), "b c h w -> b (h w) c")


def check_residual_scales(scales: tuple[int, ...], what: str, latent: int | None = None) -> None:
    if not scales:
        raise ValueError(f"{what} scales: family var quantises at a fixed schedule; set scales (e.g. [1, 2, 3, 4, 5, 6, "
                         f"8, 10, 13, 16] at 256 px)")
    ScaleSchedule(scales)
    if latent is not None and scales[-1] != latent:
        raise ValueError(f"{what} scales {list(scales)} must end at the latent size {latent}")


class ResidualVQ(MultiScaleVQ):
    """VAR's VQ-VAE: the FlexVAR tokenizer's encoder and decoder around residual quantisation."""

    family = "var"
    proj_kernel = 3

    def __init__(self, config: TokenizerConfig):
        check_residual_scales(config.scales, "tokenizer", config.latent_size)
        if config.phi_count < 0:
            raise ValueError(f"tokenizer phi_count must be >= 0 (0: one per scale), got {config.phi_count}")
        super().__init__(config)
        C, K = config.codebook_dim, config.phi_count or len(config.scales)
        self.phi = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1) for _ in range(K))

    # -- quantisation ---------------------------------------------------------------------------
    def phi_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, C, C, 3, 3) weights and (K, C) biases of the phi convolutions."""
        return torch.stack([p.weight for p in self.phi]), torch.stack([p.bias for p in self.phi])

    def accumulator(self) -> ResidualAccumulator:
        return ResidualAccumulator(self.codebook.weight, *self.phi_tensors(), self.config.phi_ratio, self.config.scales)

    def nearest_codes(self, z_BChw: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices of the L2-nearest code vectors."""
        z = rearrange(z_BChw, "b c h w -> b h w c")
        codes = self.codebook.weight
        dist = z.square().sum(-1, keepdim=True) + codes.square().sum(-1) - 2 * z @ codes.T
        return dist.argmin(-1)

    def residual_quantize(self, f_BChw: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """-> (token maps (B, h, h) per scale, f-hat after every scale); the codebook and phi get
        gradients through f-hat, the encoder does not."""
        acc, n = self.accumulator(), self.config.latent_size
        rest, f_hat = f_BChw.detach().clone(), torch.zeros_like(f_BChw)
        maps, f_hats = [], []
        for si, s in enumerate(self.config.scales):
            target = rest if s == n else F.interpolate(rest, size=(s, s), mode="area")
            idx = self.nearest_codes(target)
            h = acc.contribution(idx, si)
            f_hat = f_hat + h
            rest = rest - h.detach()
            maps.append(idx)
            f_hats.append(f_hat)
        return maps, f_hats

    def quantize(self, f_BChw: torch.Tensor) -> Quantized:
        """Residual quantisation with straight-through f-hat and VAR's losses averaged over the scales:
        codebook + phi pulled towards f, the encoder committed (beta) towards every partial f-hat."""
        maps, f_hats = self.residual_quantize(f_BChw)
        codebook_loss = sum(F.mse_loss(fh, f_BChw.detach()) for fh in f_hats) / len(f_hats)
        commit_loss = self.config.commit_beta * sum(F.mse_loss(fh.detach(), f_BChw) for fh in f_hats) / len(f_hats)
        z_q = f_BChw + (f_hats[-1] - f_BChw).detach()
        return Quantized(torch.cat([m.flatten(1) for m in maps], dim=1), z_q, codebook_loss, commit_loss)

    # -- the family interface -------------------------------------------------------------------
    def check_schedule(self, schedule: ScaleSchedule) -> None:
        if schedule.scales != self.config.scales:
            raise ScheduleError(f"a var tokenizer quantises at its fixed schedule {'-'.join(map(str, self.config.scales))}; "
                                f"got {schedule}")

    def tokenize(self, img_BCHW: torch.Tensor, schedule: ScaleSchedule) -> list[torch.Tensor]:
        """Ground-truth token maps t_1..t_N: the residual quantisation of the latent (schedule = the fixed one)."""
        self.check_schedule(schedule)
        return self.residual_quantize(self.encode_latent(img_BCHW))[0]

    def f_hat(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """f-hat of the first len(maps) scales, (B, Cvae, n, n)."""
        acc = self.accumulator()
        return sum(acc.contribution(m, si) for si, m in enumerate(maps))

    def code_vectors(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        return rearrange(self.codebook.weight[idx_Bhw], "b h w c -> b c h w")

    def decode_maps(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The image of f-hat after the given scales (a prefix of the schedule)."""
        return self.decode_latent(self.f_hat(maps))

    def decode_trajectory(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The image of f-hat after every scale (VAR's same-shape reconstruction)."""
        acc, out, f_hat = self.accumulator(), [], 0
        for si, m in enumerate(maps):
            f_hat = f_hat + acc.contribution(m, si)
            out.append(self.decode_latent(f_hat))
        return out

    def decode_tokens(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        raise ValueError("a var tokenizer decodes f-hat, which needs every scale's map: use decode_maps(maps)")

    def token_scales(self) -> tuple[int, ...]:
        """The fixed schedule: residual tokens exist for it alone."""
        return self.config.scales


class ResidualInputs:
    """Generation's next-scale inputs on VAR's pathway: f-hat accumulated over the sampled maps."""

    def __init__(self, model: "VarGenerator"):
        self.acc, self.f_hat = model.accumulator(), 0

    def next(self, idx_Bl: torch.Tensor, si: int, schedule: ScaleSchedule) -> torch.Tensor:
        self.f_hat = self.f_hat + self.acc.contribution(idx_Bl, si)
        return self.acc.next_input(self.f_hat, si)


class VarGenerator(ScaleGenerator):
    family = "var"

    def __init__(self, config: GeneratorConfig):
        check_residual_scales(config.scales, "generator")
        super().__init__(config)
        K, C = config.phi_count or len(config.scales), config.codebook_dim
        self.register_buffer("phi_weight", torch.zeros(K, C, C, 3, 3))
        self.register_buffer("phi_bias", torch.zeros(K, C))

    def init_positions(self, config: GeneratorConfig) -> None:
        L = sum(s * s for s in config.scales)
        self.pos_abs = nn.Parameter(torch.zeros(1, L, config.embed_dim))
        self.level_embed = nn.Embedding(len(config.scales), config.embed_dim)

    def reset_parameters(self, *args, **kwargs):
        super().reset_parameters(*args, **kwargs)
        nn.init.trunc_normal_(self.pos_abs, std=math.sqrt(1 / self.config.embed_dim / 3))

    # -- tokenizer buffers ----------------------------------------------------------------------
    def attach_tokenizer(self, tokenizer: ResidualVQ) -> "VarGenerator":
        if tokenizer.config.scales != self.config.scales:
            raise ValueError(f"the generator's schedule {list(self.config.scales)} is not the tokenizer's "
                             f"{list(tokenizer.config.scales)}")
        weight, bias = tokenizer.phi_tensors()
        if weight.shape != self.phi_weight.shape or tokenizer.codebook.weight.shape != self.codebook.shape:
            raise ValueError(f"tokenizer phi {tuple(weight.shape)} / codebook {tuple(tokenizer.codebook.weight.shape)} do "
                             f"not fit the generator's {tuple(self.phi_weight.shape)} / {tuple(self.codebook.shape)}")
        with torch.no_grad():
            self.codebook.copy_(tokenizer.codebook.weight.detach())
            self.phi_weight.copy_(weight.detach())
            self.phi_bias.copy_(bias.detach())
        return self

    def matches_tokenizer(self, tokenizer: nn.Module) -> bool:
        if getattr(tokenizer, "family", None) != "var" or tokenizer.config.scales != self.config.scales:
            return False
        weight, bias = (t.to(self.codebook.device) for t in tokenizer.phi_tensors())
        codes = tokenizer.codebook.weight.to(self.codebook.device)
        return (self.codebook.shape == codes.shape and self.phi_weight.shape == weight.shape
                and all(torch.allclose(a, b, atol=1e-5) for a, b in
                        ((self.codebook, codes), (self.phi_weight, weight), (self.phi_bias, bias))))

    def accumulator(self) -> ResidualAccumulator:
        return ResidualAccumulator(self.codebook, self.phi_weight, self.phi_bias, self.config.phi_ratio, self.config.scales)

    # -- schedules and positions ----------------------------------------------------------------
    @classmethod
    def training_schedule_problem(cls, config: GeneratorConfig, scales: tuple[int, ...], random: bool) -> str | None:
        if random:
            return ("family var has learned absolute positions for one fixed schedule: schedule.random is not "
                    "supported (set random: false)")
        if tuple(scales) != tuple(config.scales):
            return (f"scales {list(scales)} are not the var model's fixed schedule {list(config.scales)}; "
                    f"use schedule.scales: {list(config.scales)}")
        return None

    def schedule_problem(self, schedule: ScaleSchedule) -> str | None:
        """Positions exist for the fixed schedule's sizes: a schedule must start at its first scale and
        take its sizes in order (prefixes for rollouts, (h_1, h_k) for single-scale student passes)."""
        fixed = self.config.scales
        if schedule[0] == fixed[0] and all(s in fixed for s in schedule):
            return None
        return (f"schedule {schedule} does not fit the var generator: its positions are learned for the fixed "
                f"schedule {'-'.join(map(str, fixed))} (use that schedule or a prefix of it)")

    def check_prefix(self, schedule: ScaleSchedule) -> None:
        if schedule.scales != self.config.scales[: len(schedule)]:
            raise ScheduleError(f"var inputs accumulate every earlier scale: schedule {schedule} must be a prefix of "
                                f"{'-'.join(map(str, self.config.scales))}")

    def position_embedding(self, schedule: ScaleSchedule) -> torch.Tensor:
        """(1, L, C): each scale's absolute positions plus its level embedding."""
        fixed = self.config.scales
        starts = [sum(s * s for s in fixed[: fixed.index(h)]) for h in schedule]
        levels = torch.tensor([fixed.index(h) for h in schedule], device=self.pos_abs.device)
        level_1LC = self.level_embed(levels.repeat_interleave(torch.tensor(schedule.token_counts, device=levels.device)))
        pos = torch.cat([self.pos_abs[:, a: a + n] for a, n in zip(starts, schedule.token_counts)], dim=1)
        return pos + level_1LC[None]

    # -- inputs ---------------------------------------------------------------------------------
    def inputs_from_maps(self, maps, schedule: ScaleSchedule) -> torch.Tensor:
        """Scale k+1's input: f-hat of maps 1..k, area-resized to h_{k+1} (VAR's teacher forcing)."""
        self.check_prefix(schedule)
        if len(schedule) == 1:
            return self.codebook.new_zeros(maps[0].shape[0], 0, self.config.codebook_dim)
        acc, f_hat, out = self.accumulator(), 0, []
        for si in range(len(schedule) - 1):
            f_hat = f_hat + acc.contribution(maps[si], si)
            out.append(acc.next_input(f_hat, si))
        return torch.cat(out, dim=1)

    def staggered_inputs(self, ground_truth, drawn, schedule: ScaleSchedule, context: str) -> torch.Tensor:
        """The SSR's student input of scale k+1 when map k is drawn:
            ground_truth_below  f-hat of the ground-truth maps 1..k-1 plus the drawn map k's term
            own_draws           f-hat of the drawn maps 1..k (the student's own accumulation)"""
        if context == "own_draws":
            return self.inputs_from_maps(drawn, schedule)
        if ground_truth is None:
            raise ValueError("residual_context ground_truth_below needs the ground-truth maps (ground_truth=...)")
        self.check_prefix(schedule)
        if len(schedule) == 1:
            return self.codebook.new_zeros(drawn[0].shape[0], 0, self.config.codebook_dim)
        acc, f_gt, out = self.accumulator(), 0, []
        for si in range(len(schedule) - 1):
            out.append(acc.next_input(f_gt + acc.contribution(drawn[si], si), si))
            f_gt = f_gt + acc.contribution(ground_truth[si], si)
        return torch.cat(out, dim=1)

    def input_stream(self, batch_size: int) -> ResidualInputs:
        return ResidualInputs(self)
