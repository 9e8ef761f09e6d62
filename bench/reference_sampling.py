"""KV-cached sampling against FlexVAR's own code, on the same weights, batch, settings and dtype.

A FlexVAR generator and its VQ-VAE are built from a checkout of the reference repository with random
weights (the reference's own initialisation), imported into this project's modules with
sar_core.flexvar_import, and both sample with FlexVAR's published evaluation sampler (cfg 2.5 on its
ramp, top-k 900, top-p 0.95, greedy above size 16) and decode their last scale with their own VQ-VAE.

Before anything is timed, both decode greedily (top-k 1) in fp32 with TF32 off and their last token
maps are compared: the timings compare the same computation only when those agree.

The checkout is read, never copied: its `models` package and `dist.py` are imported from the path
given. Its one import this project does not install, huggingface_hub (a base class for uploading to
the hub, not on the sampling path), is stood in for by an empty class when it is missing.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path

import torch

from bench_core import autocast, time_calls
from sar_core import FLEXVAR_256, GeneratorConfig, SamplingConfig, ScaleSchedule, generate
from sar_core.flexvar_import import import_generator, import_tokenizer

REQUIRED_FILES = ("dist.py", "models/__init__.py", "models/flexvar.py", "models/vq_llama.py", "models/basic_var.py")
REFERENCE_SAMPLER = dict(cfg=2.5, top_k=900, top_p=0.95)  # the arguments FlexVAR's evaluation passes
TARGET_SPEEDUP = 1.3


class ReferenceRepoError(ValueError):
    pass


def check_flexvar_repo(path: str | Path) -> Path:
    """The checkout's root, or an error naming what is missing (before any model is built)."""
    root = Path(path).expanduser().resolve()
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise ReferenceRepoError(
            f"--flexvar-repo {path}: not a FlexVAR checkout (missing {', '.join(missing)}); "
            "clone https://github.com/jiaosiyu1999/FlexVAR and pass its root"
        )
    return root


def import_reference(root: Path) -> tuple[type, dict]:
    """FlexVAR's generator class and its VQ-VAE constructors, imported from the checkout."""
    try:
        importlib.import_module("huggingface_hub")
    except ImportError:
        hub = types.ModuleType("huggingface_hub")
        hub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {"__init_subclass__": classmethod(lambda cls, **kw: None)})
        sys.modules["huggingface_hub"] = hub
    sys.path.insert(0, str(root))
    flexvar = importlib.import_module("models.flexvar")
    vq_llama = importlib.import_module("models.vq_llama")
    if not str(Path(flexvar.__file__).resolve()).startswith(str(root)):
        raise ReferenceRepoError(f"`models` was imported from {flexvar.__file__}, not from {root}: another package shadows it")
    return flexvar.FlexVAR, vq_llama.VQ_models


def build_reference(root: Path, config: GeneratorConfig, schedule: ScaleSchedule, device):
    """A randomly initialised reference generator and VQ-VAE (the reference's init rules), in eval mode."""
    FlexVAR, vq_models = import_reference(root)
    torch.manual_seed(0)
    vq = vq_models["VQ-16"](codebook_size=config.vocab_size, codebook_embed_dim=config.codebook_dim)
    model = FlexVAR(vae_local=vq, num_classes=config.num_classes, depth=config.depth, embed_dim=config.embed_dim,
                    num_heads=config.heads, attn_l2_norm=True, patch_nums=tuple(schedule.scales))
    model.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    model.rng = torch.Generator(device=device)  # the reference makes it on its own default device
    return model.to(device).eval(), vq.to(device).eval()


class LastTokens:
    """Stands in for the reference's VQ-VAE argument and keeps the last token map it is asked to decode."""

    def __init__(self, vq):
        self.vq, self.quantize, self.tokens = vq, vq.quantize, None

    def decode_code(self, code, shape=None, channel_first=True):
        self.tokens = code
        return self.vq.decode_code(code, shape=shape, channel_first=channel_first)


@contextlib.contextmanager
def exact_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def greedy_agreement(ref, ref_vq, gen, schedule: ScaleSchedule, batch: int, device) -> float:
    """Fraction of the last scale's tokens both pick when decoding greedily with FlexVAR's guidance."""
    labels = torch.arange(batch, device=device) % gen.config.num_classes
    capture = LastTokens(ref_vq)
    with exact_fp32(), torch.no_grad():
        ref.autoregressive_infer_cfg(capture, batch, labels, tuple(schedule.scales), g_seed=0, **dict(REFERENCE_SAMPLER, top_k=1))
        ours = generate(gen, None, labels, schedule, SamplingConfig.from_preset("flexvar_eval", top_k=1))
    return (ours.token_maps[-1].reshape(batch, -1) == capture.tokens.reshape(batch, -1)).float().mean().item()


def reference_section(ctx) -> dict:
    s, device = ctx["settings"], ctx["device"]
    config, schedule = GeneratorConfig(**s["reference_model"]), FLEXVAR_256  # VQ-16 at 256 px: a 16x16 latent
    ref, ref_vq = build_reference(ctx["flexvar_repo"], config, schedule, device)
    tok = import_tokenizer(ref_vq.state_dict()).to(device).eval()
    gen = import_generator(ref.state_dict(), tok).to(device).eval()
    out = {"reference": str(ctx["flexvar_repo"]), "schedule": str(schedule), "dtype": s["dtype"],
           "sampler": "flexvar_eval (cfg 2.5 on FlexVAR's ramp, top-k 900, top-p 0.95), both decoding the last scale",
           "greedy_last_scale_agreement": greedy_agreement(ref, ref_vq, gen, schedule, s["reference_batches"][0], device)}
    sampling = SamplingConfig.from_preset("flexvar_eval")
    for B in s["reference_batches"]:
        labels = torch.arange(B, device=device) % config.num_classes
        rng = torch.Generator(device=device).manual_seed(0)

        def ours():
            with autocast(device, s["dtype"]), torch.no_grad():
                generate(gen, tok, labels, schedule, sampling, rng)

        def theirs():
            with autocast(device, s["dtype"]):
                ref.autoregressive_infer_cfg(ref_vq, B, labels, tuple(schedule.scales), g_seed=0, **REFERENCE_SAMPLER)

        ours_ms = time_calls(ours, s["sample_steps"], 1, device)
        ref_ms = time_calls(theirs, s["sample_steps"], 1, device)
        out[f"batch_{B}"] = {"ours_ms": round(ours_ms, 1), "reference_ms": round(ref_ms, 1),
                             "ours_images_per_s": round(B / ours_ms * 1000, 1),
                             "reference_images_per_s": round(B / ref_ms * 1000, 1), "speedup": round(ref_ms / ours_ms, 3)}
    out["checks"] = {"greedy_tokens_agree": out["greedy_last_scale_agreement"] >= 0.99}
    if device.type == "cuda":
        out["checks"].update({f"batch_{B}_speedup>={TARGET_SPEEDUP}": out[f"batch_{B}"]["speedup"] >= TARGET_SPEEDUP
                              for B in s["reference_batches"]})
    return out
