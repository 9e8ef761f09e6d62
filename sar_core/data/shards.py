"""Pre-tokenized Parquet shards: a data set encoded once by a tokenizer, served to any schedule.

Each row is one image: `index` (its position in the source data set), `label`, and `tokens`, the
flat concatenation of the token maps of every stored scale (by default every size 1..latent, so
that any schedule drawn during training is a subset), plus `tokens_flip` for the horizontally
flipped image when flip augmentation is on. A scale's ground truth is the latent area-resized to
that size and quantised on its own, so it does not depend on which other scales a schedule has:
`select_scales` serves a schedule with one precomputed gather.

On disk, one folder holds `shard-00000-of-00012.parquet`, ... and `_manifest.json`, written last.
Every file carries, in its Parquet metadata, the tokenizer's fingerprint
(`sar_core.checkpoint.fingerprint`) and config, the stored scales, the flip flag, the data set's
name and split and the row counts. `encode_shards` skips work when complete shards of the same
tokenizer and scales exist, resumes an interrupted encoding from the shards already written,
refuses (naming both fingerprints and the fix) a folder written by another tokenizer or with other
scales, and never deletes or overwrites a finished shard.

Readers: `TokenShards` (metadata, checks, whole-set loading), `ShardDataset` (map-style: use it
with a DataLoader and DistributedSampler), `ShardStream` (iterable, rank/world split, streams row
groups), and Ray Data's `read_parquet` over `TokenShards.files` (the platform's `shard_dataset`). Batches from all of them are dicts with
`label`, `tokens` and possibly `tokens_flip`; `training_batch` picks original or flipped tokens
per sample with a seeded generator and returns (labels (B,), tokens (B, T)).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from sar_core.checkpoint import config_to_dict, fingerprint
from sar_core.progress import progress_bar
from sar_core.schedule import ScaleSchedule

FORMAT = "sar-shards/1"
MANIFEST = "_manifest.json"  # a leading underscore: Parquet readers skip it when listing the folder
META_KEY = b"sar.shards"


class ShardError(ValueError):
    """Shards that do not fit the request (another tokenizer, other scales, missing files)."""


@dataclass(frozen=True)
class ShardMeta:
    fingerprint: str  # the tokenizer's content hash
    tokenizer_config: dict
    scales: tuple[int, ...]  # stored scale sizes, ascending; the tokens column concatenates them
    flip: bool  # a tokens_flip column holds the flipped images' tokens
    dataset: str
    split: str
    num_rows: int
    num_shards: int
    rows_per_shard: int
    format: str = FORMAT

    @property
    def tokens_per_row(self) -> int:
        return sum(s * s for s in self.scales)

    @property
    def columns(self) -> list[str]:
        return ["index", "label", "tokens"] + (["tokens_flip"] if self.flip else [])

    def shard_name(self, i: int) -> str:
        return f"shard-{i:05d}-of-{self.num_shards:05d}.parquet"

    def shard_rows(self, i: int) -> range:
        return range(i * self.rows_per_shard, min((i + 1) * self.rows_per_shard, self.num_rows))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ShardMeta":
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ShardError(f"not a {FORMAT} shard set (format {data.get('format')!r})")
        data["scales"] = tuple(data["scales"])
        return cls(**data)

    def mismatch(self, other: "ShardMeta", sharding: bool = True) -> list[str]:
        """What differs between two shard sets, in words (empty when they are interchangeable).

        With sharding=False, the same rows cut into shards of another size still count as equal."""
        out = []
        if self.fingerprint != other.fingerprint:
            out.append(f"tokenizer fingerprint {self.fingerprint} vs {other.fingerprint}")
        fields = ("scales", "flip", "dataset", "split", "num_rows") + (("rows_per_shard",) if sharding else ())
        for field in fields:
            a, b = getattr(self, field), getattr(other, field)
            if a != b:
                out.append(f"{field} {a} vs {b}")
        return out


def default_scales(latent_size: int) -> tuple[int, ...]:
    """Every size 1..latent: the shards then serve any schedule ending at the latent size."""
    return tuple(range(1, latent_size + 1))


def token_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.int16) if codebook_size <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


# -- serving a schedule ------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _gather_index(stored: tuple[int, ...], wanted: tuple[int, ...], device: str) -> torch.Tensor:
    starts, offset = {}, 0
    for s in stored:
        starts[s], offset = offset, offset + s * s
    missing = [s for s in wanted if s not in starts]
    if missing:
        raise ShardError(f"schedule {wanted} needs scales {missing} that the shards do not store (stored: {stored})")
    return torch.cat([torch.arange(starts[s], starts[s] + s * s) for s in wanted]).to(device)


def select_scales(tokens_BT: torch.Tensor, stored_scales: Sequence[int], schedule: ScaleSchedule | Sequence[int]) -> torch.Tensor:
    """(B, T) tokens of the stored scales -> (B, L) tokens of `schedule`, in the generator's layout."""
    stored = tuple(stored_scales)
    if tokens_BT.shape[-1] != sum(s * s for s in stored):
        raise ShardError(f"tokens have {tokens_BT.shape[-1]} positions, stored scales {stored} need {sum(s * s for s in stored)}")
    return tokens_BT.index_select(-1, _gather_index(stored, tuple(schedule), str(tokens_BT.device)))


