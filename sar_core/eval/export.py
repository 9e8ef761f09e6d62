"""Samples as the ADM evaluator's `.npz`, and reference batches read back as "real" data.

The guided-diffusion evaluator (used by VAR / FlexVAR / SAR) reads `arr_0`, a uint8 array of
NHWC images, streaming it from the zip member without loading it whole; a reference batch such as
`VIRTUAL_imagenet256_labeled.npz` may also carry precomputed `mu` and `sigma` (pool-3 statistics
that then replace the ones computed from its images). Labels, when written, go to `arr_1` as the
reference samplers do.

`NpzWriter` streams batches into the file (the sample count is known in advance), so 50,000
ImageNet samples (9.8 GB) never sit in memory; `read_npz_batches` reads back the same way.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from sar_core.eval.features import quantize_uint8


def to_nhwc_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, C, H, W) floats in [-1, 1] (or uint8) -> (B, H, W, C) uint8."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        x = quantize_uint8(x)
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(x.shape)}")
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class NpzWriter:
    """Write `arr_0` (N, H, W, C) uint8 [and `arr_1` (N,) int64 labels] batch by batch."""

    def __init__(self, path: str | Path, count: int, image_shape_HWC: Sequence[int], with_labels: bool = False):
        self.path, self.count, self.shape = Path(path), count, (count, *image_shape_HWC)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.member = self.zip.open("arr_0.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_2_0(self.member, {"descr": "|u1", "fortran_order": False, "shape": self.shape})
        self.written, self.labels = 0, [] if with_labels else None

    def write(self, images, labels=None) -> None:
        batch = to_nhwc_uint8(images)
        if batch.shape[1:] != self.shape[1:] or self.written + len(batch) > self.count:
            raise ValueError(f"batch {batch.shape} does not fit {self.shape} with {self.written} written")
        self.member.write(batch.tobytes())
        self.written += len(batch)
        if self.labels is not None:
            self.labels.append(np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64))

    def close(self) -> Path:
        self.member.close()
        if self.written != self.count:
            self.zip.close()
            self.tmp.unlink()
            raise ValueError(f"{self.path}: wrote {self.written} of {self.count} images; file discarded")
        if self.labels is not None:
            with self.zip.open("arr_1.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.concatenate(self.labels))
        self.zip.close()
        self.tmp.replace(self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.member.close()
            self.zip.close()
            self.tmp.unlink(missing_ok=True)


def save_samples_npz(path: str | Path, images, labels=None) -> Path:
    """Write images ((B, C, H, W) floats in [-1, 1] or uint8) in one go."""
    arr = to_nhwc_uint8(images)
    with NpzWriter(path, len(arr), arr.shape[1:], with_labels=labels is not None) as w:
        w.write(torch.from_numpy(arr).permute(0, 3, 1, 2), labels)
    return Path(path)


def _open_member(zf: zipfile.ZipFile, name: str):
    if f"{name}.npy" not in zf.namelist():
        raise KeyError(f"{zf.filename} has no {name} (members: {zf.namelist()})")
    f = zf.open(f"{name}.npy")
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if fortran or dtype.hasobject:
        raise ValueError(f"{zf.filename}:{name} is not a C-ordered plain array")
    return f, shape, dtype


def npz_shape(path: str | Path, name: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    with zipfile.ZipFile(path) as zf:
        f, shape, dtype = _open_member(zf, name)
        f.close()
    return shape, dtype


def read_npz_batches(path: str | Path, batch_size: int = 500, name: str = "arr_0") -> Iterator[np.ndarray]:
    """Stream an array of an .npz in batches along its first axis (the file is never loaded whole)."""
    with zipfile.ZipFile(path) as zf:
        f, shape, dtype = _open_member(zf, name)
        row = int(np.prod(shape[1:])) * dtype.itemsize
        with f:
            for start in range(0, shape[0], batch_size):
                n = min(batch_size, shape[0] - start)
                data = f.read(n * row)
                if len(data) != n * row:
                    raise ValueError(f"{path}:{name} is truncated at row {start}")
                yield np.frombuffer(data, dtype=dtype).reshape(n, *shape[1:])


@dataclass(frozen=True)
class ReferenceNpz:
    """A reference batch: its images (streamed on demand) and optional precomputed statistics."""

    path: Path
    num_images: int
    image_shape_HWC: tuple[int, ...]
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    labels: np.ndarray | None = None

    def batches(self, batch_size: int = 500) -> Iterator[torch.Tensor]:
        """(B, C, H, W) float images in [-1, 1]."""
        for arr in read_npz_batches(self.path, batch_size):
            yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def read_reference_npz(path: str | Path) -> ReferenceNpz:
    path = Path(path)
    shape, dtype = npz_shape(path)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, C) with C in (1, 3), got {dtype} {shape}")
    with np.load(path) as z:  # small members only; arr_0 stays on disk
        mu = z["mu"] if "mu" in z.files else None
        sigma = z["sigma"] if "sigma" in z.files else None
        labels = z["arr_1"] if "arr_1" in z.files else None
    if (mu is None) != (sigma is None):
        raise ValueError(f"{path} has only one of mu / sigma")
    return ReferenceNpz(path, shape[0], tuple(shape[1:]), mu, sigma, labels)


def merge_npz(parts: Sequence[str | Path], out: str | Path) -> Path:
    """Concatenate per-rank sample files (same image shape) into one, streaming."""
    shapes = [npz_shape(p)[0] for p in parts]
    labelled = all("arr_1.npy" in zipfile.ZipFile(p).namelist() for p in parts)
    with NpzWriter(out, sum(s[0] for s in shapes), shapes[0][1:], with_labels=labelled) as w:
        for p in parts:
            labels = np.load(p)["arr_1"] if labelled else None
            start = 0
            for arr in read_npz_batches(p):
                batch_labels = labels[start : start + len(arr)] if labelled else None
                w.write(torch.from_numpy(arr.copy()).permute(0, 3, 1, 2), batch_labels)
                start += len(arr)
    return Path(out)
