"""The GPU check, in one go: training and sampling speed of FlexVAR-d16 and VAR-d16 in bf16, which
attention kernels run, and the platform's GPU path (TorchTrainer, nccl, bf16), written to one JSON file.
Targets and measured numbers: docs/benchmarks.md.

    python bench/gpu_check.py --out gpu_check.json     # one H100 / H200
    python bench/gpu_check.py --out gpu_check.json --flexvar-repo ../FlexVAR  # and against the reference
    python bench/gpu_check.py --smoke --out smoke.json # CPU, tiny model, seconds: the script end to end

Sections (each records its numbers or its error, so one failure does not hide the others; the exit
status is 1 when a section failed or a check did not hold):
  train      d16 bf16 steps at the paper's per-GPU batch 24 on the 680-token schedule (`tf`, `sar`
             with argmax rollouts, `paper`): step time, images/s, model TFLOP/s and MFU against the
             GPU's dense bf16 peak (BF16_PEAK_TFLOPS, or --peak-tflops).
  attention  the scaled-dot-product-attention backend of every attention call in a train step and in
             KV-cached sampling (flash, efficient, cudnn or math, read from the aten op the dispatcher
             chose), and the same calls under sdpa_kernel(flash, efficient, cudnn), which raises if
             none of them can run.
  sampling   KV-cached generation with FlexVAR's evaluation sampler and without guidance, at batch
             64, 128, 256.
  var        VAR-d16 (family var: V = 4096, Cvae = 32, its fixed schedule, the ch160 residual VQ-VAE's
             codebook and phi building the f-hat inputs) at the same batch: `tf`, `sar`, `paper` step
             times and MFU as in `train` (the f-hat convolutions are not in the FLOP count), that the
             paper step's loss is finite and its gradient reaches every block, and KV-cached sampling
             with VAR's evaluation sampler (var_eval) at the first sampling batch.
  reference  with --flexvar-repo: the same sampling with the reference's own code on the same
             weights (bench/reference_sampling.py), after checking that greedy decoding agrees.
  platform   `sar run` of a tiny SAR spec on one Ray Train GPU worker (nccl, bf16).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

# run as a script, bench/ is on sys.path
from bench_core import PRESETS, autocast, build, make_optimizer, peak_memory_mb, time_calls
from reference_sampling import ReferenceRepoError, check_flexvar_repo, reference_section
from sar_core import FLEXVAR_256, GeneratorConfig, MultiScaleVQ, SamplingConfig, ScaleSchedule, generate
from sar_core.checkpoint import save_model
from sar_core.families import build_generator, build_tokenizer
from sar_core.objectives import ObjectiveConfig, TokenBatch, build_objective
from sar_core.tokenizer import TokenizerConfig

REPO = Path(__file__).resolve().parents[1]

BF16_PEAK_TFLOPS = {  # dense tensor-core bf16, by a substring of torch.cuda.get_device_name
    "H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
}

OBJECTIVES = {"tf": ObjectiveConfig(), "sar": ObjectiveConfig(kind="sar"), "paper": ObjectiveConfig.from_preset("paper")}

SDPA_BACKENDS = {  # aten op the dispatcher picks -> backend
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}

VAR_SMOKE_SCALES = (1, 2, 3, 4, 5, 7)
VAR_MODELS = {  # the var section's models: VAR-d16 with the published VQ-VAE's sizes, and a tiny one on CPU
    "gpu": dict(generator=GeneratorConfig(depth=16, vocab_size=4096, codebook_dim=32, family="var", scales=FLEXVAR_256.scales),
                tokenizer=TokenizerConfig(base_channels=160, z_channels=32, codebook_size=4096, codebook_dim=32,
                                          family="var", scales=FLEXVAR_256.scales)),
    "smoke": dict(generator=GeneratorConfig(depth=2, width=128, num_heads=2, num_classes=10, vocab_size=512, codebook_dim=8,
                                            family="var", scales=VAR_SMOKE_SCALES),
                  tokenizer=TokenizerConfig(image_size=28, in_channels=1, base_channels=16, channel_mult=(1, 2, 2),
                                            num_res_blocks=1, z_channels=32, codebook_size=512, codebook_dim=8, norm_groups=8,
                                            attention=False, family="var", scales=VAR_SMOKE_SCALES)),
}

SETTINGS = {  # what each mode runs: the full check on a GPU, a tiny one on CPU
    "gpu": dict(preset="d16", dtype="bf16", batch=24, steps=10, warmup=3, sample_batches=(64, 128, 256),
                sample_steps=3, platform_steps=30, platform_timeout=300,
                reference_model=dict(depth=16), reference_batches=(64, 128, 256), var=VAR_MODELS["gpu"]),
    "smoke": dict(preset="tiny", dtype="fp32", batch=4, steps=2, warmup=1, sample_batches=(4, 8),
                  sample_steps=1, platform_steps=4, platform_timeout=240,
                  reference_model=dict(depth=2, width=128, num_heads=2, num_classes=10, vocab_size=1024),  # > top-k 900
                  reference_batches=(2,), var=VAR_MODELS["smoke"]),
}


# -- FLOPs ---------------------------------------------------------------------------------------

def attention_pairs(schedule: ScaleSchedule) -> int:
    """(query, key) pairs the block-causal mask allows: every token sees its own and coarser scales."""
    seen, pairs = 0, 0
    for n in schedule.token_counts:
        seen += n
        pairs += n * seen
    return pairs


def forward_flops(cfg: GeneratorConfig, schedule: ScaleSchedule, batch: int) -> float:
    """Matmul FLOPs of one forward pass over `batch` images on `schedule`, 2 FLOPs per multiply-add.

    Per token and block 2(3C^2 + C^2 + 2mC^2) (qkv, projection, the two MLP layers, m = mlp ratio),
    the head 2CV and the input embedding 2C*Cvae; per image and block the AdaLN 2*6C^2 and the head's
    AdaLN 2*2C^2; and the attention's QK^T and AV over the (query, key) pairs the block-causal mask
    allows, 4*C*P per block with P = sum_k n_k * sum_{j<=k} n_j (n_k = h_k^2 tokens of scale k). The
    masked-out pairs a kernel may still compute are not counted."""
    C, V, depth, L = cfg.embed_dim, cfg.vocab_size, cfg.depth, schedule.num_tokens
    per_token = depth * 2 * (4 + 2 * cfg.mlp_ratio) * C * C + 2 * C * V
    per_image = depth * 2 * 6 * C * C + 2 * 2 * C * C + 2 * (L - schedule.token_counts[0]) * C * cfg.codebook_dim
    attention = depth * 4 * C * attention_pairs(schedule)
    return batch * (L * per_token + per_image + attention)


def step_flops(kind: str, cfg: GeneratorConfig, schedule: ScaleSchedule, batch: int) -> float:
    """A step's FLOPs: a pass with gradient costs 3x its forward (backward = 2 forwards); tf = 3F,
    sar = 3F (teacher) + 3F (student), paper = sar + F over the first N-1 scales (CFG's null-class
    pass). MFU = step FLOPs / (step time * peak)."""
    full = forward_flops(cfg, schedule, batch)
    if kind == "tf":
        return 3 * full
    flops = 6 * full  # teacher and student passes, both with gradient
    if kind == "paper":
        flops += forward_flops(cfg, ScaleSchedule(schedule.scales[:-1]), batch)
    return flops


def bf16_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


# -- sections ------------------------------------------------------------------------------------

def make_batch(gen, schedule: ScaleSchedule, batch: int, device) -> TokenBatch:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, gen.config.num_classes, (batch,), generator=g)
    tokens = torch.randint(0, gen.config.vocab_size, (batch, schedule.num_tokens), generator=g)
    return TokenBatch(labels, tokens, schedule).to(device)


def train_step_fn(kind: str, gen, opt, batch: TokenBatch, device, dtype: str):
    objective, rng = build_objective(OBJECTIVES[kind]), torch.Generator(device=device).manual_seed(0)
    counter = iter(range(10**9))

    def step():
        with autocast(device, dtype):
            out = objective(gen, batch, next(counter), rng)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def time_objectives(gen, schedule: ScaleSchedule, ctx) -> dict:
    """Step time, images/s, model TFLOP/s and MFU of every objective in OBJECTIVES on `gen`."""
    s, device = ctx["settings"], ctx["device"]
    batch = make_batch(gen, schedule, s["batch"], device)
    opt, out = make_optimizer(gen, device), {}
    gen.train()
    for kind in OBJECTIVES:
        ms = time_calls(train_step_fn(kind, gen, opt, batch, device, s["dtype"]), s["steps"], s["warmup"], device)
        tflops = step_flops(kind, gen.config, schedule, s["batch"]) / (ms / 1000) / 1e12
        out[kind] = {"step_ms": round(ms, 2), "images_per_s": round(s["batch"] / ms * 1000, 1),
                     "model_tflops_per_s": round(tflops, 2),
                     "mfu": round(tflops / ctx["peak"], 4) if ctx["peak"] else None}
    out["ratio_to_tf"] = {k: round(out[k]["step_ms"] / out["tf"]["step_ms"], 3) for k in OBJECTIVES}
    out["step_flops"] = {k: int(step_flops(k, gen.config, schedule, s["batch"])) for k in OBJECTIVES}
    return out


def train_section(ctx) -> dict:
    device = ctx["device"]
    out = time_objectives(ctx["gen"], ctx["schedule"], ctx)
    out["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    if device.type == "cuda":
        out["checks"] = {"tf_mfu>=0.40": bool(ctx["peak"]) and out["tf"]["mfu"] >= 0.40,
                         "paper_images_per_s>=140": out["paper"]["images_per_s"] >= 140}
    return out


def sdpa_ops(fn, device) -> dict[str, int]:
    """How many attention calls of `fn` ran on each SDPA backend."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.key_averages():
        if event.key in SDPA_BACKENDS:
            backend = SDPA_BACKENDS[event.key]
            counts[backend] = counts.get(backend, 0) + event.count
    return counts