def training_batch(batch: dict, generator: torch.Generator | None = None, flip_prob: float = 0.5):
    """A batch dict (label, tokens[, tokens_flip]) -> (labels (B,) int64, tokens (B, T) int64).

    With flipped tokens present, each sample independently takes them with p = flip_prob, drawn
    from `generator` (seed it per rank and step for reproducible augmentation)."""
    labels = torch.as_tensor(batch["label"]).long()
    tokens = torch.as_tensor(batch["tokens"]).long()
    flipped = batch.get("tokens_flip")
    if flipped is not None and flip_prob > 0:
        device = generator.device if generator is not None else tokens.device
        choose = (torch.rand(len(tokens), generator=generator, device=device) < flip_prob).to(tokens.device)
        tokens = torch.where(choose[:, None], torch.as_tensor(flipped).long().to(tokens.device), tokens)
    return labels, tokens


# -- writing -----------------------------------------------------------------------------------


def _schema(meta: ShardMeta, shard: int) -> pa.Schema:
    tokens = pa.list_(pa.from_numpy_dtype(token_dtype(meta.tokenizer_config["codebook_size"])), meta.tokens_per_row)
    fields = [pa.field("index", pa.int64()), pa.field("label", pa.int64()), pa.field("tokens", tokens)]
    if meta.flip:
        fields.append(pa.field("tokens_flip", tokens))
    extra = {"shard": shard, "shard_rows": len(meta.shard_rows(shard))}
    return pa.schema(fields, metadata={META_KEY: meta.to_json().encode(), b"sar.shard": json.dumps(extra).encode()})


def _token_column(tokens_NT: np.ndarray, meta: ShardMeta) -> pa.Array:
    flat = pa.array(tokens_NT.astype(token_dtype(meta.tokenizer_config["codebook_size"])).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, meta.tokens_per_row)


def _write_shard(path: Path, meta: ShardMeta, shard: int, columns: dict[str, np.ndarray]) -> None:
    arrays = [pa.array(columns["index"], pa.int64()), pa.array(columns["label"], pa.int64()), _token_column(columns["tokens"], meta)]
    if meta.flip:
        arrays.append(_token_column(columns["tokens_flip"], meta))
    table = pa.Table.from_arrays(arrays, schema=_schema(meta, shard))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    pq.write_table(table, tmp, row_group_size=1024)
    tmp.replace(path)  # a shard under its real name is always complete


def read_shard_meta(path: Path) -> tuple[ShardMeta, dict]:
    schema = pq.read_schema(path)
    md = schema.metadata or {}
    if META_KEY not in md:
        raise ShardError(f"{path} is not a sar token shard (no {META_KEY.decode()} metadata)")
    return ShardMeta.from_json(md[META_KEY]), json.loads(md.get(b"sar.shard", b"{}"))


