"""The training loop every Ray Train worker runs, whatever it trains.

A `Task` says what is trained (model, batches, loss, evaluation, what goes into a checkpoint); this
loop owns everything else once: optimizer and learning-rate schedule, autocast, gradient clipping,
metric averaging across ranks, progress lines, MLflow logging on rank 0, `ray.train.report` (a
collective: every rank calls it equally often) with checkpoints, and resuming from the latest
checkpoint after a worker-group retry or `sar run --resume`.

Resuming is exact: a checkpoint holds, besides weights, optimizer and schedule, every rank's random
generators (torch, numpy, Python), the metric window being averaged, the metrics not yet in
MLflow and the selection rule's evaluations; the batch order is a function of (seed, step). A run
killed and resumed ends, on CPU at the same thread count, with the weights and metrics of an
uninterrupted one. Metrics reach MLflow when
the checkpoint after them is reported (`MetricOutbox`), so steps that a restart repeats are logged
once. A non-finite loss stops training before the update that would spoil the weights.

With a selection rule (`eval.select`), periodic evaluations score the selection sample set, are
logged under `select/`, and feed the rule (services/selection.py); when it says the run stopped
improving, training ends at that (checkpointed) step and the final evaluation follows.

Runs inside Ray Train workers.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn as nn

from sar_core.checkpoint import verify_checkpoint_folder, write_manifest
from sar_core.eval import HEADLINE_METRICS
from sar_platform.services.hold_points import hold
from sar_platform.services.selection import CHECKPOINT_SCORE, SELECTION_FILE, BestStep
from sar_platform.services.tracking import MetricOutbox, RunHandle, environment_tags
from sar_platform.spec.selection import SelectSpec
from sar_platform.spec.train import OptimSpec
from sar_platform.worker.evaluation import artifact_folder

TRAIN_STATE = "train_state.pt"
PENDING_METRICS = "metrics_pending.json"
"""Reports that had not reached MLflow when the checkpoint was written (sent on resume)."""


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
    select: SelectSpec | None = None  # periodic evaluations pick the best step (eval_every > 0)


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


class NonFiniteLoss(RuntimeError):
    """A training loss (or gradient norm) that is NaN or infinite: training stops before the
    optimizer step, so the weights of the last checkpoint stay the last good ones."""


def check_finite(loss: torch.Tensor, metrics: dict[str, float], step: int, what: str = "loss") -> None:
    if math.isfinite(float(loss.detach())) and all(math.isfinite(v) for k, v in metrics.items() if k.startswith(what)):
        return
    bad = [f"{k} = {v}" for k, v in metrics.items() if k.startswith(what) and not math.isfinite(v)] or [f"{what} = {float(loss)}"]
    shown = ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items() if k.startswith("loss") and math.isfinite(v))
    raise NonFiniteLoss(f"step {step + 1}: non-finite {', '.join(bad)}" + (f" (finite: {shown})" if shown else "")
                        + "; training stopped before the update, the last checkpoint holds the last good weights. "
                        "Lower optim.lr, add optim.warmup_steps or a grad_clip, or check the init_from weights")


# -- checkpoints: model, optimizer, schedule, step, every RNG, the metric window, unsent metrics --

def rng_state(device: torch.device) -> dict:
    """Every random generator a training step may draw from (drop-path and class dropout use
    torch's global generator), in a form `torch.load(weights_only=True)` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(t: "Training") -> dict[int, dict]:
    """Every rank's generators (collective), for rank 0 to save."""
    own = rng_state(t.device)
    if t.world == 1:
        return {0: own}
    gathered: list = [None] * t.world
    dist.all_gather_object(gathered, own)
    return dict(enumerate(gathered))


def save_state(directory: Path, t: "Training", step: int, window: "MetricWindow", rngs: dict, pending: list) -> None:
    t.task.save(t.model, directory, step)
    torch.save(
        {"step": step, "optimizer": t.opt.state_dict(), "scheduler": t.sched.state_dict(), "task": t.task.state_dict(),
         "rng": rngs, "window": {"sums": window.sums, "counts": window.counts}},
        directory / TRAIN_STATE,
    )
    (directory / PENDING_METRICS).write_text(json.dumps(pending))
    if t.selection is not None:
        (directory / SELECTION_FILE).write_text(json.dumps(t.selection.state_dict()))
    write_manifest(directory)  # last: a folder without it was not completely written


def restore_state(directory: Path, t: "Training", window: "MetricWindow", outbox: MetricOutbox | None) -> int:
    verify_checkpoint_folder(directory)
    t.task.load(t.model, directory)
    state = torch.load(directory / TRAIN_STATE, map_location="cpu", weights_only=True)
    t.opt.load_state_dict(state["optimizer"])
    t.sched.load_state_dict(state["scheduler"])
    t.task.load_state_dict(state["task"])
    rngs = state.get("rng", {})
    if t.rank in rngs:
        set_rng_state(rngs[t.rank], t.device)
    elif t.rank == 0:
        print(f"[{t.task.name}] the checkpoint has no generator state for {t.world} workers; generators reseeded", flush=True)
    window.sums, window.counts = dict(state["window"]["sums"]), dict(state["window"]["counts"])
    if outbox is not None and (directory / PENDING_METRICS).is_file():
        outbox.restore(json.loads((directory / PENDING_METRICS).read_text()))
    if t.selection is not None and (directory / SELECTION_FILE).is_file():
        t.selection.load_state_dict(json.loads((directory / SELECTION_FILE).read_text()))
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
    start: int = 0  # the first step to take (> 0 after a resume)
    selection: BestStep | None = None  # the selection rule's standing (with eval.select)


def setup(task: Task, settings: LoopSettings, optim: OptimSpec, window: MetricWindow,
          outbox: MetricOutbox | None) -> Training:
    """Build the model and optimizer, restoring them (and every generator, the metric window and
    the metrics not yet in MLflow) from the latest checkpoint if there is one."""
    # Ray Train logs every report at INFO through a logger hanging off the root one; our progress
    # lines already say it, once.
    logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(settings.seed * 1000 + rank)
    model = task.build(device)
    opt = build_optimizer(model, optim, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(optim, settings.steps, s))
    t = Training(task, model, model, opt, sched, device, rank, world,
                 selection=BestStep(settings.select) if settings.select is not None else None)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            t.start = restore_state(Path(d), t, window, outbox)
        if rank == 0:
            print(f"[{task.name}] resuming from step {t.start}", flush=True)
    t.ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    return t


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train_step(t: Training, batch, step: int, optim: OptimSpec, precision: str) -> dict[str, float]:
    t.model.train()
    with autocast(t.device, precision):
        loss, metrics = t.task.loss(t.ddp_model, batch, step)
    check_finite(loss, metrics, step)
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    if optim.grad_clip > 0:
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(t.model.parameters(), optim.grad_clip))
        check_finite(torch.tensor(metrics["grad_norm"]), metrics, step, what="grad_norm")
    t.opt.step()
    t.sched.step()
    return metrics


