"""Training the multi-scale VQ tokenizer (reconstruction + VQ losses): the `tokenizer` job's worker.

Runs inside Ray Train workers.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from sar_core.checkpoint import load_state_strict, read_tensors, save_model
from sar_core.data.order import batch_indices
from sar_core.schedule import ScaleSchedule
from sar_core.families import build_tokenizer
from sar_core.tokenizer import codebook_perplexity
from sar_platform.worker import loop

CHECKPOINT_FILE = "tokenizer.safetensors"


class TokenizerTask:
    def __init__(self, job, steps: int, run_name: str):
        self.job, self.name, self.run_name = job, job.name, run_name
        self.steps = steps
        self.train_images = job.data.images("train", job.model.image_size)
        self.test_images = job.data.images("test", job.model.image_size)

    def build(self, device: torch.device) -> nn.Module:
        self.device = device
        torch.manual_seed(self.job.seed)
        return build_tokenizer(self.job.model).to(device)

    def batches(self, rank: int, world: int, start_step: int):
        for idx in batch_indices(len(self.train_images), self.job.optim.batch_size, rank, world, self.job.seed, start_step):
            yield self.train_images.batch(idx).to(self.device, non_blocking=True)

    def loss(self, model, images, step):
        _, loss, metrics = model(images)
        return loss, {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}

    def diagnostics(self, model, batch, step):
        return {}

    @torch.no_grad()
    def evaluate(self, model, step: int, final: bool):
        """Held-out reconstruction error and codebook use at every scale size (rank 0 reports)."""
        n = min(self.job.eval_images, len(self.test_images))
        images = self.test_images.batch(torch.arange(n)).to(self.device)
        model.eval()
        recon, _, _ = model(images)
        idx = model.tokenize_flat(images, ScaleSchedule(model.token_scales()))
        model.train()
        V = model.config.codebook_size
        metrics = {
            "eval/recon_mse": float(torch.mean((recon - images) ** 2)),
            "eval/codebook_usage": idx.unique().numel() / V,
            "eval/codebook_perplexity": float(codebook_perplexity(idx, V)),
        }
        figure = reconstruction_figure(images[:16].cpu(), recon[:16].clamp(-1, 1).cpu(), Path(tempfile.mkdtemp()) / f"reconstructions_{step:07d}.png")
        return metrics, [figure]

    def save(self, model, directory: Path, step: int) -> None:
        save_model(model, directory / CHECKPOINT_FILE, {"job": self.run_name, "step": step})

    def load(self, model, directory: Path) -> None:
        load_state_strict(model, read_tensors(directory / CHECKPOINT_FILE), str(directory / CHECKPOINT_FILE))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def reconstruction_figure(images: torch.Tensor, recon: torch.Tensor, path: Path) -> Path:
    """Originals (top row) over reconstructions (bottom row)."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(images), dim=-1), torch.cat(list(recon), dim=-1)], dim=-2)  # (C, 2H, nW)
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).resize((arr.shape[1] * 3, arr.shape[0] * 3), Image.NEAREST).save(path)
    return path


def train_tokenizer(config: dict) -> dict:
    """Ray Train worker entry point; rank 0 returns the final report."""
    job = config["job"]
    task = TokenizerTask(job, config["steps"], config["run_name"])
    settings = loop.LoopSettings(
        steps=config["steps"], log_every=job.log.every_steps, checkpoint_every=job.checkpoint.every_steps,
        diagnostics_every=0, eval_every=0, eval_at_end=True, precision=loop.precision(job), seed=job.seed,
    )
    return loop.run(task, settings, job.optim, config["mlflow"])
