"""Train-test gap diagnostics (no grad, eval mode, real labels) and the data of the paper's Fig. 8.

For every scale, under three kinds of context (key names: sar_core/gauge_keys.py):
    tf   teacher forcing: ground-truth inputs (what training sees)
    sf   one-step student forcing (SSR, depth 1): inputs drawn from the teacher pass's predictions,
         every scale in one pass
    ar   full rollout: every input drawn from the model's own previous scale, scale by scale (what
         inference sees)
each scored by cross-entropy to the ground-truth tokens (`loss`) and top-1 agreement of the argmax
with them (`acc`), plus KL(teacher || one-step student). Scale 1 is predicted from the class token
alone under every context, so aggregates average scales 2..N with token weights.

Three gauges of the train-test gap, each context against teacher forcing on the same images:
    gap        raw loss gap; a model can lower it by hedging (dividing its logits by T > 1)
    cal/gap    loss gap of logits / T_fit, T_fit fitted on the probe's calibration part and measured on
               the rest (calibration.py): a global temperature cannot move it
    acc_gap    agreement gap: argmax does not see a temperature at all
Student tokens are drawn with `draw` (`draws` times per image, so that stochastic rollouts see
different contexts): in training the run's probe sampler, on the probe batch, which every run of a
comparison shares whatever its own objective, so that the curves of two runs mean the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import sar_core.gauge_keys as keys
from sar_core.data.dataset import ImageDataset
from sar_core.data.order import choose_rows
from sar_core.generation import eval_mode
from sar_core.generator import unwrap
from sar_core.objectives.batch import TokenBatch
from sar_core.objectives.calibration import calibrated_draw, calibration_split, fit_temperature
from sar_core.objectives.metrics import per_scale_mean, to_floats, token_accuracy, token_cross_entropy, token_kl
from sar_core.objectives.rollout import RolloutDraw, sequential_rollout, shifted_inputs, stagger_scale_rollout
from sar_core.schedule import ScaleSchedule


@dataclass(frozen=True)
class GaugeSettings:
    """How the probe is measured beyond its images and sampler.

    draws: rollouts per probe image (K); its SF and AR contexts are drawn K times, so a stochastic
        sampler gives K different contexts per image (argmax gives one, K times).
    calibration_fraction: share of the probe's images the temperature is fitted on; the calibrated
        gaps are measured on the others.
    seed: seeds which images are the calibration part.
    """

    draws: int = 1
    calibration_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f"draws must be an integer >= 1; got {self.draws!r}")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1); got {self.calibration_fraction}")


@dataclass
class ContextLogits:
    """One probe measurement: teacher logits (B, L, V) once per image, and the student (SSR) and
    full-rollout logits of scales 2..N (B*K, l, V), rows image-major (image b, draw j at b*K + j)."""

    teacher: torch.Tensor
    sf: torch.Tensor
    ar: torch.Tensor
    draws: int
    rolled: list[torch.Tensor]  # the full rollout's token maps of scales 1..N-1, (B*K, h^2): its contexts


@torch.no_grad()
def context_logits(model: nn.Module, batch: TokenBatch, draw: RolloutDraw, draws: int = 1,
                   rng: torch.Generator | None = None, teacher: torch.Tensor | None = None) -> ContextLogits:
    """The teacher pass (unless given) and `draws` SSR and full-rollout passes per image."""
    schedule, N = batch.schedule, len(batch.schedule)
    rest = slice(schedule.token_counts[0], None)
    with eval_mode(model):
        x_tf = unwrap(model).scale_inputs(batch.tokens, schedule)
        teacher = model(batch.labels, x_tf, schedule) if teacher is None else teacher
        label_R, teacher_R, x_tf_R = (t.repeat_interleave(draws, 0) for t in (batch.labels, teacher, x_tf))
        gt_maps_R = [m.repeat_interleave(draws, 0) for m in batch.token_maps()]
        student = stagger_scale_rollout(model, label_R, teacher_R, x_tf_R, schedule, range(1, N), draw, rng=rng,
                                        ground_truth=gt_maps_R).logits
        rolled = sequential_rollout(model, label_R, gt_maps_R, schedule, 0, draw, rng)
        autoregressive = model(label_R, shifted_inputs(model, rolled, schedule), schedule)[:, rest]
    return ContextLogits(teacher, student, autoregressive, draws, rolled)


@torch.no_grad()
def gap_diagnostics(model: nn.Module, batch: TokenBatch, draw: RolloutDraw, rng: torch.Generator | None = None,
                    gauges: GaugeSettings = GaugeSettings()) -> dict[str, float]:
    """Every `diag/...` metric of the module docstring on `batch` (keys: sar_core/gauge_keys.py).

    Raw: the model as it is, on every image. Calibrated: the model with logits / T_fit, contexts
    drawn from those logits too (a stochastic sampler's contexts would otherwise change with the
    temperature), on the measurement images. Argmax contexts are the same for both: drawn once."""
    cal_rng = same_stream(rng)  # the calibrated draws take the raw ones' uniforms, however many those used
    raw = context_logits(model, batch, draw, gauges.draws, rng)
    calibration, measurement = calibration_split(len(batch.labels), gauges.calibration_fraction, gauges.seed)
    rest = slice(batch.schedule.token_counts[0], None)
    fit_rows = calibration.to(batch.tokens.device)
    temperature = fit_temperature(raw.teacher[fit_rows, rest], batch.tokens[fit_rows, rest])
    cal = raw if draw.strategy == "argmax" else \
        context_logits(model, batch, calibrated_draw(draw, temperature), gauges.draws, cal_rng, raw.teacher)
    metrics = context_metrics(raw, batch, None, 1.0, calibrated=False)
    metrics.update(context_metrics(cal, batch, measurement, temperature, calibrated=True))
    metrics[keys.TEMPERATURE] = torch.tensor(temperature)
    return to_floats(metrics)


def same_stream(rng: torch.Generator | None) -> torch.Generator | None:
    """A generator that replays `rng` from its current state (None: the global RNG, no replay)."""
    if rng is None:
        return None
    return torch.Generator(rng.device).set_state(rng.get_state())


def context_metrics(logits: ContextLogits, batch: TokenBatch, images: torch.Tensor | None, temperature: float,
                    calibrated: bool) -> dict[str, torch.Tensor]:
    """Loss, agreement, their gaps and the KL of the probe `images` (None: all) with logits / temperature."""
    schedule, K = batch.schedule, logits.draws
    tail, rest = ScaleSchedule(schedule.scales[1:]), slice(schedule.token_counts[0], None)
    gt_BL, teacher, contexts = batch.tokens, logits.teacher, {"sf": logits.sf, "ar": logits.ar}
    if images is not None:
        images = images.to(gt_BL.device)
        rows = (images[:, None] * K + torch.arange(K, device=images.device)).flatten()  # every draw of those images
        gt_BL, teacher, contexts = gt_BL[images], teacher[images], {c: z[rows] for c, z in contexts.items()}
    gt_Rl = gt_BL.repeat_interleave(K, 0)[:, rest]
    counts = torch.tensor(tail.token_counts, dtype=torch.float32, device=gt_BL.device)
    metrics = {}

    def record(name, values_N):
        """Per scale, and the token-weighted mean of scales 2..N (values of scale 1 are left out)."""
        sizes = schedule.scales[-len(values_N):]
        metrics.update({keys.diag_key(name, s, calibrated): v for s, v in zip(sizes, values_N.unbind(0))})
        metrics[keys.diag_key(name, calibrated=calibrated)] = (values_N[-len(tail):] * counts).sum() / counts.sum()
        return values_N[-len(tail):]

    def scaled(z):
        return z if temperature == 1.0 else z.float() / temperature

    teacher, contexts = scaled(teacher), {c: scaled(z) for c, z in contexts.items()}
    tf_loss = record("tf/loss", per_scale_mean(token_cross_entropy(teacher, gt_BL), schedule))
    tf_acc = record("tf/acc", per_scale_mean(token_accuracy(teacher, gt_BL), schedule))
    for name, z in contexts.items():
        record(f"gap/{name}", record(f"{name}/loss", per_scale_mean(token_cross_entropy(z, gt_Rl), tail)) - tf_loss)
        record(f"acc_gap/{name}", tf_acc - record(f"{name}/acc", per_scale_mean(token_accuracy(z, gt_Rl), tail)))
    record("kl", per_scale_mean(token_kl(contexts["sf"], teacher.repeat_interleave(K, 0)[:, rest]), tail))
    return metrics


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
        gt = batch.token_maps()
        ssr = stagger_scale_rollout(model, batch.labels, teacher, x_tf, schedule, range(1, N), draw, depth=depth, rng=rng,
                                    ground_truth=gt)
        x_sf = unwrap(model).staggered_inputs(gt, ssr.inputs, schedule, "ground_truth_below")
    per_scale_logits = ScaleSchedule(schedule.scales[1:]).split(ssr.logits)
    sizes = schedule.scales[1:]
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
