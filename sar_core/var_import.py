"""Import the published FoundationVision/VAR checkpoints (var_d16.pth ... var_d30.pth and
vae_ch160v4096z32.pth) onto this project's VAR family (`sar_core.var_family`).

The files are read with the FlexVAR importer's weights-only loader (`read_reference_checkpoint`: no
code from the file runs). The published files are bare state dicts; a VAR trainer's checkpoint
(weights under ["trainer"]["var_wo_ddp"]) reads too. Key renames, as the reference's modules name
their weights:

- VQ-VAE (models/vqvae.py, basic_vae.py, quant.py): `encoder.down.{i}` is our encoder stage i, but the
  decoder's `up.{i}` is indexed by resolution (0 = the finest) while our decoder stages run in the
  order they are applied, so `up.{i}` is stage L-1-i; the attention blocks hold one `qkv` 1x1
  convolution whose output channels are q, k, v in that order (split here into our q, k, v); the phi
  convolutions are `quantize.quant_resi.qresi_ls.{k}` (partially shared, as published),
  `quantize.quant_resi.{k}` (one per scale) or `quantize.quant_resi.qresi` (one for all).
- generator (models/var.py, basic_var.py): FlexVAR's block names, plus `pos_1LC` (absolute positions)
  and `lvl_embed` (level embedding). The schedule is read from the `lvl_1L` buffer (each position's
  level: h_i^2 positions per scale i); the masking bias and `zero_k_bias` are derived buffers.

The files do not record phi's blend ratio; the published VQ-VAE uses the reference default 0.5
(`PUBLISHED_PHI_RATIO`). Anything the rules do not account for is an error, never a dropped weight.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Mapping

import torch

from sar_core.checkpoint import CheckpointError, load_state_strict, save_model
from sar_core.flexvar_import import GENERATOR_RULES as FLEXVAR_GENERATOR_RULES
from sar_core.flexvar_import import read_reference_checkpoint, rename
from sar_core.generator import GeneratorConfig
from sar_core.tokenizer import TokenizerConfig
from sar_core.var_family import ResidualVQ, VarGenerator

PUBLISHED_PHI_RATIO = 0.5
"""phi(h) = (1 - r) h + r conv(h): the reference's quant_resi, which its files do not store."""

GENERATOR_RULES: list[tuple[str, str | None]] = [
    (r"^pos_1LC$", "pos_abs"),
    (r"^lvl_embed\.", "level_embed."),
    (r"^lvl_1L$", None),  # each position's level: read for the schedule, rebuilt from it
    *(rule for rule in FLEXVAR_GENERATOR_RULES if rule[0] != r"^pos_1LC$"),
]

PHI_LAYOUTS: dict[str, Callable[[int], int]] = {
    r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.": lambda k: k,  # partially shared (the published one)
    r"^quantize\.quant_resi\.(\d+)\.": lambda k: k,  # one per scale
    r"^quantize\.quant_resi\.qresi\.": lambda k: 1,  # one for all
}
"""Key prefix of the reference's phi convolutions -> our phi_count given how many there are."""


