"""Training the scale-wise generator with any objective (tf / sar / sf_*): the `train` job's worker.

Runs inside Ray Train workers.
"""
from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from sar_core.checkpoint import CheckpointError, load_model, load_state_strict, read_tensors, save_model
from sar_core.eval.continuation import evaluate_continuation
from sar_core.families import build_generator
from sar_core.generator import ScaleGenerator, unwrap
from sar_core.objectives import RolloutDraw, TokenBatch, build_objective, gap_diagnostics, probe_batch
from sar_core.objectives.diagnostics import GaugeSettings
from sar_platform.services.inputs import TrainInputs
from sar_platform.services.storage import Workspace
from sar_platform.services.tracking import RunHandle
from sar_platform.worker import loop
from sar_platform.worker.batches import token_batches
from sar_platform.worker.evaluation import Probe, evaluate_generator

CHECKPOINT_FILE = "generator.safetensors"


def compatible(model: ScaleGenerator, tokenizer) -> None:
    """A generator only makes sense with the tokenizer whose codebook (and, for VAR, phi) it was trained on."""
    if model.family != tokenizer.family or not model.matches_tokenizer(tokenizer):
        raise CheckpointError(
            f"the {model.family} generator's input buffers (codebook {tuple(model.codebook.shape)}) are not those of the "
            f"{tokenizer.family} tokenizer (codebook {tuple(tokenizer.codebook.weight.shape)}): the generator was "
            "trained with another tokenizer"
        )


