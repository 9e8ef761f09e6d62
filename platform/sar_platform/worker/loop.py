"""The training loop every Ray Train worker runs, whatever it trains.

A `Task` says what is trained (model, batches, loss, evaluation, what goes into a checkpoint); this
loop owns everything else once: optimizer and learning-rate schedule, autocast, gradient clipping,
metric averaging across ranks, progress lines, MLflow logging on rank 0, `ray.train.report` (a
collective: every rank calls it equally often) with checkpoints, and resuming from the latest
checkpoint after a worker-group retry or `sar run --resume`.

Runs inside Ray Train workers.
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn as nn

from sar_core.eval import HEADLINE_METRICS
from sar_platform.services.tracking import RunHandle
from sar_platform.spec.train import OptimSpec
from sar_platform.worker.evaluation import artifact_folder

TRAIN_STATE = "train_state.pt"


class Task(Protocol):
    name: str

    def build(self, device: torch.device) -> nn.Module: ...
    def batches(self, rank: int, world: int, start_step: int) -> Iterator[Any]: ...
    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...
    def diagnostics(self, model: nn.Module, batch: Any, step: int) -> dict[str, float]: ...
    def evaluate(self, model: nn.Module, step: int, final: bool) -> tuple[dict[str, float], list[Path]]: ...
    def save(self, model: nn.Module, directory: Path, step: int) -> None: ...
    def load(self, model: nn.Module, directory: Path) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    log_every: int
    checkpoint_every: int
    diagnostics_every: int  # 0: never
    eval_every: int  # 0: only at the end (if eval_at_end)
    eval_at_end: bool
    precision: str  # "fp32" | "bf16"
    seed: int


def no_decay(name: str, p: nn.Parameter) -> bool:
    """The reference recipe: no weight decay on 1-D tensors (biases, gains) and position/scale maps."""
    return p.ndim <= 1 or name.endswith(".bias") or any(k in name for k in ("pos_grid", "start_pos", "log_scale"))


def build_optimizer(model: nn.Module, optim: OptimSpec, device: torch.device) -> torch.optim.Optimizer:
    decay, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (other if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, fused=device.type == "cuda")


def lr_factor(optim: OptimSpec, total_steps: int, step: int) -> float:
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.lr_schedule == "constant":
        return 1.0
    progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
    shape = 1 - progress if optim.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape


def mean_across_ranks(metrics: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return metrics
    gathered: list[dict[str, float]] = [{} for _ in range(world)]
    dist.all_gather_object(gathered, metrics)
    keys = set().union(*gathered)
    return {k: sum(g[k] for g in gathered if k in g) / sum(k in g for g in gathered) for k in keys}


class MetricWindow:
    """Averages the per-step metrics between two reports."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {k: s / self.counts[k] for k, s in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out


def save_state(directory: Path, task: Task, model, opt, sched, step: int) -> None:
    task.save(model, directory, step)
    torch.save(
        {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "task": task.state_dict()},
        directory / TRAIN_STATE,
    )


def restore_state(directory: Path, task: Task, model, opt, sched) -> int:
    task.load(model, directory)
    state = torch.load(directory / TRAIN_STATE, map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    task.load_state_dict(state["task"])
    return int(state["step"])


def precision(job) -> str:
    """`auto`: bf16 autocast on GPU workers, fp32 on CPU ones."""
    if job.precision == "auto":
        return "bf16" if job.resources.use_gpu else "fp32"
    return job.precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Training:
    """One worker's training state."""

    task: Task
    model: nn.Module
    ddp_model: nn.Module  # the model wrapped for data-parallel gradients (itself on one worker)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    rank: int
    world: int
    start: int  # the first step to take (> 0 after a resume)


def setup(task: Task, settings: LoopSettings, optim: OptimSpec) -> Training:
    """Build the model and optimizer, restoring them from the latest checkpoint if there is one."""
    # Ray Train logs every report at INFO through a logger hanging off the root one; our progress
    # lines already say it, once.
    logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed * 1000 + rank)
    model = task.build(device)
    opt = build_optimizer(model, optim, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(optim, settings.steps, s))
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = restore_state(Path(d), task, model, opt, sched)
        if rank == 0:
            print(f"[{task.name}] resuming from step {start}", flush=True)
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    return Training(task, model, ddp_model, opt, sched, device, rank, world, start)


def train_step(t: Training, batch, step: int, optim: OptimSpec, precision: str) -> dict[str, float]:
    t.model.train()
    with autocast(t.device, precision):
        loss, metrics = t.task.loss(t.ddp_model, batch, step)
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    if optim.grad_clip > 0:
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(t.model.parameters(), optim.grad_clip))
    t.opt.step()
    t.sched.step()
    return metrics


def evaluate(t: Training, done: int, final: bool, precision: str, handle: RunHandle | None) -> dict[str, float]:
    """The task's evaluation (collective); rank 0 logs its figures and samples."""
    with autocast(t.device, precision):
        metrics, artifacts = t.task.evaluate(t.model, done, final)
    if t.rank == 0 and handle is not None:
        for path in artifacts:
            handle.log_artifact(path, f"{artifact_folder(path)}/step_{handle.global_step(done):07d}")
    return metrics


def run(task: Task, settings: LoopSettings, optim: OptimSpec, handle: RunHandle | None) -> None:
    t = setup(task, settings, optim)
    window, t_last, s_last = MetricWindow(), time.perf_counter(), t.start
    batches = task.batches(t.rank, t.world, t.start)
    for step in range(t.start, settings.steps):
        batch = next(batches)
        window.add(train_step(t, batch, step, optim, settings.precision))
        done = step + 1
        final = done == settings.steps
        diagnose = settings.diagnostics_every and done % settings.diagnostics_every == 0
        evaluate_now = (settings.eval_every and done % settings.eval_every == 0 and not final) or (final and settings.eval_at_end)
        save = done % settings.checkpoint_every == 0 or final
        if not (done % settings.log_every == 0 or diagnose or evaluate_now or save):
            continue

        report = window.pop()
        if diagnose:
            with autocast(t.device, settings.precision):
                report.update(task.diagnostics(t.ddp_model, batch, step))
        report = mean_across_ranks(report, t.world)
        elapsed = time.perf_counter() - t_last
        report.update(step=done, lr=t.sched.get_last_lr()[0], steps_per_s=(done - s_last) / max(elapsed, 1e-9))
        if evaluate_now:
            report.update(evaluate(t, done, final, settings.precision, handle))
        if t.rank == 0:
            if handle is not None:
                handle.log_metrics(report, done)
            print_progress(task.name, done, settings.steps, report, elapsed, done - s_last)
        report_to_ray(report, task, t.model, t.opt, t.sched, done, save, t.rank)
        t_last, s_last = time.perf_counter(), done


def report_to_ray(metrics, task, model, opt, sched, step: int, save: bool, rank: int) -> None:
    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            save_state(Path(tmp), task, model, opt, sched, step)
        ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:08d}")


def print_progress(name: str, step: int, total: int, metrics: dict, elapsed: float, n: int) -> None:
    rate = n / max(elapsed, 1e-9)
    eta = (total - step) / rate if rate > 0 else float("nan")
    shown = "  ".join(
        f"{k} {metrics[k]:.4g}" for k in ("loss/total", "loss", *HEADLINE_METRICS) if k in metrics
    )
    print(f"[{name}] step {step}/{total}  {shown}  {rate:.2f} it/s  eta {eta / 60:.1f} min", flush=True)
