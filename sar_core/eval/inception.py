"""Inception-v3 as the FID network: the TF-FID graph's weights in plain PyTorch.

The ImageNet metrics of VAR / FlexVAR / SAR come from the TensorFlow Inception graph of the ADM
evaluator. pytorch-fid ported that graph's weights to PyTorch as `pt_inception-2015-12-05-6726825d.pth`
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth,
~91 MB; the 8 hex digits in the name are the start of the file's SHA-256). This module rebuilds
the network with exactly that file's module and parameter names, so the file loads by name and
neither torchvision nor pytorch-fid is needed (neither imports beside the CPU torch wheel here).

What makes it the FID network rather than torchvision's ImageNet classifier:
- 1008 output classes (the TF graph's softmax), no auxiliary head, no input transform;
- the average pools inside the 35x35, 17x17 and first 8x8 mixed blocks ignore padded zeros
  (TensorFlow semantics), and the last mixed block max-pools its pool branch;
- inputs are resized to 299 x 299 with bilinear interpolation (align_corners=False) and fed in
  [-1, 1], as pytorch-fid does;
- features are the 2048-d global average pool ("pool_3"); logits are pool_3 @ W with the fc
  weight and no bias, as the ADM evaluator's softmax ("softmax/logits/MatMul" input) does.

Weights are given as a path, a `file://` URI, or an `http(s)://` URI that is downloaded into the
data cache only when the caller allows downloads.
"""
from __future__ import annotations

import hashlib
import re
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from sar_core import paths
from sar_core.eval.features import FeatureNetwork

FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
NUM_CLASSES = 1008


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TF's) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, averages only the unpadded pixels."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avg pool->1x1."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(tf_avg_pool(x))], dim=1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: stride-2 3x3 | 1x1->3x3->stride-2 3x3 | stride-2 max pool."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(tf_avg_pool(x))], dim=1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; `max_pool` selects the TF graph's last-block quirk."""

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], dim=1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], dim=1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], dim=1)


class InceptionV3FID(FeatureNetwork):
    """Images in [-1, 1] (any size, 1 or 3 channels) -> (pool_3 features (B, 2048), logits (B, 1008))."""

    name = "inception-v3-fid"
    feature_dim = 2048
    num_classes = NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, NUM_CLASSES)

    def prepare(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        if images_BCHW.shape[1] == 1:
            images_BCHW = images_BCHW.expand(-1, 3, -1, -1)
        if images_BCHW.shape[1] != 3:
            raise ValueError(f"Inception expects 1- or 3-channel images, got {tuple(images_BCHW.shape)}")
        # Bilinear resizing is affine-equivariant, so resizing [-1, 1] images equals pytorch-fid's
        # resize-in-[0, 1]-then-rescale.
        return F.interpolate(images_BCHW.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)

    def forward(self, images_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prepare(images_BCHW)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool3 = x.mean(dim=(2, 3))
        return pool3, pool3 @ self.fc.weight.T


class WeightsError(ValueError):
    """Inception weights that cannot be found, fetched or loaded; the message says how to fix it."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_hash_in_name(path: Path, name: str | None = None) -> None:
    """Files named like torch-hub weights (`name-<hex>.pth`) must start their SHA-256 with <hex>."""
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", name or path.name)
    if m and not _sha256(path).startswith(m.group(1)):
        raise WeightsError(f"{path}: SHA-256 does not start with {m.group(1)} as its name says; the file is corrupt or truncated")


def resolve_weights(uri: str, allow_download: bool = False, cache_dir: Path | None = None) -> Path:
    """A local path for `uri` (path, file://, or http(s):// fetched into the cache when allowed)."""
    if not uri:
        raise WeightsError(
            "the inception feature network needs weights: set metrics.inception_weights to a local copy of "
            f"pt_inception-2015-12-05-6726825d.pth (download it from {FID_WEIGHTS_URL}), or to that URL "
            "together with metrics.allow_download=true"
        )
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        target = (cache_dir or paths.weights_cache()) / Path(parsed.path).name
        if target.is_file():
            return target
        if not allow_download:
            raise WeightsError(f"{uri} is not in the cache ({target}) and downloads are off; set metrics.allow_download=true "
                               "or download the file yourself and give its path")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        urllib.request.urlretrieve(uri, tmp)
        check_hash_in_name(tmp, name=target.name)
        tmp.replace(target)  # only a verified, complete file gets the cached name
        return target
    path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
    if parsed.scheme not in ("", "file") or not path.is_file():
        raise WeightsError(f"inception weights {uri!r} not found (give a file path, a file:// URI or an http(s):// URL)")
    return path


def load_inception(uri: str, allow_download: bool = False, device: str | torch.device = "cpu") -> InceptionV3FID:
    """The FID Inception with weights from `uri`; every tensor must match by name and shape."""
    path = resolve_weights(uri, allow_download)
    check_hash_in_name(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = InceptionV3FID()
    own = model.state_dict()
    # Files saved by older PyTorch lack BatchNorm's step counter; it plays no part in inference.
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise WeightsError(f"{path} is not an FID Inception state dict: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                           f"mis-shaped {shapes[:5]} (of {len(missing)}/{len(unexpected)}/{len(shapes)})")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device)