class GeneratorTask:
    def __init__(self, job, inputs: TrainInputs, handle: RunHandle | None, run_name: str):
        self.job, self.inputs, self.name, self.handle, self.run_name = job, inputs, job.name, handle, run_name
        self.workspace = Workspace.of(job.storage)
        self.objective = build_objective(job.objective)
        self.draw = job.schedule.draw() if job.schedule.random else None
        self.rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    def build(self, device: torch.device) -> nn.Module:
        self.device = device
        self.tokenizer = load_model(self.workspace.local_copy(self.inputs.tokenizer), kind="tokenizer", device=device).eval()
        self.tokenizer.requires_grad_(False)
        if self.inputs.init_from is not None:
            model = load_model(self.workspace.local_copy(self.inputs.init_from), kind="generator")
        else:
            torch.manual_seed(self.job.seed)
            model = build_generator(self.job.model).attach_tokenizer(self.tokenizer)
        model = model.to(device)
        compatible(model, self.tokenizer)
        self.probe = self.build_probe() if self.job.reads_probe else None
        return model

    def build_probe(self) -> Probe:
        """The held-out batch and sampler of the diagnostics, the same for every run that shares
        the spec's probe (its digest goes into the run's tags, so that sameness can be checked)."""
        p = self.job.probe
        data = self.job.data.image_dataset(self.tokenizer.config.image_size)
        batch = probe_batch(data, p.split, p.images, p.seed, self.tokenizer, self.job.schedule.default, self.device)
        probe = Probe(batch, RolloutDraw(*p.draw(self.job.eval.sampling)), p.seed, self.inputs.probe)
        self.gauges = GaugeSettings(p.rollout_draws(), p.calibration_fraction, p.seed)
        if self.rank == 0 and self.handle is not None:
            digest = hashlib.sha256(batch.labels.cpu().numpy().tobytes() + batch.tokens.cpu().numpy().tobytes()).hexdigest()
            self.handle.set_tags({"sar.probe": probe.description, "sar.probe.digest": digest[:16]})
        return probe

    def schedule(self, step: int):
        """Fixed, or a fresh FlexVAR draw; the same on every rank (seeded by the step)."""
        if self.draw is None:
            return self.job.schedule.default
        return self.draw(random.Random(self.job.seed * 1_000_003 + step))

    def batches(self, rank: int, world: int, start_step: int):
        source = token_batches(self.inputs.shards, self.job, rank, world, start_step, self.device)
        for step, (labels, tokens_BT) in enumerate(source, start=start_step):
            schedule = self.schedule(step)
            yield TokenBatch(labels, self.inputs.shards.select(tokens_BT, schedule), schedule)

    def rng(self, step: int) -> torch.Generator:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return torch.Generator(self.device).manual_seed(hash((self.job.seed, rank, step)) & 0x7FFF_FFFF_FFFF)

    def loss(self, model, batch: TokenBatch, step: int):
        out = self.objective(model, batch, step, self.rng(step))
        return out.loss, out.metrics

    def diagnostics(self, model, batch: TokenBatch, step: int):
        """The train-test gap on the probe, not on the training batch: every run of a comparison
        measures it on the same held-out images with the same sampler, whatever its objective."""
        rng = torch.Generator(self.device).manual_seed(self.probe.seed)
        return gap_diagnostics(model, self.probe.batch, self.probe.draw, rng, self.gauges)

    def evaluate(self, model, step: int, final: bool):
        """The final evaluation scores the report sample set; with a selection rule, periodic ones
        score the selection set (its own seed) and leave the run's `sar.eval.*` tags to the final one."""
        global_step = self.inputs.step_offset + step
        title = f"{self.run_name} @ step {global_step}: {self.job.objective.summary()}"
        selecting = not final and self.job.eval.select is not None
        job = selection_view(self.job) if selecting else self.job
        metrics, paths = evaluate_generator(unwrap(model), self.tokenizer, job, self.job.schedule.default,
                                            Path(tempfile.mkdtemp()), global_step, title, self.probe,
                                            None if selecting else self.handle, cache_dir=self.workspace.eval_cache(),
                                            final=final)
        e = self.job.eval
        if final and e.continuation is not None:  # collective, like the evaluation; rank 0 gets the metrics
            sampling = e.sampling.at(best_guidance(metrics, self.device)) if e.sampling.grid else e.sampling.single()
            metrics.update(evaluate_continuation(
                unwrap(model), self.tokenizer, sampling, e.continuation, e.metrics, self.job.schedule.default,
                self.job.data.image_dataset(self.tokenizer.config.image_size), device=self.device,
                cache_dir=self.workspace.eval_cache()))
        return metrics, paths

    def save(self, model, directory: Path, step: int) -> None:
        """The weights, with the run's name and the global step they were reached at (a run that
        starts from them continues that step axis)."""
        save_model(model, directory / CHECKPOINT_FILE, {"job": self.run_name, "step": self.inputs.step_offset + step})

    def load(self, model, directory: Path) -> None:
        state = read_tensors(directory / CHECKPOINT_FILE, self.device)
        load_state_strict(model, state, str(directory / CHECKPOINT_FILE))

    def state_dict(self) -> dict:
        return {"objective": self.objective.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state["objective"])


def best_guidance(metrics: dict, device: torch.device) -> float:
    """The guidance grid's best weight, which rank 0 measured, on every rank."""
    g = torch.tensor([metrics.get("best_cfg", float("nan"))], dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.broadcast(g, src=0)
    return float(g)


def selection_view(job):
    """The job as its selection evaluations see it: the selection seed in place of the report one."""
    return job.model_copy(update={"eval": job.eval.model_copy(update={"metrics": job.eval.selection_metrics})})


def train_generator(config: dict) -> dict:
    """Ray Train worker entry point; rank 0 returns the final report."""
    job, inputs = config["job"], config["inputs"]
    task = GeneratorTask(job, inputs, config["mlflow"], config["run_name"])
    settings = loop.LoopSettings(
        steps=inputs.steps, log_every=job.log.every_steps, checkpoint_every=job.checkpoint.every_steps,
        diagnostics_every=job.log.diagnostics_every, eval_every=job.eval.every_steps, eval_at_end=job.eval.at_end,
        precision=loop.precision(job), seed=job.seed, select=job.eval.select,
    )
    return loop.run(task, settings, job.optim, config["mlflow"])
