"""Import the published FlexVAR checkpoints (generator + VQ-VAE) onto this project's modules.

The reference checkpoints are PyTorch pickles: the generator either as a bare state dict or under
["trainer"]["var_wo_ddp"] of its trainer's file (next to the epoch, the trainer config, the
optimizer and grad-scaler state and the training arguments), the VQ-VAE under ["model"] (LlamaGen's
layout: with optimizer states, a step count and an `argparse.Namespace` of arguments). They are read
with torch's weights-only unpickler, which runs no code from the file: tensors and plain containers,
plus the allow-list READABLE_GLOBALS of data-only types those extras use (argparse.Namespace, numpy
scalars and arrays). An object of any other type is replaced by an inert placeholder that is never
constructed from the file's data, and reported; none of these extras is imported. Every weight key
is renamed by the rules below, the model config is inferred from the tensor shapes, and anything the
rules do not account for is an error rather than a silently dropped weight.
"""
from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
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
    """Every key through the first rule whose pattern matches (the target a re.sub replacement:
    a template or a function of the match; None drops the key); a key no rule matches is an error."""
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


def _numpy_globals() -> list[tuple[Callable, str]]:
    """numpy scalars, dtypes and arrays under the module names numpy 1 (numpy.core) and 2 (numpy._core) pickle them with."""
    multiarray = np._core.multiarray
    out = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    out += [(np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    out += [(getattr(np.dtypes, name), f"numpy.dtypes.{name}") for name in np.dtypes.__all__]
    return out


READABLE_GLOBALS: list[tuple[Callable, str]] = [(argparse.Namespace, "argparse.Namespace"), *_numpy_globals()]
"""Data-only types the published files hold besides tensors, which the weights-only unpickler may build."""


class SkippedObject:
    """Stands in for an object of a type outside READABLE_GLOBALS: the file's data for it is dropped
    and nothing of the type is imported or run."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _placeholder(qualified_name: str) -> type[SkippedObject]:
    return type("SkippedObject", (SkippedObject,), {"qualified_name": qualified_name})


def _load_restricted(path: Path) -> tuple[object, list[str]]:
    """torch.load with the weights-only unpickler, READABLE_GLOBALS and placeholders for other types."""
    readable = {name for _, name in READABLE_GLOBALS}
    try:
        unknown = []
        if zipfile.is_zipfile(path):  # torch's format since 1.6; older files get no placeholders
            unknown = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) - readable)
        with torch.serialization.safe_globals([*READABLE_GLOBALS, *((_placeholder(n), n) for n in unknown)]):
            return torch.load(str(path), map_location="cpu", weights_only=True), unknown
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if blocked := re.search(r"GLOBAL (\S+) whose module \S+ is blocked", str(e)):
            raise CheckpointError(f"{path}: its pickle calls {blocked.group(1)}, which a weights file never needs: "
                                  "nothing of it was run or imported; do not load this file with weights_only=False") from None
        raise CheckpointError(f"{path}: cannot be read as a weights-only PyTorch checkpoint: {e}") from None
    except (RuntimeError, EOFError, OSError) as e:  # a truncated file is an OSError
        raise CheckpointError(f"{path}: cannot be read as a weights-only PyTorch checkpoint: {e}") from None


def _left_out(top: dict, where: list[str]) -> list[str]:
    """The entries next to the weights on the way down to them, e.g. epoch, args, trainer.var_opt."""
    out, obj, prefix = [], top, ""
    for key in where:
        out += [f"{prefix}{k}" for k in obj if k != key]
        obj, prefix = obj[key], f"{prefix}{key}."
    return out


def read_reference_checkpoint(path: str | Path, report: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """A reference .pth (FlexVAR's or VAR's) as a flat state dict; `report` gets one line on what else
    the file holds."""
    obj, unknown = _load_restricted(Path(path))
    where, top = [], obj
    for key in ("trainer", "var_wo_ddp", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            where.append(key)
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors in a layout this importer knows")
    if report is not None and (where or unknown):
        inside = "".join(f"[{k!r}]" for k in where)
        left = _left_out(top, where)
        line = f"{Path(path).name}: weights from {inside or 'the top level'}"
        line += f"; not imported: {', '.join(left)}" if left else ""
        line += f"; objects of unknown types skipped unread: {', '.join(unknown)}" if unknown else ""
        report(line)
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def import_flexvar(generator_path, vqvae_path, out_dir, image_size: int = 256,
                   report: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Convert the two published files into sar-platform checkpoints; returns (generator, tokenizer).
    `report` receives a line per file on what it holds besides the imported weights."""
    tokenizer = import_tokenizer(read_reference_checkpoint(vqvae_path, report), image_size)
    generator = import_generator(read_reference_checkpoint(generator_path, report), tokenizer)
    out = Path(out_dir)
    source = {"imported_from": f"FlexVAR {Path(generator_path).name} + {Path(vqvae_path).name}"}
    return save_model(generator, out / "generator.safetensors", source), save_model(tokenizer, out / "tokenizer.safetensors", source)