def evaluate(t: Training, done: int, final: bool, precision: str, handle: RunHandle | None) -> dict[str, float]:
    """The task's evaluation (collective); rank 0 logs its figures and samples."""
    with autocast(t.device, precision):
        metrics, artifacts = t.task.evaluate(t.model, done, final)
    if t.rank == 0 and handle is not None:
        for path in artifacts:
            try:
                handle.log_artifact(path, f"{artifact_folder(path)}/step_{handle.global_step(done):07d}")
            except Exception as e:  # noqa: BLE001 — a figure that did not reach MLflow never stops training
                print(f"[{t.task.name}] could not log {path.name} to MLflow: {e}", flush=True)
    return metrics


def tag_environment(handle: RunHandle | None, workers: int) -> None:
    """The run's `sar.env.*` tags from the node that trains it (the driver's were the head's)."""
    if handle is None:
        return
    try:
        handle.set_tags(environment_tags(workers))
    except Exception as e:  # noqa: BLE001 — tags that did not reach MLflow never stop training
        print(f"could not tag the run's environment: {e}", flush=True)


def run(task: Task, settings: LoopSettings, optim: OptimSpec, handle: RunHandle | None) -> dict[str, float]:
    """Train, checkpointing every `checkpoint_every` steps and at the end (or where the selection
    rule stops training); then the final evaluation, after the final checkpoint (a failing
    evaluation loses no training; a resumed run whose training is complete only evaluates). Rank 0
    returns the final report."""
    window = MetricWindow()
    outbox = MetricOutbox(handle) if ray.train.get_context().get_world_rank() == 0 else None
    t = setup(task, settings, optim, window, outbox)
    if outbox is not None:
        outbox.flush()  # what the checkpoint carried and the server did not get yet
        tag_environment(handle, t.world)
    last: dict[str, float] = {"step": t.start}
    t_last, s_last = time.perf_counter(), t.start
    batches = task.batches(t.rank, t.world, t.start) if t.start < settings.steps else iter(())
    for step in range(t.start, settings.steps):
        if t.selection is not None and t.selection.should_stop:
            break  # resumed from the checkpoint where the rule stopped training
        batch = next(batches)
        window.add(train_step(t, batch, step, optim, settings.precision))
        done = step + 1
        final = done == settings.steps
        diagnose = settings.diagnostics_every and done % settings.diagnostics_every == 0
        evaluate_now = settings.eval_every and done % settings.eval_every == 0 and (not final or t.selection is not None)
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
            scores = evaluate(t, done, False, settings.precision, handle)
            report.update(scores if t.selection is None else select(t, done, scores))
            save = save or (t.selection is not None and t.selection.should_stop)  # where training ends
        if t.rank == 0:
            outbox.add(done, report)
            print_progress(task.name, done, settings.steps, report, elapsed, done - s_last)
        report_to_ray(report, t, done, save, window, outbox)
        if save:
            hold(f"{task.name}.checkpoint-{done}")
        last = report
        t_last, s_last = time.perf_counter(), done
        if t.selection is not None and t.selection.should_stop:
            break
    if settings.eval_at_end:
        last = final_evaluation(t, settings, last, handle, outbox)
    if outbox is not None and not outbox.flush_patiently():
        print(f"[{task.name}] MLflow stayed unreachable: the last reports are kept in the final checkpoint "
              f"({PENDING_METRICS}) and sent by `sar run --resume`", flush=True)
    return last if t.rank == 0 else {}


