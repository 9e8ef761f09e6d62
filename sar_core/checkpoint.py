"""Model checkpoints: safetensors weights with the model's config in the file header.

A checkpoint is self-describing (`load_model(path)` rebuilds the model from its stored config) and
never executes code on load. A training checkpoint folder carries a manifest (size and SHA-256 of
every file, written last), so a truncated or altered folder is recognised before it is used. Loading weights into a model whose config differs fails with the list
of missing, unexpected and mis-shaped tensors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from sar_core.families import build_generator, build_tokenizer
from sar_core.generator import GeneratorConfig
from sar_core.tokenizer import TokenizerConfig

MODEL_KINDS: dict[str, tuple[Callable[[Any], nn.Module], type]] = {
    "generator": (build_generator, GeneratorConfig),
    "tokenizer": (build_tokenizer, TokenizerConfig),
}
"""Model kind -> (builder of its family's module from a config, config class)."""
FORMAT = "sar-platform/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says what does not match."""


def config_to_dict(config) -> dict[str, Any]:
    """The config's fields, less those its model family never reads (and `family` itself for the
    default family), so that a FlexVAR model's header and fingerprint hold exactly its own settings."""
    data = dataclasses.asdict(config)
    if "family" not in data:
        return data
    for name in config.unread_fields():
        data.pop(name, None)
    if data["family"] == "flexvar":
        del data["family"]
    return data


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
    build, config_cls = MODEL_KINDS[stored_kind]
    if config is not None and not isinstance(config, config_cls):
        raise CheckpointError(f"{path} holds a {stored_kind}; a {type(config).__name__} cannot describe it")
    if config is not None and config.family != stored_config.family:
        raise CheckpointError(f"{path} holds a {stored_config.family} {stored_kind}; a {config.family} config cannot describe it")
    model = build(config if config is not None else stored_config)
    load_state_strict(model, read_tensors(path), str(path))
    return model.to(device)


# -- checkpoint folders: a manifest of every file, written last, checked before use ------------

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


def _sha256(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def write_manifest(directory: str | Path) -> Path:
    """Record the size and SHA-256 of every file of a checkpoint folder in `manifest.json`, written
    last and atomically: a folder without a complete manifest was not completely written."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(_file_chunks(p))}
        for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE and not p.name.endswith(".tmp")
    }
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))
    tmp.replace(directory / MANIFEST_FILE)
    return directory / MANIFEST_FILE


def manifest_problems(manifest_text: str | None, size_of: Callable[[str], int | None],
                      chunks_of: Callable[[str], Iterable[bytes]]) -> list[str]:
    """What is wrong with a checkpoint folder, given its manifest's text (None: absent) and how to
    read its files (`size_of(name)` is None for a missing file). Empty: every file is intact."""
    if manifest_text is None:
        return [f"no {MANIFEST_FILE}: the checkpoint was not completely written"]
    try:
        files = json.loads(manifest_text)["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{MANIFEST_FILE} is unreadable"]
    problems = []
    for name, expected in files.items():
        size = size_of(name)
        if size is None:
            problems.append(f"{name} is missing")
        elif size != expected["size"]:
            problems.append(f"{name} has {size} bytes, {expected['size']} were written (truncated or overwritten)")
        elif _sha256(chunks_of(name)) != expected["sha256"]:
            problems.append(f"{name} does not match its checksum (its bytes changed after it was written)")
    return problems


def checkpoint_folder_problems(directory: str | Path) -> list[str]:
    """`manifest_problems` of a local checkpoint folder."""
    directory = Path(directory)
    manifest = directory / MANIFEST_FILE
    return manifest_problems(
        manifest.read_text() if manifest.is_file() else None,
        lambda name: (directory / name).stat().st_size if (directory / name).is_file() else None,
        lambda name: _file_chunks(directory / name),
    )


def verify_checkpoint_folder(directory: str | Path) -> None:
    """Raise CheckpointError naming every damaged file of a checkpoint folder."""
    if problems := checkpoint_folder_problems(directory):
        raise CheckpointError(f"checkpoint {directory} is damaged: " + "; ".join(problems))
