"""PNG figures for MLflow artifacts and the README.

- `sample_grid`: class-conditional samples, one row per class.
- `trajectory_figure`: the generation across scales for a few seeds (paper Fig. 7); each scale's
  token map decoded on its own and resized to the image size, forced ground-truth scales marked.
- `rollout_figure`: rows of panels across scale transitions (paper Fig. 8: ground truth /
  teacher-forcing input / student-forcing input / student prediction / |delta|). Panels are images,
  latent maps (decoded with the tokenizer when one is given, else shown as a per-pixel norm) or
  difference maps (channel-mean magnitude, one colour scale per row).
- `student_forcing_figure`: Fig. 8 for one (probe) image, from a student-forcing trace.
- `guidance_figure`: FID / IS / precision / recall against the guidance weight of one evaluation.

Matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sar_core.objectives import RolloutDraw, TokenBatch, student_forcing_trace

PanelKind = Literal["image", "latent", "delta"]


def to_display(image_CHW: torch.Tensor) -> np.ndarray:
    """[-1, 1] (C, H, W) -> (H, W) or (H, W, 3) floats in [0, 1]."""
    x = ((image_CHW.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def _save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.1)  # titles and legends stay inside
    return path


def _show(ax, image: np.ndarray, title: str | None = None, **kwargs) -> None:
    gray = image.ndim == 2
    ax.imshow(image, cmap=kwargs.pop("cmap", "gray" if gray else None), interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def tile(images_BCHW: torch.Tensor, cols: int, pad: int = 2) -> np.ndarray:
    """Images -> one (rows*(H+pad), cols*(W+pad)[, 3]) canvas with white gutters."""
    b, c, h, w = images_BCHW.shape
    rows = -(-b // cols)
    canvas = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), dtype=np.float32)
    for i in range(b):
        img = to_display(images_BCHW[i])
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        r, col = divmod(i, cols)
        canvas[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = img
    return canvas


def sample_grid(images_BCHW: torch.Tensor, labels_B: torch.Tensor, path: str | Path,
                class_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """One row per class (in order of first appearance), as many columns as the largest class."""
    labels = [int(v) for v in labels_B]
    classes = list(dict.fromkeys(labels))
    per_class = max(labels.count(c) for c in classes)
    blank = -torch.ones_like(images_BCHW[0])  # background for classes with fewer samples
    ordered = []
    for c in classes:
        rows = [images_BCHW[i] for i, v in enumerate(labels) if v == c]
        ordered += rows + [blank] * (per_class - len(rows))
    canvas = tile(torch.stack(ordered), per_class)
    h = images_BCHW.shape[-2] + 2
    fig = Figure(figsize=(1.0 + 0.9 * per_class, 0.9 * len(classes) + (0.4 if title else 0.1)))
    ax = fig.add_axes((0.2 if class_names else 0.02, 0.02, 0.78 if class_names else 0.96, 0.94 if title else 0.96))
    _show(ax, canvas)
    if class_names:
        ax.set_yticks([i * h + h / 2 - 1 for i in range(len(classes))])
        ax.set_yticklabels([class_names[c] if c < len(class_names) else str(c) for c in classes], fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def trajectory_figure(scale_images: Sequence[torch.Tensor], scales: Sequence[int], path: str | Path,
                      forced: int = 0, row_titles: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Rows = samples, columns = scales; `scale_images[k]` is (B, C, H, W) for scale k.

    The first `forced` scales were ground truth (a prefix), marked "GT" in the column titles."""
    b, n = scale_images[0].shape[0], len(scales)
    fig = Figure(figsize=(1.1 * n + (0.9 if row_titles else 0.2), 1.15 * b + 0.3))
    axes = fig.subplots(b, n, squeeze=False)
    for k, s in enumerate(scales):
        for i in range(b):
            col_title = (f"{s}x{s}" + (" GT" if k < forced else "")) if i == 0 else None
            _show(axes[i][k], to_display(scale_images[k][i]), col_title)
            if k == 0 and row_titles:
                axes[i][k].set_ylabel(row_titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def guidance_figure(scores: dict[str, float], grid: Sequence[float], path: str | Path, title: str = "") -> Path:
    """The headline metrics against the guidance weight (keys of sar_core/eval/guidance.py): the
    report set with its standard errors, the selection set dashed, best_cfg as a vertical line."""
    grid = sorted(grid)
    fig = Figure(figsize=(11, 3.2 + (0.3 if title else 0)))
    axes = fig.subplots(1, 4)
    for ax, metric in zip(axes, ("fid", "is", "precision", "recall")):
        report = [scores[f"cfg/{g:g}/{metric}"] for g in grid]
        se = [scores.get(f"cfg/{g:g}/{metric}_se", 0.0) for g in grid]
        ax.errorbar(grid, report, yerr=se, marker="o", capsize=3, label="report set (± s.e.)")
        ax.plot(grid, [scores[f"cfg/{g:g}/select/{metric}"] for g in grid], "s--", alpha=0.7, label="selection set")
        if "best_cfg" in scores:
            ax.axvline(scores["best_cfg"], color="grey", linestyle=":", label=f"best_cfg {scores['best_cfg']:g}")
        ax.set_xlabel("guidance weight cfg")
        ax.set_title(metric.upper() if metric in ("fid", "is") else metric, fontsize=9)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@dataclass
class FigureRow:
    """One row of `rollout_figure`: a title and one panel per column.

    kind "image": (C, H, W) in [-1, 1]; "latent": (Cvae, h, w) latent maps; "delta": (C, h, w)
    differences (signed or absolute; the magnitude is shown)."""

    title: str
    panels: Sequence[torch.Tensor]
    kind: PanelKind = "latent"


def abs_delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two maps, the second resized to the first's size if needed."""
    if b.shape[-2:] != a.shape[-2:]:
        b = F.interpolate(b[None].float(), size=a.shape[-2:], mode="bicubic", align_corners=False)[0]
    return (a.float() - b.float()).abs()


@torch.no_grad()
def _panel(panel: torch.Tensor, kind: PanelKind, tokenizer, size: int) -> np.ndarray:
    if kind == "latent" and tokenizer is not None:
        panel = tokenizer.decode_latent(panel[None].float().to(next(tokenizer.parameters()).device))[0].cpu()
        kind = "image"
    if kind == "image":
        img = F.interpolate(panel[None].float().cpu(), size=(size, size), mode="nearest")[0]
        return to_display(img)
    magnitude = panel.float().cpu().norm(dim=0) if kind == "latent" else panel.float().cpu().abs().mean(dim=0)
    return F.interpolate(magnitude[None, None], size=(size, size), mode="nearest")[0, 0].numpy()


def rollout_figure(rows: Sequence[FigureRow], column_titles: Sequence[str], path: str | Path, tokenizer=None,
                   size: int = 0, title: str | None = None) -> Path:
    """Render rows of panels (paper Fig. 8). Latent rows are decoded with `tokenizer.decode_latent`
    when a tokenizer is given; delta rows share one colour scale per row, shown by a colour bar."""
    n = len(column_titles)
    if any(len(r.panels) != n for r in rows):
        raise ValueError(f"every row needs {n} panels (one per column title), got {[len(r.panels) for r in rows]}")
    size = size or (tokenizer.config.image_size if tokenizer is not None else max(p.shape[-1] for r in rows for p in r.panels))
    fig = Figure(figsize=(1.5 * n + 1.6, 1.5 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, row in enumerate(rows):
        shown = [_panel(p, row.kind, tokenizer, size) for p in row.panels]
        heat = row.kind == "delta" or (row.kind == "latent" and tokenizer is None)
        vmax = max(float(s.max()) for s in shown) if heat else None
        for k, img in enumerate(shown):
            kwargs = {"cmap": "magma", "vmin": 0.0, "vmax": vmax or 1.0} if heat else {}
            _show(axes[i][k], img, column_titles[k] if i == 0 else None, **kwargs)
        axes[i][0].set_ylabel(row.title, fontsize=8)
        if heat:  # a colour bar beside the row's last panel, without shrinking any panel
            cax = axes[i][-1].inset_axes((1.05, 0.0, 0.06, 1.0))
            fig.colorbar(axes[i][-1].images[0], cax=cax)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def token_latents(tokenizer, idx_Bhw: torch.Tensor) -> torch.Tensor:
    """Token maps (B, h, w) -> the codebook vectors they index, (B, Cvae, h, w)."""
    return tokenizer.code_vectors(idx_Bhw)


@torch.no_grad()
def student_forcing_figure(model, tokenizer, batch: TokenBatch, draw: RolloutDraw, path: Path, sample: int = 0,
                           title: str = "", seed: int = 0) -> Path:
    """Paper Fig. 8 for one image of `batch`: ground truth, teacher input, student input (tokens
    drawn by `draw`), student prediction and |ground truth - student prediction| at every scale
    after the first."""
    trace = student_forcing_trace(model, batch, draw, rng=torch.Generator(batch.tokens.device).manual_seed(seed))
    gt = [token_latents(tokenizer, t)[sample] for t in trace.ground_truth]
    pred = [token_latents(tokenizer, t)[sample] for t in trace.student_prediction]
    rows = [
        FigureRow("ground truth", gt),
        FigureRow("TF input", [x[sample] for x in trace.teacher_input]),
        FigureRow("SF input", [x[sample] for x in trace.student_input]),
        FigureRow("SF prediction", pred),
        FigureRow("|GT - SF pred|", [abs_delta(tokenizer.decode_latent(a[None])[0], tokenizer.decode_latent(b[None])[0])
                                      for a, b in zip(gt, pred)], kind="delta"),
    ]
    titles = [f"{s}x{s}" for s in trace.scales]
    heading = f"student forcing, {draw.strategy} rollout" + (f"\n{title}" if title else "")
    return rollout_figure(rows, titles, path, tokenizer=tokenizer, title=heading)