def tokenizer_rules(levels: int) -> list[tuple[str, str | Callable | None]]:
    """The VQ-VAE renames for an encoder/decoder of `levels` resolutions."""
    decoder_stage = lambda m: f"decoder.stages.{levels - 1 - int(m.group(1))}."
    return [
        (r"^quantize\.ema_vocab_hit_SV$", None),  # a usage statistic, not a weight
        (r"^quantize\.embedding\.weight$", "codebook.weight"),
        *((pattern, lambda m: f"phi.{m.group(1) if m.groups() else 0}.") for pattern in PHI_LAYOUTS),
        (r"^quant_conv\.", "quant_proj."),
        (r"^post_quant_conv\.", "post_quant_proj."),
        (r"^(encoder|decoder)\.conv_in\.", r"\1.stem."),
        (r"^(encoder|decoder)\.(norm_out|conv_out)\.", r"\1.\2."),
        (r"^(encoder|decoder)\.mid\.block_(\d)\.nin_shortcut\.", r"\1.mid.res\2.skip."),
        (r"^(encoder|decoder)\.mid\.block_(\d)\.", r"\1.mid.res\2."),
        (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid.attn.proj."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid.attn."),
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.nin_shortcut\.", r"encoder.stages.\1.blocks.\2.skip."),
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.stages.\1.blocks.\2."),
        (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.proj_out\.", r"encoder.stages.\1.attns.\2.proj."),
        (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.", r"encoder.stages.\1.attns.\2."),
        (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.stages.\1.resample.conv."),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.nin_shortcut\.", lambda m: f"{decoder_stage(m)}blocks.{m.group(2)}.skip."),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", lambda m: f"{decoder_stage(m)}blocks.{m.group(2)}."),
        (r"^decoder\.up\.(\d+)\.attn\.(\d+)\.proj_out\.", lambda m: f"{decoder_stage(m)}attns.{m.group(2)}.proj."),
        (r"^decoder\.up\.(\d+)\.attn\.(\d+)\.", lambda m: f"{decoder_stage(m)}attns.{m.group(2)}."),
        (r"^decoder\.up\.(\d+)\.upsample\.conv\.", lambda m: f"{decoder_stage(m)}resample.conv."),
    ]


def split_qkv(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every `*.qkv.{weight,bias}` (3C output channels, q then k then v) -> `*.q.*`, `*.k.*`, `*.v.*`."""
    out = {}
    for key, value in state.items():
        if m := re.match(r"^(.*)\.qkv\.(weight|bias)$", key):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{m.group(1)}.{name}.{m.group(2)}"] = part.clone()
        else:
            out[key] = value
    return out


def _require(state: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{what}: expected key {key!r} of the VAR layout is missing")
    return state[key]


def schedule_from(state: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """The generator's fixed schedule, from its `lvl_1L` buffer (h_i^2 positions at level i)."""
    what = "VAR generator"
    levels = _require(state, "lvl_1L", what).flatten().long()
    counts = torch.bincount(levels).tolist() if levels.numel() else []
    scales = tuple(math.isqrt(n) for n in counts)
    rebuilt = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    if not counts or any(s * s != n for s, n in zip(scales, counts)) or not torch.equal(levels, rebuilt):
        raise CheckpointError(f"{what}: lvl_1L is not a run of square level blocks 0, 1, ... (counts {counts[:12]}); "
                              "not the reference layout")
    if _require(state, "pos_1LC", what).shape[1] != levels.numel():
        raise CheckpointError(f"{what}: pos_1LC has {state['pos_1LC'].shape[1]} positions, lvl_1L {levels.numel()}")
    return scales


def phi_count_from(state: Mapping[str, torch.Tensor]) -> int:
    what = "VAR VQ-VAE"
    for pattern, count in PHI_LAYOUTS.items():
        found = {m.group(1) if m.groups() else "0" for k in state if (m := re.match(pattern, k))}
        if found:
            return count(len(found))
    raise CheckpointError(f"{what}: no phi convolutions (quantize.quant_resi.*): a VQ-VAE trained without phi "
                          "(quant_resi 0) is not supported")


def generator_config_from(state: Mapping[str, torch.Tensor], phi_count: int) -> GeneratorConfig:
    what = "VAR generator"
    if any(k.startswith("shared_ada_lin") or k.endswith("ada_gss") for k in state):
        raise CheckpointError(f"{what}: shared AdaLN checkpoints (VAR-d36-s) are not supported; d16..d30 use "
                              "per-block AdaLN")
    width, cvae = _require(state, "word_embed.weight", what).shape
    if _require(state, "pos_start", what).shape[1] != 1:
        raise CheckpointError(f"{what}: only checkpoints whose first scale is 1x1 (pos_start of length 1) are supported")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    scale_mul = state.get("blocks.0.attn.scale_mul_1H11")
    return GeneratorConfig(
        depth=depth, width=width, num_heads=scale_mul.shape[1] if scale_mul is not None else depth,
        mlp_ratio=_require(state, "blocks.0.ffn.fc1.weight", what).shape[0] / width,
        num_classes=_require(state, "class_emb.weight", what).shape[0] - 1,
        vocab_size=_require(state, "head.weight", what).shape[0], codebook_dim=cvae,
        attn_l2_norm=scale_mul is not None, family="var", scales=schedule_from(state),
        phi_count=phi_count, phi_ratio=PUBLISHED_PHI_RATIO,
    )


def tokenizer_config_from(state: Mapping[str, torch.Tensor], scales: tuple[int, ...]) -> TokenizerConfig:
    """The VQ-VAE's config; its image size is what the generator's last scale decodes to."""
    what = "VAR VQ-VAE"
    base, in_ch = _require(state, "encoder.conv_in.weight", what).shape[:2]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"^encoder\.down\.(\d+)\.", k))})
    mult = tuple(_require(state, f"encoder.down.{i}.block.0.conv1.weight", what).shape[0] // base for i in levels)
    res = {int(m.group(1)) for k in state if (m := re.match(r"^encoder\.down\.0\.block\.(\d+)\.", k))}
    V, cvae = _require(state, "quantize.embedding.weight", what).shape
    return TokenizerConfig(
        image_size=scales[-1] * 2 ** (len(mult) - 1), in_channels=in_ch, base_channels=base, channel_mult=mult,
        num_res_blocks=len(res), z_channels=_require(state, "encoder.conv_out.weight", what).shape[0],
        codebook_size=V, codebook_dim=cvae, attention=any(".attn" in k for k in state),
        family="var", scales=scales, phi_count=phi_count_from(state), phi_ratio=PUBLISHED_PHI_RATIO,
    )


def import_tokenizer(state: Mapping[str, torch.Tensor], scales: tuple[int, ...]) -> ResidualVQ:
    config = tokenizer_config_from(state, scales)
    model = ResidualVQ(config)
    renamed = split_qkv(rename(state, tokenizer_rules(len(config.channel_mult)), "VAR VQ-VAE"))
    load_state_strict(model, renamed, "VAR VQ-VAE")
    return model


def import_generator(state: Mapping[str, torch.Tensor], tokenizer: ResidualVQ) -> VarGenerator:
    zero_k = [k for k in state if k.endswith("zero_k_bias") and state[k].abs().max() > 0]
    if zero_k:
        raise CheckpointError(f"VAR generator: non-zero key biases {zero_k[:3]}: not the reference architecture")
    model = VarGenerator(generator_config_from(state, tokenizer.config.phi_count))
    renamed = rename(state, GENERATOR_RULES, "VAR generator")
    phi_weight, phi_bias = tokenizer.phi_tensors()
    renamed.update(codebook=tokenizer.codebook.weight.detach(), phi_weight=phi_weight.detach(), phi_bias=phi_bias.detach())
    load_state_strict(model, renamed, "VAR generator")
    return model


def import_var(generator_path, vqvae_path, out_dir, report: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Convert the two published files into sar-platform checkpoints; returns (generator, tokenizer).
    `report` receives a line per file on what it holds besides the imported weights."""
    vqvae_state = read_reference_checkpoint(vqvae_path, report)
    generator_state = read_reference_checkpoint(generator_path, report)
    tokenizer = import_tokenizer(vqvae_state, schedule_from(generator_state))
    generator = import_generator(generator_state, tokenizer)
    out = Path(out_dir)
    source = {"imported_from": f"VAR {Path(generator_path).name} + {Path(vqvae_path).name}"}
    return save_model(generator, out / "generator.safetensors", source), save_model(tokenizer, out / "tokenizer.safetensors", source)
