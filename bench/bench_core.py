"""Benchmark of the sar_core model: teacher-forced train step and sampling throughput, as JSON.

    python bench/bench_core.py --preset tiny                      # CPU, Fashion-MNIST-sized model
    python bench/bench_core.py --preset d16 --device cuda --dtype bf16

The d16 preset is FlexVAR-d16 at 256 px (schedule 1..16, V = 8912, 1000 classes) with the
reference VQ-16 tokenizer for decoding; weights are random (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from sar_core import (FLEXVAR_256, GeneratorConfig, MultiScaleVQ, SamplingConfig, ScaleGenerator,
                      ScaleSchedule, TokenizerConfig, generate)

PRESETS = {
    "tiny": dict(
        generator=GeneratorConfig(depth=4, width=128, num_heads=2, num_classes=10, vocab_size=512, codebook_dim=8, pos_grid=8),
        tokenizer=TokenizerConfig(image_size=28, in_channels=1, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                                  z_channels=32, codebook_size=512, codebook_dim=8, norm_groups=8, attention=False),
        schedule=ScaleSchedule((1, 2, 3, 4, 5, 7)),
        batch=32,
    ),
    "d16": dict(generator=GeneratorConfig(depth=16), tokenizer=TokenizerConfig(), schedule=FLEXVAR_256, batch=64),
    "d20": dict(generator=GeneratorConfig(depth=20), tokenizer=TokenizerConfig(), schedule=FLEXVAR_256, batch=32),
    "d24": dict(generator=GeneratorConfig(depth=24), tokenizer=TokenizerConfig(), schedule=FLEXVAR_256, batch=32),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build(preset: dict, device: torch.device):
    torch.manual_seed(0)
    tok = MultiScaleVQ(preset["tokenizer"]).to(device).eval()
    gen = ScaleGenerator(preset["generator"]).to(device)
    gen.set_codebook(tok.codebook.weight)
    return tok, gen


def make_optimizer(gen: ScaleGenerator, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(gen.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                             fused=device.type == "cuda")


def tf_step_fn(gen, opt, labels, idx_BL, schedule, device, dtype):
    V = gen.config.vocab_size

    def step():
        with autocast(device, dtype):
            logits = gen.forward_tokens(gen.drop_labels(labels), idx_BL, schedule)
            loss = F.cross_entropy(logits.float().view(-1, V), idx_BL.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def model_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every benchmark of a generator preset takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, default=None, help="train batch (default: the preset's)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    return p


def keep_freed_memory() -> bool:
    """Keep freed memory in the process (glibc mallopt) instead of handing it back to the kernel.

    PyTorch allocates CPU tensors with malloc, which returns large blocks to the kernel when they
    are freed, so a step pays page faults for memory a step before it released, and how many depends
    on what ran before it (docs/benchmarks.md has the measured counts). On GPU the caching allocator
    already keeps freed memory; this does the same on CPU, so the steps are timed on their own work.
    Returns whether it took effect (False off glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    trimmed = libc.mallopt(m_trim_threshold, 2**30)
    return bool(trimmed and libc.mallopt(m_mmap_threshold, 32 * 2**20))  # 32 MiB: glibc's maximum


def device_and_preset(args) -> tuple[torch.device, dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device), PRESETS[args.preset]


def cpu_allocator(device: torch.device) -> str | None:
    """Before anything is allocated: on CPU keep freed memory, and say how memory was allocated."""
    if device.type != "cpu":
        return None
    return "glibc, freed memory kept (mallopt)" if keep_freed_memory() else "default"


def main(argv=None) -> dict:
    p = model_parser(__doc__)
    p.add_argument("--sample-batch", type=int, default=None, help="images per sampling call (default: train batch)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    device, preset = device_and_preset(args)
    allocator = cpu_allocator(device)
    schedule: ScaleSchedule = preset["schedule"]
    batch = args.batch or preset["batch"]
    tok, gen = build(preset, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)

    g = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.randint(0, gen.config.num_classes, (batch,), generator=g).to(device)
    idx_BL = torch.randint(0, gen.config.vocab_size, (batch, schedule.num_tokens), generator=g).to(device)
    opt = make_optimizer(gen, device)
    gen.train()
    tf_ms = time_calls(tf_step_fn(gen, opt, labels, idx_BL, schedule, device, args.dtype), args.steps, args.warmup, device)
    train_peak = peak_memory_mb(device)

    sample_batch = args.sample_batch or batch
    sample_labels = labels[:sample_batch] if sample_batch <= batch else torch.randint(0, gen.config.num_classes, (sample_batch,), device=device)
    sampling = {}
    for name, cfg in (("cfg", SamplingConfig()), ("no_cfg", SamplingConfig(cfg=0.0))):
        rng = torch.Generator(device=device).manual_seed(0)

        def sample():
            with autocast(device, args.dtype):
                generate(gen, tok, sample_labels, schedule, cfg, rng=rng)

        ms = time_calls(sample, max(1, args.steps // 2), 1, device)
        sampling[name] = {"ms_per_batch": round(ms, 2), "images_per_s": round(sample_batch / ms * 1000, 2)}

    result = {
        "benchmark": "sar_core",
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "cpu_allocator": allocator,
        "generator_params": gen.num_parameters(),
        "schedule": str(schedule),
        "tokens_per_image": schedule.num_tokens,
        "train_batch": batch,
        "tf_step_ms": round(tf_ms, 2),
        "tf_tokens_per_s": round(batch * schedule.num_tokens / tf_ms * 1000, 1),
        "train_peak_memory_mb": round(train_peak, 1),
        "sample_batch": sample_batch,
        "sampling": sampling,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
