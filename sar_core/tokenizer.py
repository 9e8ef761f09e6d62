"""Multi-scale VQ tokenizer on FlexVAR's up-sampling pathway.

A convolutional encoder maps an image to a continuous latent f (B, Cvae, n, n). The ground truth of
scale h_i is f area-resized to h_i x h_i and quantized on its own against one shared, L2-normalised
codebook (no residuals, unlike VAR). The decoder is fully convolutional, so a token map of any size
decodes to an image (h * downsample pixels a side); generation decodes only the last one.

The layout (resnet stages, attention at the lowest resolution and in the middle, 1x1 projections
around the codebook) follows the LlamaGen VQ-16 that FlexVAR ships, so its published weights import
onto this module (`sar_core.flexvar_import`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from sar_core.schedule import ScaleSchedule


TOKENIZER_FAMILY_FIELDS = {"flexvar": (), "var": ("scales", "phi_count", "phi_ratio")}
"""The config fields only one family's tokenizer reads."""


@dataclass(frozen=True)
class TokenizerConfig:
    image_size: int = 256
    in_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 8912
    codebook_dim: int = 32
    norm_groups: int = 32
    attention: bool = True  # self-attention at the lowest resolution and in the middle blocks
    commit_beta: float = 0.25
    family: str = "flexvar"  # a key of sar_core.families.MODEL_FAMILIES
    scales: tuple[int, ...] = ()  # var: the fixed schedule residuals are quantised at (ends at the latent size)
    phi_count: int = 4  # var: phi convolutions shared over the scales (0: one per scale, 1: one for all)
    phi_ratio: float = 0.5  # var: phi(h) = (1 - r) h + r conv3x3(h); 0: no convolution

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "scales", tuple(self.scales))
        from sar_core.families import check_family  # the family table imports this module
        check_family(self)
        if self.image_size % self.downsample:
            raise ValueError(
                f"tokenizer image_size={self.image_size} is not divisible by the encoder's downsampling "
                f"factor {self.downsample} (2^(len(channel_mult)-1)); pad or resize the images"
            )
        for c in {self.base_channels * m for m in self.channel_mult}:
            if c % self.norm_groups:
                raise ValueError(f"tokenizer channel width {c} is not divisible by norm_groups={self.norm_groups}")
        if self.num_res_blocks < 1:
            raise ValueError(f"tokenizer num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ValueError("tokenizer codebook_size must be >= 2 and codebook_dim >= 1")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def unread_fields(self) -> dict[str, str]:
        """Field -> why this family's tokenizer never reads it."""
        from sar_core.families import family_unread_fields
        return family_unread_fields(self, TOKENIZER_FAMILY_FIELDS)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample


def _norm(cfg: TokenizerConfig, ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cfg: TokenizerConfig, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cfg, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(cfg, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map."""

    def __init__(self, cfg: TokenizerConfig, ch: int):
        super().__init__()
        self.norm = _norm(cfg, ch)
        self.q, self.k, self.v, self.proj = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        H, W = x.shape[-2:]
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=H, w=W))


class Downsample(nn.Module):
    """Stride-2 conv; the asymmetric (right/bottom) padding halves any even size exactly."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.resample = resample

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attns:
                x = self.attns[i](x)
        return self.resample(x) if self.resample is not None else x


class MidBlock(nn.Module):
    def __init__(self, cfg: TokenizerConfig, ch: int):
        super().__init__()
        self.res1 = ResBlock(cfg, ch, ch)
        self.attn = AttnBlock(cfg, ch) if cfg.attention else nn.Identity()
        self.res2 = ResBlock(cfg, ch, ch)

    def forward(self, x):
        return self.res2(self.attn(self.res1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.stem = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        stages, c = [], cfg.base_channels
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            blocks = [ResBlock(cfg, c if j == 0 else w, w) for j in range(cfg.num_res_blocks)]
            attns = [AttnBlock(cfg, w) for _ in blocks] if (last and cfg.attention) else []
            stages.append(Stage(blocks, attns, None if last else Downsample(w)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.mid = MidBlock(cfg, c)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in reversed(cfg.channel_mult)]  # lowest resolution first
        c = widths[0]
        self.stem = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = MidBlock(cfg, c)
        stages = []
        for i, w in enumerate(widths):
            blocks = [ResBlock(cfg, c if j == 0 else w, w) for j in range(cfg.num_res_blocks + 1)]
            attns = [AttnBlock(cfg, w) for _ in blocks] if (i == 0 and cfg.attention) else []
            stages.append(Stage(blocks, attns, Upsample(w) if i < len(widths) - 1 else None))
            c = w
        self.stages = nn.ModuleList(stages)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid(self.stem(z))
        for stage in self.stages:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Quantized(NamedTuple):
    idx: torch.Tensor  # (B, h, w) code indices
    z_q: torch.Tensor  # (B, Cvae, h, w) straight-through code vectors
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor


class MultiScaleVQ(nn.Module):
    """Encoder -> latent -> per-scale quantisation against one codebook -> decoder."""

    kind = "tokenizer"
    family = "flexvar"
    proj_kernel = 1  # the convolutions between the encoder/decoder and the codebook space

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        k = self.proj_kernel
        self.quant_proj = nn.Conv2d(config.z_channels, config.codebook_dim, k, padding=k // 2)
        self.post_quant_proj = nn.Conv2d(config.codebook_dim, config.z_channels, k, padding=k // 2)
        self.codebook = nn.Embedding(config.codebook_size, config.codebook_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / config.codebook_size, 1.0 / config.codebook_size)

    # -- codebook -------------------------------------------------------------------------------
    def normalized_codebook(self) -> torch.Tensor:
        """(V, Cvae) unit-norm code vectors: what quantisation, decoding and the generator's inputs use."""
        return F.normalize(self.codebook.weight, dim=-1)

    def quantize(self, f_BChw: torch.Tensor) -> Quantized:
        z = F.normalize(f_BChw, dim=1)
        codes = self.normalized_codebook()
        # For unit vectors the nearest code in L2 is the one with the largest dot product.
        idx = torch.einsum("bchw,vc->bhwv", z, codes).argmax(dim=-1)
        z_q = rearrange(codes[idx], "b h w c -> b c h w")
        codebook_loss = F.mse_loss(z_q, z.detach())
        commit_loss = self.config.commit_beta * F.mse_loss(z, z_q.detach())
        return Quantized(idx, z + (z_q - z).detach(), codebook_loss, commit_loss)

    # -- encode / decode ------------------------------------------------------------------------
    def check_images(self, img_BCHW: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if img_BCHW.ndim != 4 or img_BCHW.shape[1] != c or img_BCHW.shape[-2:] != (s, s):
            raise ValueError(
                f"tokenizer expects images of shape (B, {c}, {s}, {s}) in [-1, 1], got {tuple(img_BCHW.shape)}"
            )

    def encode_latent(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        self.check_images(img_BCHW)
        return self.quant_proj(self.encoder(img_BCHW))

    def tokenize(self, img_BCHW: torch.Tensor, schedule: ScaleSchedule) -> list[torch.Tensor]:
        """Ground-truth token maps t_1..t_N: the latent area-resized to each scale, quantised alone."""
        schedule.check_latent(self.config.latent_size)
        f = self.encode_latent(img_BCHW)
        return [self.quantize(F.interpolate(f, size=(s, s), mode="area")).idx for s in schedule]

    def tokenize_flat(self, img_BCHW: torch.Tensor, schedule: ScaleSchedule) -> torch.Tensor:
        """(B, L) concatenation of `tokenize`, the layout the generator consumes."""
        return torch.cat([t.flatten(1) for t in self.tokenize(img_BCHW, schedule)], dim=1)

    def decode_latent(self, z_BChw: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_proj(z_BChw))

    def decode_tokens(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Token map (B, h, w) of any size -> images (B, C, h*ds, w*ds), roughly in [-1, 1]."""
        return self.decode_latent(self.code_vectors(idx_Bhw))

    def code_vectors(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Token map (B, h, w) -> the code vectors it indexes, (B, Cvae, h, w)."""
        return rearrange(self.normalized_codebook()[idx_Bhw], "b h w c -> b c h w")

    def decode_maps(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """A generation's token maps (B, h, h), coarse to fine -> its images: the last map decoded alone."""
        return self.decode_tokens(maps[-1])

    def decode_trajectory(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The image after every scale of a generation: each map decoded on its own."""
        return [self.decode_tokens(idx) for idx in maps]

    def token_scales(self) -> tuple[int, ...]:
        """The map sizes whose tokens this tokenizer defines: every size up to the latent, each
        quantised alone (token shards store them all and serve any schedule)."""
        return tuple(range(1, self.config.latent_size + 1))

    # -- training -------------------------------------------------------------------------------
    def forward(self, img_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction at the full latent: returns (reconstruction, loss, metrics)."""
        q = self.quantize(self.encode_latent(img_BCHW))
        recon = self.decode_latent(q.z_q)
        recon_loss = F.mse_loss(recon, img_BCHW)
        loss = recon_loss + q.codebook_loss + q.commit_loss
        metrics = {
            "recon_mse": recon_loss.detach(),
            "codebook_loss": q.codebook_loss.detach(),
            "commit_loss": q.commit_loss.detach(),
            "codebook_usage": codebook_usage(q.idx, self.config.codebook_size),
        }
        return recon, loss, metrics


def codebook_usage(idx: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Fraction of the codebook's entries that occur in `idx`."""
    return torch.tensor(idx.unique().numel() / codebook_size)


def codebook_perplexity(idx: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: the effective number of codes in use."""
    p = torch.bincount(idx.flatten(), minlength=codebook_size).float()
    p = p / p.sum()
    return torch.exp(-(p[p > 0] * p[p > 0].log()).sum())


def upsample_codes(codes_VC: torch.Tensor, idx_Bhw: torch.Tensor, size: int) -> torch.Tensor:
    """Embed a token map with `codes_VC` and bicubic-resize it to size x size: (B, size*size, Cvae).

    This is the next-scale input of FlexVAR's up-sampling pathway, identical for teacher forcing
    (ground-truth tokens), student forcing (sampled tokens) and inference.
    """
    emb = rearrange(codes_VC[idx_Bhw], "b h w c -> b c h w")
    up = F.interpolate(emb, size=(size, size), mode="bicubic", align_corners=False)
    return rearrange(up, "b c h w -> b (h w) c")


def scale_tokens(idx_BL: torch.Tensor, schedule: ScaleSchedule) -> list[torch.Tensor]:
    """(B, L) concatenated tokens -> per-scale (B, h, h) maps."""
    return [t.reshape(t.shape[0], s, s) for t, s in zip(schedule.split(idx_BL), schedule)]


def flatten_tokens(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.flatten(1) for m in maps], dim=1)