def _refuse(folder: Path, found: ShardMeta, wanted: ShardMeta, what: str) -> ShardError:
    return ShardError(
        f"{what} in {folder} do not match this request: " + "; ".join(found.mismatch(wanted)) + ".\n"
        f"They were written by tokenizer {found.fingerprint} (scales {found.scales}); this tokenizer is "
        f"{wanted.fingerprint} (scales {wanted.scales}). Shards are never overwritten: encode into another folder "
        f"(the platform names it by tokenizer fingerprint), or delete {folder} yourself if those shards are obsolete."
    )


def _encode_rows(tokenizer, dataset: Dataset, rows: range, meta: ShardMeta, batch_size: int, device, num_workers: int):
    schedule = ScaleSchedule(meta.scales)
    subset = torch.utils.data.Subset(dataset, list(rows))
    out = {"index": np.asarray(rows, dtype=np.int64), "label": [], "tokens": [], "tokens_flip": []}
    for images, labels in DataLoader(subset, batch_size=batch_size, num_workers=num_workers):
        images = images.to(device)
        out["label"].append(np.asarray(labels, dtype=np.int64))
        out["tokens"].append(tokenizer.tokenize_flat(images, schedule).cpu().numpy())
        if meta.flip:
            out["tokens_flip"].append(tokenizer.tokenize_flat(images.flip(-1), schedule).cpu().numpy())
    return {k: (np.concatenate(v) if isinstance(v, list) and v else v) for k, v in out.items()}


@torch.no_grad()
def encode_shards(
    tokenizer,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    dataset_name: str,
    split: str = "train",
    scales: Sequence[int] | None = None,
    flip: bool = False,
    rows_per_shard: int = 16384,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> "TokenShards":
    """Encode `dataset` ((image in [-1, 1], label) items) with `tokenizer` into Parquet shards.

    Returns the shard set; skips work that is already done (see the module docstring)."""
    latent = tokenizer.config.latent_size
    scales = tuple(sorted(set(scales))) if scales is not None else tokenizer.token_scales()
    if scales[-1] != latent or scales[0] < 1:
        raise ShardError(f"stored scales {scales} must lie in 1..{latent} and include the latent size {latent}")
    n = len(dataset)
    meta = ShardMeta(
        fingerprint=fingerprint(tokenizer), tokenizer_config=config_to_dict(tokenizer.config), scales=scales,
        flip=flip, dataset=dataset_name, split=split, num_rows=n, num_shards=max(1, math.ceil(n / rows_per_shard)),
        rows_per_shard=rows_per_shard,
    )
    folder = Path(out_dir)
    manifest = folder / MANIFEST
    if manifest.is_file():
        found = ShardMeta.from_json(manifest.read_text())
        if found.mismatch(meta, sharding=False):
            raise _refuse(folder, found, meta, "complete shards")
        return TokenShards(folder).verify()
    folder.mkdir(parents=True, exist_ok=True)
    todo = []
    for i in range(meta.num_shards):
        path = folder / meta.shard_name(i)
        if path.is_file():  # left by an interrupted run: keep it if it is ours, refuse otherwise
            found, _ = read_shard_meta(path)
            if found.mismatch(meta):
                raise _refuse(folder, found, meta, f"shard {path.name}")
        else:
            todo.append(i)
    tokenizer.eval()
    for i in progress_bar(todo, desc=f"tokenizing {dataset_name}/{split}", disable=not progress, unit="shard"):
        columns = _encode_rows(tokenizer, dataset, meta.shard_rows(i), meta, batch_size, device, num_workers)
        _write_shard(folder / meta.shard_name(i), meta, i, columns)
    tmp = manifest.with_name(MANIFEST + f".tmp{os.getpid()}")
    tmp.write_text(meta.to_json())
    tmp.replace(manifest)
    return TokenShards(folder).verify()


# -- reading -----------------------------------------------------------------------------------


class TokenShards:
    """A complete shard folder: its metadata, its files, and whole-set loading."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise ShardError(f"{self.folder} holds no complete shard set (no {MANIFEST}); run encode_shards first")
        self.meta = ShardMeta.from_json(manifest.read_text())

    @property
    def files(self) -> list[Path]:
        return [self.folder / self.meta.shard_name(i) for i in range(self.meta.num_shards)]

    @property
    def scales(self) -> tuple[int, ...]:
        return self.meta.scales

    @property
    def num_rows(self) -> int:
        return self.meta.num_rows

    def verify(self) -> "TokenShards":
        """Every shard exists, carries this set's metadata and has its row count."""
        for i, path in enumerate(self.files):
            if not path.is_file():
                raise ShardError(f"shard set {self.folder} is missing {path.name}")
            found, extra = read_shard_meta(path)
            rows = pq.ParquetFile(path).metadata.num_rows
            if found.mismatch(self.meta) or extra.get("shard") != i or rows != len(self.meta.shard_rows(i)):
                raise ShardError(f"{path} does not belong to the shard set described by {self.folder / MANIFEST}")
        return self

    def check_tokenizer(self, tokenizer_or_fingerprint) -> "TokenShards":
        fp = tokenizer_or_fingerprint if isinstance(tokenizer_or_fingerprint, str) else fingerprint(tokenizer_or_fingerprint)
        if fp != self.meta.fingerprint:
            raise ShardError(
                f"shards in {self.folder} were encoded by tokenizer {self.meta.fingerprint}, not by {fp}; "
                "re-encode the data with this tokenizer (into another folder)"
            )
        return self

    def select(self, tokens_BT: torch.Tensor, schedule) -> torch.Tensor:
        return select_scales(tokens_BT, self.meta.scales, schedule)

    def load(self) -> dict[str, np.ndarray]:
        """Every column in memory: label (N,), tokens (N, T) and tokens_flip (N, T) when present."""
        table = pa.concat_tables([pq.read_table(p) for p in self.files])
        return {c: column_to_numpy(table.column(c)) for c in self.meta.columns}


def column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A Parquet column as a writable numpy array: fixed-size token lists become (N, T) without a
    Python loop."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(col.type):
        return np.array(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), col.type.list_size)
    return np.array(col.to_numpy(zero_copy_only=False))


