"""Import the published FlexVAR checkpoints (generator + VQ-VAE) onto this project's modules.

The reference checkpoints are PyTorch pickles: the generator either as a bare state dict or under
["trainer"]["var_wo_ddp"], the VQ-VAE under ["model"]. They are read with
`torch.load(weights_only=True)` (tensors only, no code), every key is renamed by the rules below,
the model config is inferred from the tensor shapes, and anything the rules do not account for is
an error rather than a silently dropped weight.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from sar_core.checkpoint import CheckpointError, load_state_strict, save_model
from sar_core.generator import GeneratorConfig, ScaleGenerator
from sar_core.tokenizer import MultiScaleVQ, TokenizerConfig

# (reference pattern, our name); first match wins; None drops a derived buffer.
GENERATOR_RULES: list[tuple[str, str | None]] = [
    (r"^pos_start$", "start_pos"),
    (r"^pos_1LC$", "pos_grid"),
    (r"^word_embed\.", "token_embed."),
    (r"^class_emb\.", "class_embed."),
    (r"^attn_bias_for_masking$", None),  # the block-causal mask, rebuilt per schedule
    (r"^blocks\.(\d+)\.attn\.zero_k_bias$", None),  # constant zeros: keys carry no bias
    (r"^blocks\.(\d+)\.attn\.scale_mul_1H11$", r"blocks.\1.attn.log_scale"),
    (r"^blocks\.(\d+)\.attn\.mat_qkv\.", r"blocks.\1.attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.(q_bias|v_bias|proj\.weight|proj\.bias)$", r"blocks.\1.attn.\2"),
    (r"^blocks\.(\d+)\.ffn\.", r"blocks.\1.mlp."),
    (r"^blocks\.(\d+)\.ada_lin\.1\.", r"blocks.\1.ada_ln.1."),
    (r"^head_nm\.ada_lin\.1\.", "head_norm.ada_ln.1."),
    (r"^head\.", "head."),
]

TOKENIZER_RULES: list[tuple[str, str | None]] = [
    (r"^quantize\.codebook_used$", None),  # a usage statistic, not a weight
    (r"^quantize\.embedding\.weight$", "codebook.weight"),
    (r"^quant_conv\.", "quant_proj."),
    (r"^post_quant_conv\.", "post_quant_proj."),
    (r"^(encoder|decoder)\.conv_in\.", r"\1.stem."),
    (r"^(encoder|decoder)\.(norm_out|conv_out)\.", r"\1.\2."),
    (r"^(encoder|decoder)\.mid\.0\.nin_shortcut\.", r"\1.mid.res1.skip."),
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.res1."),
    (r"^(encoder|decoder)\.mid\.1\.proj_out\.", r"\1.mid.attn.proj."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.res2."),
    (r"^(encoder|decoder)\.conv_blocks\.(\d+)\.res\.(\d+)\.nin_shortcut\.", r"\1.stages.\2.blocks.\3.skip."),
    (r"^(encoder|decoder)\.conv_blocks\.(\d+)\.res\.(\d+)\.", r"\1.stages.\2.blocks.\3."),
    (r"^(encoder|decoder)\.conv_blocks\.(\d+)\.attn\.(\d+)\.proj_out\.", r"\1.stages.\2.attns.\3.proj."),
    (r"^(encoder|decoder)\.conv_blocks\.(\d+)\.attn\.(\d+)\.", r"\1.stages.\2.attns.\3."),
    (r"^(encoder|decoder)\.conv_blocks\.(\d+)\.(downsample|upsample)\.conv\.", r"\1.stages.\2.resample.conv."),
]


def rename(state: Mapping[str, torch.Tensor], rules, what: str) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        for pattern, target in rules:
            if re.match(pattern, key):
                if target is not None:
                    out[re.sub(pattern, target, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{what}: {len(unknown)} key(s) this importer does not know: {unknown[:10]}")
    return out


def _require(state: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{what}: expected key {key!r} of the FlexVAR layout is missing")
    return state[key]


def generator_config_from(state: Mapping[str, torch.Tensor]) -> GeneratorConfig:
    what = "FlexVAR generator"
    if any(k.startswith("shared_ada_lin") or k.endswith("ada_gss") for k in state):
        raise CheckpointError(f"{what}: shared AdaLN checkpoints are not supported (FlexVAR ships per-block AdaLN)")
    width, cvae = _require(state, "word_embed.weight", what).shape
    if _require(state, "pos_start", what).shape[1] != 1:
        raise CheckpointError(f"{what}: only checkpoints whose first scale is 1x1 (pos_start of length 1) are supported")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    scale_mul = state.get("blocks.0.attn.scale_mul_1H11")
    heads = scale_mul.shape[1] if scale_mul is not None else depth
    return GeneratorConfig(
        depth=depth,
        width=width,
        num_heads=heads,
        mlp_ratio=_require(state, "blocks.0.ffn.fc1.weight", what).shape[0] / width,
        num_classes=_require(state, "class_emb.weight", what).shape[0] - 1,
        vocab_size=_require(state, "head.weight", what).shape[0],
        codebook_dim=cvae,
        pos_grid=_require(state, "pos_1LC", what).shape[-1],
        attn_l2_norm=scale_mul is not None,
    )


def tokenizer_config_from(state: Mapping[str, torch.Tensor], image_size: int = 256) -> TokenizerConfig:
    what = "FlexVAR VQ-VAE"
    base, in_ch = _require(state, "encoder.conv_in.weight", what).shape[:2]
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"^encoder\.conv_blocks\.(\d+)\.", k))})
    mult = tuple(state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // base for i in stages)
    res = {int(m.group(1)) for k in state if (m := re.match(r"^encoder\.conv_blocks\.0\.res\.(\d+)\.", k))}
    V, cvae = _require(state, "quantize.embedding.weight", what).shape
    return TokenizerConfig(
        image_size=image_size,
        in_channels=in_ch,
        base_channels=base,
        channel_mult=mult,
        num_res_blocks=len(res),
        z_channels=_require(state, "encoder.conv_out.weight", what).shape[0],
        codebook_size=V,
        codebook_dim=cvae,
        attention=any(".attn." in k or k.startswith("encoder.mid.1.") for k in state),
    )


def import_tokenizer(state: Mapping[str, torch.Tensor], image_size: int = 256) -> MultiScaleVQ:
    model = MultiScaleVQ(tokenizer_config_from(state, image_size))
    load_state_strict(model, rename(state, TOKENIZER_RULES, "FlexVAR VQ-VAE"), "FlexVAR VQ-VAE")
    return model


def import_generator(state: Mapping[str, torch.Tensor], tokenizer: MultiScaleVQ) -> ScaleGenerator:
    zero_k = [k for k in state if k.endswith("zero_k_bias") and state[k].abs().max() > 0]
    if zero_k:
        raise CheckpointError(f"FlexVAR generator: non-zero key biases {zero_k[:3]}: not the reference architecture")
    model = ScaleGenerator(generator_config_from(state))
    renamed = rename(state, GENERATOR_RULES, "FlexVAR generator")
    renamed["codebook"] = tokenizer.normalized_codebook().detach()
    load_state_strict(model, renamed, "FlexVAR generator")
    return model


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A FlexVAR .pth as a flat state dict (tensors only: nothing in the file is executed)."""
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("trainer", "var_wo_ddp", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors in a layout this importer knows")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def import_flexvar(generator_path, vqvae_path, out_dir, image_size: int = 256) -> tuple[Path, Path]:
    """Convert the two published files into sar-platform checkpoints; returns (generator, tokenizer)."""
    tokenizer = import_tokenizer(read_reference_checkpoint(vqvae_path), image_size)
    generator = import_generator(read_reference_checkpoint(generator_path), tokenizer)
    out = Path(out_dir)
    source = {"imported_from": f"FlexVAR {Path(generator_path).name} + {Path(vqvae_path).name}"}
    return save_model(generator, out / "generator.safetensors", source), save_model(tokenizer, out / "tokenizer.safetensors", source)