def final_evaluation(t: Training, settings: LoopSettings, last: dict, handle: RunHandle | None,
                     outbox: MetricOutbox | None) -> dict[str, float]:
    """Evaluate the final weights (their checkpoint is already saved) and report the result with
    the last training metrics, so that Tune and its schedulers see one complete final result."""
    done = t.selection.last_step if t.selection is not None and t.selection.should_stop else settings.steps
    hold(f"{t.task.name}.final-evaluation")
    metrics = evaluate(t, done, True, settings.precision, handle)
    report = {**last, **metrics, "step": done}
    if t.rank == 0:
        outbox.add(done, metrics)
        outbox.commit()  # the evaluation of a saved checkpoint is final: no later step can replace it
        keys = [k for k in HEADLINE_METRICS if k in metrics] or sorted(metrics)  # a tokenizer has no FID
        shown = "  ".join(f"{k.removeprefix('eval/')} {metrics[k]:.4g}" for k in keys if isinstance(metrics[k], (int, float)))
        print(f"[{t.task.name}] final evaluation at step {done}: {shown}", flush=True)
    ray.train.report(report)
    return report


def select(t: Training, done: int, scores: dict[str, float]) -> dict[str, float]:
    """A selection evaluation through the rule (every rank holds the same scores: the rule's
    decision to stop is the same everywhere); rank 0 says when it stops training."""
    if t.world > 1:
        shared = [scores]
        dist.broadcast_object_list(shared, src=0)  # only rank 0 gets the evaluation's results
        scores = shared[0]
    report = t.selection.score(done, scores)
    if t.rank == 0 and t.selection.should_stop:
        print(f"[{t.task.name}] {t.selection.stop_reason()}", flush=True)
    return report


def report_to_ray(metrics, t: Training, step: int, save: bool, window: MetricWindow, outbox: MetricOutbox | None) -> None:
    """Report (a collective); with a checkpoint every `save` step, after which the metrics up to
    it are final and go to MLflow. With a selection rule, a checkpoint's report carries the rule's
    rank of it for Ray Train's retention (`CHECKPOINT_SCORE`; only Ray sees that entry)."""
    if t.selection is not None and save:
        metrics = {**metrics, CHECKPOINT_SCORE: t.selection.checkpoint_score(step)}
    if not save:
        ray.train.report(metrics)
        return
    rngs = gather_rng_states(t)
    with tempfile.TemporaryDirectory() as tmp:
        if t.rank == 0:
            save_state(Path(tmp), t, step, window, rngs, outbox.pending())
        ckpt = ray.train.Checkpoint.from_directory(tmp) if t.rank == 0 else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:08d}")
    if outbox is not None:
        outbox.commit()
        outbox.flush()


def print_progress(name: str, step: int, total: int, metrics: dict, elapsed: float, n: int) -> None:
    rate = n / max(elapsed, 1e-9)
    eta = (total - step) / rate if rate > 0 else float("nan")
    shown = "  ".join(
        f"{k} {metrics[k]:.4g}" for k in ("loss/total", "loss", *HEADLINE_METRICS, *(f"select/{m}" for m in HEADLINE_METRICS))
        if k in metrics
    )
    print(f"[{name}] step {step}/{total}  {shown}  {rate:.2f} it/s  eta {eta / 60:.1f} min", flush=True)
