"""Benchmark of the training objectives: median train step (forward + backward + AdamW) of every
objective kind, and its ratio to teacher forcing, as JSON.

    python bench/bench_objectives.py --preset tiny --threads 1            # CPU
    python bench/bench_objectives.py --preset d16 --device cuda --dtype bf16

Targets (issue 10): SAR <= 2.0x the teacher-forcing step, the paper preset (whose CFG rollouts add a
no-grad null-class pass over scales 1..N-1 and a top-p draw over the vocabulary) <= 2.2x; at
student_fraction 0.5, <= 1.6x. On CPU they are judged on process time, on GPU on wall time.
All variants share one model and optimizer (memory for one model, speed does not depend on the
weights) and are timed round-robin, one step each per round, so that a shared machine's drifting
speed hits every variant alike; on CPU the process time of each step is reported too, which the
other processes of a shared machine do not inflate. Batches are random tokens on the preset's
fixed schedule.
"""
from __future__ import annotations

import itertools
import json
import platform
import statistics
import time

import torch

# run as a script, bench/ is on sys.path
from bench_core import autocast, build, device_and_preset, make_optimizer, model_parser, peak_memory_mb, time_calls
from sar_core.objectives import ObjectiveConfig, TokenBatch, build_objective


def variants(hybrid_scale: int) -> dict[str, ObjectiveConfig]:
    """Every kind; SAR with each sampling strategy, at student_fraction 1 and 0.5, and both presets."""
    return {
        "tf": ObjectiveConfig(),
        "sar": ObjectiveConfig(kind="sar"),
        "sar@0.5": ObjectiveConfig(kind="sar", student_fraction=0.5),
        "sar_stochastic": ObjectiveConfig(kind="sar", sampling="stochastic"),
        "sar_cfg": ObjectiveConfig(kind="sar", sampling="cfg"),
        "sar_cfg@0.5": ObjectiveConfig(kind="sar", sampling="cfg", student_fraction=0.5),
        "sar_depth2": ObjectiveConfig(kind="sar", rollout_depth=2),
        "paper": ObjectiveConfig.from_preset("paper"),
        "paper@0.5": ObjectiveConfig.from_preset("paper", student_fraction=0.5),
        "released_code": ObjectiveConfig.from_preset("released_code"),
        "sf_full": ObjectiveConfig(kind="sf_full"),
        "sf_alternate": ObjectiveConfig(kind="sf_alternate"),
        "sf_interleave": ObjectiveConfig(kind="sf_interleave"),
        "sf_hybrid": ObjectiveConfig(kind="sf_hybrid", hybrid_scale=hybrid_scale),
    }


def make_step(config, gen, opt, batch, device, dtype):
    objective, rng = build_objective(config), torch.Generator(device=device).manual_seed(0)
    steps = 2 if config.kind == "sf_alternate" else 1  # one TF and one SF step, timed together
    counter = itertools.count()

    def step():
        for _ in range(steps):
            with autocast(device, dtype):
                out = objective(gen, batch, next(counter), rng)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

    return step, steps


TARGETS = {"sar": 2.0, "paper": 2.2, "sar@0.5": 1.6, "paper@0.5": 1.6}


def targets(step_ms: dict) -> dict[str, bool]:
    return {f"{name}<={limit}x": step_ms[name] / step_ms["tf"] <= limit for name, limit in TARGETS.items() if name in step_ms}


def main(argv=None) -> dict:
    p = model_parser(__doc__)
    p.add_argument("--rounds", type=int, default=15, help="timed round-robin rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated variants to time (default: all; tf is always timed)")
    args = p.parse_args(argv)
    device, preset = device_and_preset(args)
    schedule, batch_size = preset["schedule"], args.batch or preset["batch"]
    _, gen = build(preset, device)
    gen.train()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, gen.config.num_classes, (batch_size,), generator=g)
    tokens = torch.randint(0, gen.config.vocab_size, (batch_size, schedule.num_tokens), generator=g)
    batch = TokenBatch(labels, tokens, schedule).to(device)
    opt = make_optimizer(gen, device)
    hybrid_scale = schedule[len(schedule) // 2]
    chosen = {"tf", *args.only.split(",")} if args.only else None
    steps = {name: make_step(cfg, gen, opt, batch, device, args.dtype) for name, cfg in variants(hybrid_scale).items()
             if chosen is None or name in chosen}

    wall, cpu = {name: [] for name in steps}, {name: [] for name in steps}
    for r in range(args.warmup + args.rounds):
        for name, (fn, n) in steps.items():
            t = time.process_time()
            ms = time_calls(fn, steps=1, warmup=0, device=device) / n
            if r >= args.warmup:
                wall[name].append(ms)
                cpu[name].append((time.process_time() - t) * 1000 / n)
    median = {name: statistics.median(ts) for name, ts in wall.items()}
    cpu_median = {name: statistics.median(ts) for name, ts in cpu.items()}
    tf = median["tf"]
    result = {
        "benchmark": "sar_core.objectives",
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "schedule": str(schedule),
        "train_batch": batch_size,
        "rounds": args.rounds,
        "hybrid_scale": hybrid_scale,
        "step_ms": {name: round(ms, 2) for name, ms in median.items()},
        "ratio_to_tf": {name: round(ms / tf, 3) for name, ms in median.items()},
        # on a shared CPU, process time ignores the slices other processes take; on GPU it is host time only
        "cpu_step_ms": {name: round(ms, 2) for name, ms in cpu_median.items()},
        "cpu_ratio_to_tf": {name: round(ms / cpu_median["tf"], 3) for name, ms in cpu_median.items()},
        # on CPU judged on process time: on a shared machine other processes inflate wall time
        "targets": targets(cpu_median if device.type == "cpu" else median),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
