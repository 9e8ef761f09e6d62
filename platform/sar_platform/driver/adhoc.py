"""`sar sample` and `sar eval`: one checkpoint, this machine, no Ray or MLflow (for quick looks;
`kind: eval` specs score on a cluster and track the result).

The command line builds a request (what to generate and how to score it, every flag in it) and
hands it here; nothing else reaches the generation.

Runs in the `sar` process.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sar_core.checkpoint import load_model
from sar_core.eval import MetricConfig, evaluate
from sar_core.eval.export import save_samples_npz
from sar_core.eval.figures import sample_grid
from sar_core.eval.guidance import guidance_table
from sar_core.generation import generate
from sar_core.schedule import ScaleSchedule
from sar_core.token_sampling import SamplingConfig
from sar_platform.spec import DataSpec


@dataclass(frozen=True)
class Checkpoints:
    """What `sar sample` and `sar eval` generate with."""

    generator: str
    tokenizer: str
    schedule: tuple[int, ...] | None  # None: every scale 1..the tokenizer's latent size
    sampling: SamplingConfig  # sar eval: an EvalSampling, whose cfg may be a guidance grid
    out: str
    device: str  # cuda, cpu or auto


@dataclass(frozen=True)
class SampleRequest:
    checkpoints: Checkpoints
    labels: tuple[int, ...] | None  # None: 8 of each of the first 10 classes
    seed: int
    npz: bool


@dataclass(frozen=True)
class ScoreRequest:
    checkpoints: Checkpoints
    metrics: MetricConfig  # its seed seeds the generation and the reference images
    data: DataSpec


def _setup(c: Checkpoints):
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device)
    tokenizer = load_model(c.tokenizer, kind="tokenizer", device=device).eval()
    generator = load_model(c.generator, kind="generator", device=device).eval()
    latent = tokenizer.config.latent_size
    schedule = ScaleSchedule(c.schedule or range(1, latent + 1)).check_latent(latent)
    return device, tokenizer, generator, schedule


def sample_checkpoint(request: SampleRequest) -> None:
    c = request.checkpoints
    device, tokenizer, generator, schedule = _setup(c)
    classes = generator.config.num_classes
    labels = (torch.tensor(request.labels) if request.labels else torch.arange(min(classes, 10)).repeat_interleave(8))
    rng = torch.Generator(device=device).manual_seed(request.seed)
    with torch.no_grad():
        out = generate(generator, tokenizer, labels.to(device), schedule, c.sampling, rng)
    folder = Path(c.out)
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{Path(c.generator).name}, schedule {schedule}, {c.sampling.summary()}, seed {request.seed}"
    grid = sample_grid(out.images.cpu(), labels, folder / "samples.png", title=title)
    print(f"{len(labels)} samples -> {grid}")
    if request.npz:
        print(f"npz -> {save_samples_npz(folder / 'samples.npz', out.images.cpu(), labels)}")


def score_checkpoint(request: ScoreRequest) -> None:
    c = request.checkpoints
    device, tokenizer, generator, schedule = _setup(c)
    data = request.data.image_dataset(tokenizer.config.image_size)
    result = evaluate(generator, tokenizer, c.sampling, request.metrics, schedule, c.out, data=data, device=device)
    grid = getattr(c.sampling, "grid", None)
    seeds = {"seed": request.metrics.seed}
    if grid is not None:
        seeds["selection_seed"] = request.metrics.selection_draw_seed
        seeds.update({f"sampler/cfg_{g:g}": c.sampling.at(g).summary() for g in grid})
    print(json.dumps({"metrics": result.metrics, "figures": {k: str(v) for k, v in result.figures.items()},
                      **result.info, "sampling": c.sampling.summary(), "schedule": str(schedule), **seeds}, indent=2))
    if grid is not None:
        print(guidance_table(result.metrics, grid))