class ShardDataset(Dataset):
    """Map-style, in memory: item i is {"label", "tokens"[, "tokens_flip"]} (int64 tensors).

    Works with DataLoader + DistributedSampler; the token columns stay in their compact int16."""

    def __init__(self, shards: TokenShards | str | Path):
        self.shards = shards if isinstance(shards, TokenShards) else TokenShards(shards)
        self.columns = self.shards.load()

    def __len__(self) -> int:
        return len(self.columns["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(np.asarray(v[i], dtype=np.int64)) for k, v in self.columns.items() if k != "index"}


class ShardStream(IterableDataset):
    """Iterable over the shards' rows for one rank of `world`, streaming one row group at a time.

    Rows are dealt round-robin (global row r goes to rank r % world, then to DataLoader worker),
    so ranks see disjoint, equally sized (+-1) parts. With `seed`, row groups and the rows within
    each are shuffled, differently per `set_epoch`."""

    def __init__(self, shards: TokenShards | str | Path, rank: int = 0, world: int = 1, seed: int | None = None):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world), got rank={rank}, world={world}")
        self.shards = shards if isinstance(shards, TokenShards) else TokenShards(shards)
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self) -> list[tuple[Path, int]]:
        groups = [(p, g) for p in self.shards.files for g in range(pq.ParquetFile(p).num_row_groups)]
        if self.seed is not None:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(len(groups))
            groups = [groups[i] for i in order]
        return groups

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        part, parts = self.rank * workers + worker, self.world * workers
        columns = [c for c in self.shards.meta.columns if c != "index"]
        rng = np.random.default_rng((self.seed or 0, self.epoch, 1))
        for path, g in self._groups():
            table = pq.ParquetFile(path).read_row_group(g, columns=["index"] + columns)
            index = column_to_numpy(table.column("index"))
            rows = np.flatnonzero(index % parts == part)
            if self.seed is not None:
                rows = rng.permutation(rows)
            data = {c: column_to_numpy(table.column(c)) for c in columns}
            for i in rows:
                yield {c: torch.as_tensor(np.asarray(data[c][i], dtype=np.int64)) for c in columns}
