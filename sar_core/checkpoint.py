"""Model checkpoints: safetensors weights with the model's config in the file header.

A checkpoint is self-describing (`load_model(path)` rebuilds the model from its stored config) and
never executes code on load. Loading weights into a model whose config differs fails with the list
of missing, unexpected and mis-shaped tensors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from sar_core.generator import GeneratorConfig, ScaleGenerator
from sar_core.tokenizer import MultiScaleVQ, TokenizerConfig

MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "generator": (ScaleGenerator, GeneratorConfig),
    "tokenizer": (MultiScaleVQ, TokenizerConfig),
}
FORMAT = "sar-platform/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says what does not match."""


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls, data: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def fingerprint(model: nn.Module) -> str:
    """A content hash of a model (kind, config and every tensor): equal iff the weights are equal.

    Pre-tokenized shards record their tokenizer's fingerprint, so shards are never silently reused
    with a different tokenizer."""
    h = hashlib.sha256(model.kind.encode())
    h.update(json.dumps(config_to_dict(model.config), sort_keys=True).encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "kind": model.kind, "config": json.dumps(config_to_dict(model.config))}
    header.update({f"user.{k}": str(v) for k, v in (metadata or {}).items()})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=header)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def read_header(path: str | Path) -> tuple[str, Any, dict[str, str]]:
    """(kind, config, user metadata) of a checkpoint, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several error types for foreign files
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({e})") from e
    if meta.get("format") != FORMAT or meta.get("kind") not in MODEL_KINDS:
        raise CheckpointError(
            f"{path} is not a sar-platform checkpoint (header format={meta.get('format')!r}, kind={meta.get('kind')!r}); "
            "published FlexVAR weights must first go through `sar import-flexvar`"
        )
    kind = meta["kind"]
    config = config_from_dict(MODEL_KINDS[kind][1], json.loads(meta["config"]))
    user = {k[5:]: v for k, v in meta.items() if k.startswith("user.")}
    return kind, config, user


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict that reports every missing, unexpected and mis-shaped tensor at once."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {source} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def load_model(
    path: str | Path,
    kind: str | None = None,
    config: Any | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild a model from a checkpoint; with `config`, load the weights into that config instead."""
    stored_kind, stored_config, _ = read_header(path)
    if kind is not None and kind != stored_kind:
        raise CheckpointError(f"{path} holds a {stored_kind}, not a {kind}")
    model_cls, config_cls = MODEL_KINDS[stored_kind]
    if config is not None and not isinstance(config, config_cls):
        raise CheckpointError(f"{path} holds a {stored_kind}; a {type(config).__name__} cannot describe it")
    model = model_cls(config if config is not None else stored_config)
    load_state_strict(model, read_tensors(path), str(path))
    return model.to(device)