def fused_only():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def attention_section(ctx) -> dict:
    s, device, gen, tok, schedule = ctx["settings"], ctx["device"], ctx["gen"], ctx["tok"], ctx["schedule"]
    batch = make_batch(gen, schedule, s["batch"], device)
    step = train_step_fn("tf", gen, make_optimizer(gen, device), batch, device, s["dtype"])
    labels = batch.labels[: s["batch"]]

    def sample():
        with autocast(device, s["dtype"]):
            generate(gen, tok, labels, schedule, SamplingConfig.from_preset("flexvar_eval"), torch.Generator(device).manual_seed(0))

    out = {"train_step": sdpa_ops(step, device), "sampling": sdpa_ops(sample, device)}
    for name, fn in (("train_step", step), ("sampling", sample)):
        try:
            with fused_only():
                fn()
            out[f"{name}_fused_kernels_only"] = "ok"
        except RuntimeError as e:
            out[f"{name}_fused_kernels_only"] = f"failed: {e}"
    out["checks"] = {f"{name}_never_math": "math" not in out[name] and bool(out[name]) for name in ("train_step", "sampling")}
    out["checks"].update({f"{name}_fused_kernels_only": out[f"{name}_fused_kernels_only"] == "ok" for name in ("train_step", "sampling")})
    return out


