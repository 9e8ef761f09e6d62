"""Train-test gap diagnostics (no grad, eval mode, real labels) and the data of the paper's Fig. 8.

For every scale, under three kinds of context:
    diag/tf/loss/sNN, diag/tf/acc/sNN   teacher forcing: ground-truth inputs (what training sees)
    diag/sf/loss/sNN, diag/sf/acc/sNN   one-step student forcing (SSR, depth 1): inputs drawn from the
                                        teacher pass's predictions, every scale in one pass
    diag/ar/loss/sNN, diag/ar/acc/sNN   full rollout: every input drawn from the model's own previous
                                        scale, scale by scale (what inference sees)
    diag/kl/sNN                         KL(teacher || one-step student) per token
loss = cross-entropy to the ground-truth tokens, acc = argmax accuracy. Aggregates without a scale
suffix average scales 2..N (scale 1 is predicted from the class token alone under every context)
with token weights, and diag/gap/sf = diag/sf/loss - diag/tf/loss, diag/gap/ar = diag/ar/loss -
diag/tf/loss are the headline train-test gaps. Student tokens are drawn with `draw`: in training
the run's probe sampler, on the probe batch, which every run of a comparison shares whatever its
own objective, so that the curves of two runs mean the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from sar_core.data.dataset import ImageDataset
from sar_core.data.order import choose_rows
from sar_core.generation import eval_mode
from sar_core.generator import unwrap
from sar_core.objectives.batch import TokenBatch
from sar_core.objectives.metrics import (per_scale_entries, per_scale_mean, to_floats, token_accuracy,
                                         token_cross_entropy, token_kl)
from sar_core.objectives.rollout import RolloutDraw, sequential_rollout, shifted_inputs, stagger_scale_rollout
from sar_core.schedule import ScaleSchedule


@torch.no_grad()
def gap_diagnostics(model: nn.Module, batch: TokenBatch, draw: RolloutDraw,
                    rng: torch.Generator | None = None) -> dict[str, float]:
    schedule, N = batch.schedule, len(batch.schedule)
    label_B, gt_BL = batch.labels, batch.tokens
    with eval_mode(model):
        x_tf = unwrap(model).scale_inputs(gt_BL, schedule)
        teacher = model(label_B, x_tf, schedule)
        student = stagger_scale_rollout(model, label_B, teacher, x_tf, schedule, range(1, N), draw, rng=rng).logits
        rolled = sequential_rollout(model, label_B, batch.token_maps(), schedule, 0, draw, rng)
        autoregressive = model(label_B, shifted_inputs(model, rolled, schedule), schedule)

    # scale 1 is predicted from the class token alone under every context: the others start at scale 2
    tail, rest = ScaleSchedule(schedule.scales[1:]), slice(schedule.token_counts[0], None)
    counts = torch.tensor(tail.token_counts, dtype=torch.float32, device=gt_BL.device)
    metrics = {}

    def record(name, values_N, sizes):
        metrics.update(per_scale_entries(f"diag/{name}", values_N, sizes))
        metrics[f"diag/{name}"] = (values_N[-len(tail):] * counts).sum() / counts.sum()

    record("tf/loss", per_scale_mean(token_cross_entropy(teacher, gt_BL), schedule), schedule.scales)
    record("tf/acc", per_scale_mean(token_accuracy(teacher, gt_BL), schedule), schedule.scales)
    for name, logits in (("sf", student), ("ar", autoregressive[:, rest])):
        record(f"{name}/loss", per_scale_mean(token_cross_entropy(logits, gt_BL[:, rest]), tail), tail.scales)
        record(f"{name}/acc", per_scale_mean(token_accuracy(logits, gt_BL[:, rest]), tail), tail.scales)
    record("kl", per_scale_mean(token_kl(student, teacher[:, rest]), tail), tail.scales)
    metrics["diag/gap/sf"] = metrics["diag/sf/loss"] - metrics["diag/tf/loss"]
    metrics["diag/gap/ar"] = metrics["diag/ar/loss"] - metrics["diag/tf/loss"]
    return to_floats(metrics)


@dataclass
class StudentForcingTrace:
    """Fig. 8's rows for scales 2..N (scale 1 has no input): every list holds one entry per size in `scales`."""

    scales: tuple[int, ...]
    ground_truth: list[torch.Tensor]  # (B, h, h) ground-truth tokens
    teacher_input: list[torch.Tensor]  # (B, Cvae, h, h) up-sampled ground-truth code vectors of the scale below
    student_input: list[torch.Tensor]  # (B, Cvae, h, h) up-sampled code vectors drawn from the rollout below
    student_prediction: list[torch.Tensor]  # (B, h, h) argmax tokens of the student pass


@torch.no_grad()
def student_forcing_trace(model: nn.Module, batch: TokenBatch, draw: RolloutDraw, depth: int = 1,
                          rng: torch.Generator | None = None) -> StudentForcingTrace:
    """The SSR (tokens drawn by `draw`, `depth` rollout passes) on every scale with full context, in eval mode."""
    schedule, N = batch.schedule, len(batch.schedule)
    with eval_mode(model):
        x_tf = unwrap(model).scale_inputs(batch.tokens, schedule)
        teacher = model(batch.labels, x_tf, schedule)
        ssr = stagger_scale_rollout(model, batch.labels, teacher, x_tf, schedule, range(1, N), draw, depth=depth, rng=rng)
        x_sf = shifted_inputs(model, ssr.inputs, schedule)
    per_scale_logits = ScaleSchedule(schedule.scales[1:]).split(ssr.logits)
    sizes = schedule.scales[1:]
    gt = batch.token_maps()
    return StudentForcingTrace(
        scales=tuple(sizes),
        ground_truth=[gt[i].reshape(-1, h, h) for i, h in enumerate(sizes, 1)],
        teacher_input=input_latents(x_tf, schedule),
        student_input=input_latents(x_sf, schedule),
        student_prediction=[logits.argmax(-1).reshape(-1, h, h) for logits, h in zip(per_scale_logits, sizes)],
    )


def input_latents(x_BlCv: torch.Tensor, schedule) -> list[torch.Tensor]:
    """Generator inputs (B, L - h_1^2, Cvae) -> per scale 2..N latent maps (B, Cvae, h, h)."""
    chunks = x_BlCv.split(schedule.token_counts[1:], dim=1)
    return [x.reshape(x.shape[0], h, h, -1).permute(0, 3, 1, 2) for x, h in zip(chunks, schedule.scales[1:])]


@torch.no_grad()
def probe_batch(data: ImageDataset, split: str, count: int, seed: int, tokenizer: nn.Module, schedule: ScaleSchedule,
                device: torch.device | str = "cpu") -> TokenBatch:
    """`count` seeded-random images of a (held-out) split, tokenized at `schedule`: the one batch
    every run of a comparison measures its train-test gap on."""
    rows = choose_rows(data.split_size(split), count, seed)
    images = data.images(split, tokenizer.config.image_size).batch(rows).to(device)
    labels = torch.as_tensor(data.labels(split)[rows], dtype=torch.long, device=device)
    with eval_mode(tokenizer):
        return TokenBatch(labels, tokenizer.tokenize_flat(images, schedule), schedule)
