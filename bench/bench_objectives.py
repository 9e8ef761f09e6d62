"""Benchmark of the training objectives: median train step (forward + backward + AdamW) of every
objective kind, and its ratio to teacher forcing, as JSON.

    python bench/bench_objectives.py --preset tiny --threads 1            # CPU
    python bench/bench_objectives.py --preset d16 --device cuda --dtype bf16

Targets: SAR <= 2.0x the teacher-forcing step, the paper preset (whose CFG rollouts add a
no-grad null-class pass over scales 1..N-1 and a top-p draw) <= 2.2x; at student_fraction 0.5,
<= 1.6x. They are judged on the median over rounds of each variant's ratio to the TF step timed
just before it (with quartiles), on CPU in process time, on GPU in wall time.
All variants share one model and optimizer (memory for one model; speed barely depends on the
weights: only the few top-p draws that fall outside the nucleus are redrawn). Every round times
each variant right after a TF step, so that a shared machine's drifting speed hits both alike;
process time ignores the slices other processes of a shared machine take. On CPU freed
memory stays in the process (`bench_core.keep_freed_memory`), so no step pays page faults for
memory the step before it released. Batches are random tokens on the preset's fixed schedule.
"""
from __future__ import annotations

import itertools
import json
import platform
import statistics
import time

import torch

# run as a script, bench/ is on sys.path
from bench_core import autocast, build, cpu_allocator, device_and_preset, make_optimizer, model_parser, peak_memory_mb, time_calls
from sar_core.objectives import OBJECTIVE_KINDS, OBJECTIVE_PRESETS, ObjectiveConfig, TokenBatch, build_objective


def variants(hybrid_scale: int) -> dict[str, ObjectiveConfig]:
    """Every kind of the table at its defaults; SAR with each sampling strategy, at student_fraction 1
    and 0.5, every preset, and noisy context with the model's own draws."""
    kind_settings = {"sf_hybrid": dict(hybrid_scale=hybrid_scale)}
    kinds = {kind: ObjectiveConfig(kind=kind, **kind_settings.get(kind, {})) for kind in OBJECTIVE_KINDS}
    presets = {name: ObjectiveConfig.from_preset(name) for name in OBJECTIVE_PRESETS}
    return {
        **kinds,
        "sar@0.5": ObjectiveConfig(kind="sar", student_fraction=0.5),
        "sar_stochastic": ObjectiveConfig(kind="sar", sampling="stochastic"),
        "sar_cfg": ObjectiveConfig(kind="sar", sampling="cfg"),
        "sar_cfg@0.5": ObjectiveConfig(kind="sar", sampling="cfg", student_fraction=0.5),
        "sar_depth2": ObjectiveConfig(kind="sar", rollout_depth=2),
        **presets,
        "paper@0.5": ObjectiveConfig.from_preset("paper", student_fraction=0.5),
        "noisy_context_model": ObjectiveConfig(kind="noisy_context", noise_source="model"),
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


def ratio_summary(ratios: list[float]) -> dict[str, float]:
    """Median and quartiles over rounds of a variant's step time over its paired TF step."""
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"median": round(median, 3), "q1": round(q1, 3), "q3": round(q3, 3)}


def main(argv=None) -> dict:
    p = model_parser(__doc__)
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (each: every variant after a TF step)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated variants to time (default: all; tf is always timed)")
    args = p.parse_args(argv)
    device, preset = device_and_preset(args)
    allocator = cpu_allocator(device)
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

    # each round times every variant right after a TF step of its own: the pair sees the same
    # machine speed, and the variant is judged on the median over rounds of its ratio to that step
    wall, cpu = {name: [] for name in steps}, {name: [] for name in steps}
    pair_wall, pair_cpu = {name: [1.0] * args.rounds for name in steps}, {name: [1.0] * args.rounds for name in steps}

    def timed(name: str, r: int) -> tuple[float, float]:
        fn, n = steps[name]
        t = time.process_time()
        ms = time_calls(fn, steps=1, warmup=0, device=device) / n
        ms_cpu = (time.process_time() - t) * 1000 / n
        if r >= 0:
            wall[name].append(ms)
            cpu[name].append(ms_cpu)
        return ms, ms_cpu

    for r in range(-args.warmup, args.rounds):
        if len(steps) == 1:
            timed("tf", r)
        for name in steps:
            if name != "tf":
                tf_ms, tf_cpu = timed("tf", r)
                ms, ms_cpu = timed(name, r)
                if r >= 0:
                    pair_wall[name][r], pair_cpu[name][r] = ms / tf_ms, ms_cpu / tf_cpu
    median = {name: statistics.median(ts) for name, ts in wall.items()}
    cpu_median = {name: statistics.median(ts) for name, ts in cpu.items()}
    # on CPU judged on process time: other processes of a shared machine inflate wall time
    paired = {name: ratio_summary(r) for name, r in (pair_cpu if device.type == "cpu" else pair_wall).items()}
    tf = median["tf"]
    result = {
        "benchmark": "sar_core.objectives",
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "cpu_allocator": allocator,
        "schedule": str(schedule),
        "train_batch": batch_size,
        "rounds": args.rounds,
        "hybrid_scale": hybrid_scale,
        "step_ms": {name: round(ms, 2) for name, ms in median.items()},
        "ratio_to_tf": {name: round(ms / tf, 3) for name, ms in median.items()},
        # on a shared CPU, process time ignores the slices other processes take; on GPU it is host time only
        "cpu_step_ms": {name: round(ms, 2) for name, ms in cpu_median.items()},
        "cpu_ratio_to_tf": {name: round(ms / cpu_median["tf"], 3) for name, ms in cpu_median.items()},
        "paired_ratio_to_tf": {name: r["median"] for name, r in paired.items()},
        "paired_ratio_quartiles": {name: [r["q1"], r["q3"]] for name, r in paired.items()},
        "targets": {f"{name}<={limit}x": paired[name]["median"] <= limit for name, limit in TARGETS.items() if name in paired},
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