def sampling_section(ctx) -> dict:
    s, device, gen, tok, schedule = ctx["settings"], ctx["device"], ctx["gen"], ctx["tok"], ctx["schedule"]
    gen.eval()
    guided = SamplingConfig.from_preset("flexvar_eval")
    out = {"schedule": str(schedule), "sampler": "flexvar_eval (cfg 2.5, top-k 900, top-p 0.95); no_cfg: cfg 0"}
    for B in s["sample_batches"]:
        labels = torch.arange(B, device=device) % gen.config.num_classes
        for name, sampling in (("cfg", guided), ("no_cfg", SamplingConfig.from_preset("flexvar_eval", cfg=0.0))):
            rng = torch.Generator(device=device).manual_seed(0)

            def call():
                with autocast(device, s["dtype"]):
                    generate(gen, tok, labels, schedule, sampling, rng)

            ms = time_calls(call, s["sample_steps"], 1, device)
            out[f"batch_{B}_{name}"] = {"ms_per_batch": round(ms, 1), "images_per_s": round(B / ms * 1000, 1)}
    out["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    return out


def var_section(ctx) -> dict:
    s, device = ctx["settings"], ctx["device"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    tok = build_tokenizer(s["var"]["tokenizer"]).eval()
    gen = build_generator(s["var"]["generator"]).attach_tokenizer(tok).to(device)
    tok = tok.to(device)
    schedule = ScaleSchedule(gen.config.scales)
    out = {"generator_params": gen.num_parameters(), "tokenizer_params": sum(p.numel() for p in tok.parameters()),
           "schedule": str(schedule), **time_objectives(gen, schedule, ctx)}
    batch = make_batch(gen, schedule, s["batch"], device)
    gen.zero_grad(set_to_none=True)
    with autocast(device, s["dtype"]):
        step = build_objective(OBJECTIVES["paper"])(gen, batch, 0, torch.Generator(device=device).manual_seed(0))
    step.loss.backward()
    reached = [i for i, b in enumerate(gen.blocks) if b.attn.qkv.weight.grad is not None and b.attn.qkv.weight.grad.abs().sum() > 0]
    out["paper_loss"] = float(step.loss.detach())
    gen.eval()
    B = s["sample_batches"][0]
    labels = torch.arange(B, device=device) % gen.config.num_classes

    def sample():
        with autocast(device, s["dtype"]):
            return generate(gen, tok, labels, schedule, SamplingConfig.from_preset("var_eval"), torch.Generator(device).manual_seed(0))

    ms = time_calls(sample, s["sample_steps"], 1, device)
    images = sample().images
    out[f"sampling_batch_{B}_var_eval"] = {"ms_per_batch": round(ms, 1), "images_per_s": round(B / ms * 1000, 1)}
    out["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    out["checks"] = {"paper_loss_finite": math.isfinite(out["paper_loss"]),
                     "paper_gradient_reaches_every_block": len(reached) == gen.config.depth,
                     "sampled_images_finite": bool(torch.isfinite(images).all())
                     and tuple(images.shape[-2:]) == (tok.config.image_size,) * 2}
    return out


# -- the platform path ---------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.astype(np.uint8).tobytes())


def synthetic_fashion_mnist(folder: Path, n_train: int = 512, n_test: int = 64) -> Path:
    """Random images in Fashion-MNIST's four IDX files: the platform check needs files, not content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 0x801)
    return folder


PLATFORM_SPEC = """\
kind: train
name: gpu-check
resources: {{num_workers: 1, cpus_per_worker: 1, gpus_per_worker: {gpus}}}
storage: {{path: {workspace}}}
mlflow: {{port: 0, experiment: gpu-check}}
precision: {precision}
tokenizer: {tokenizer}
model: {{depth: 2, width: 64, num_heads: 2, num_classes: 10, vocab_size: 64, codebook_dim: 8, pos_grid: 8}}
schedule: {{scales: [1, 2, 3, 5, 7]}}
objective: {{preset: paper}}
data: {{dataset: fashion_mnist, root: {data}}}
optim: {{steps: {steps}, batch_size: 32}}
log: {{every_steps: {steps}}}
checkpoint: {{every_steps: {steps}}}
eval: {{at_end: false}}
"""


def platform_section(ctx) -> dict:
    s, device = ctx["settings"], ctx["device"]
    root = Path(tempfile.mkdtemp(prefix="sar-gpu-check-"))
    torch.manual_seed(0)  # a 28-px tokenizer with a 7x7 latent and 64 codes, untrained: the check needs a file
    tokenizer = MultiScaleVQ(TokenizerConfig(image_size=28, in_channels=1, base_channels=8, channel_mult=(1, 2, 2),
                                             num_res_blocks=1, z_channels=16, codebook_size=64, codebook_dim=8,
                                             norm_groups=4, attention=False))
    gpus, precision = (1, "bf16") if device.type == "cuda" else (0, "fp32")
    spec = root / "gpu-check.yaml"
    spec.write_text(PLATFORM_SPEC.format(gpus=gpus, precision=precision, workspace=root / "workspace",
                                         tokenizer=save_model(tokenizer, root / "tokenizer.safetensors"),
                                         data=synthetic_fashion_mnist(root / "fashion-mnist"), steps=s["platform_steps"]))
    cmd = [sys.executable, "-m", "sar_platform.cli", "run", str(spec), "--num-cpus", "2"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=s["platform_timeout"])
    finally:  # `sar run` leaves the workspace's MLflow server up for `sar ui`; the check does not need it
        subprocess.run([sys.executable, "-m", "sar_platform.cli", "ui", "--workspace", str(root / "workspace"), "--stop"],
                       cwd=REPO, capture_output=True, timeout=60)
    wall = time.perf_counter() - t0
    outputs_file = root / "workspace" / "runs" / "gpu-check" / "outputs.json"
    outputs = json.loads(outputs_file.read_text()) if outputs_file.exists() else {}
    metrics = outputs.get("metrics", {})
    out = {"command": " ".join(cmd[1:]), "exit_status": proc.returncode, "wall_s": round(wall, 1),
           "gpus_per_worker": gpus, "precision": precision, "backend": "nccl" if gpus else "gloo",
           "steps_done": metrics.get("step"), "final_loss": metrics.get("loss/total"), "workspace": str(root),
           "output_tail": (proc.stdout + proc.stderr)[-3000:]}
    out["checks"] = {"run_finished": proc.returncode == 0 and metrics.get("step") == s["platform_steps"]
                     and math.isfinite(metrics.get("loss/total", float("nan")))}
    return out


# -- the check -----------------------------------------------------------------------------------

def run_section(name: str, fn, ctx, result: dict) -> None:
    t0 = time.perf_counter()
    try:
        result[name] = fn(ctx)
    except Exception as e:  # a failing section is recorded, the others still run
        result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:],
                        "checks": {"ran": False}}
    result[name]["seconds"] = round(time.perf_counter() - t0, 1)
    if ctx["device"].type == "cuda":
        torch.cuda.empty_cache()
    print(f"[gpu-check] {name}: {result[name]['seconds']} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps: checks the script, not the GPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: from its name)")
    p.add_argument("--sections", default="train,attention,sampling,var,platform",
                   help="comma-separated, of train, attention, sampling, var, reference, platform")
    p.add_argument("--flexvar-repo", default=None,
                   help="a checkout of jiaosiyu1999/FlexVAR: adds the `reference` section (sampling against its code)")
    args = p.parse_args(argv)
    sections = {"train": train_section, "attention": attention_section, "sampling": sampling_section,
                "var": var_section, "reference": reference_section, "platform": platform_section}
    chosen = args.sections.split(",")
    unknown = [name for name in chosen if name not in sections]
    if unknown:
        p.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(sections)}")
    flexvar_repo = None
    if args.flexvar_repo is not None:
        try:
            flexvar_repo = check_flexvar_repo(args.flexvar_repo)
        except ReferenceRepoError as e:
            p.error(str(e))
        if "reference" not in chosen:
            chosen.insert(chosen.index("platform") if "platform" in chosen else len(chosen), "reference")
    elif "reference" in chosen:
        p.error("--sections reference needs --flexvar-repo PATH (a checkout of jiaosiyu1999/FlexVAR)")
    mode = "smoke" if args.smoke else "gpu"
    settings = SETTINGS[mode]
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine (or --smoke for the CPU smoke test)")
    if device.type == "cpu":
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    preset = PRESETS[settings["preset"]]
    tok, gen = build(preset, device)
    ctx = {"settings": settings, "device": device, "gen": gen, "tok": tok, "schedule": preset["schedule"],
           "peak": bf16_peak_tflops(device, args.peak_tflops), "flexvar_repo": flexvar_repo}
    t0 = time.perf_counter()
    result = {
        "benchmark": "gpu_check", "mode": mode, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "bf16_peak_tflops": ctx["peak"], "preset": settings["preset"], "dtype": settings["dtype"],
        "generator_params": gen.num_parameters(), "schedule": str(preset["schedule"]), "train_batch": settings["batch"],
    }
    for name in chosen:
        run_section(name, sections[name], ctx, result)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    checks = {f"{name}.{k}": v for name in sections if name in result for k, v in result[name].get("checks", {}).items()}
    result["all_checks_pass"] = all(checks.values())
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"out": args.out, "total_seconds": result["total_seconds"], "checks": checks}, indent=2))
    return 0 if result["all_checks_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
