"""The figures render real data into PNGs of the expected layout."""
import numpy as np
import torch
from PIL import Image

from sar_core.data.fashion_mnist import CLASSES, FashionMNISTConfig
from sar_core.eval import figures as F


def test_sample_grid_has_one_row_per_class(tmp_path):
    x, y = FashionMNISTConfig().load("test", limit=200)
    keep = torch.cat([torch.nonzero(y == c)[:4, 0] for c in range(10)])
    path = F.sample_grid(x[keep], y[keep], tmp_path / "grid.png", CLASSES, title="real test images")
    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 500
    canvas = F.tile(x[keep], 4)
    assert canvas.shape == (10 * 30 - 2, 4 * 30 - 2, 3)


def column_titles(monkeypatch, draw) -> list[str]:
    """The titles above the top row of the figure `draw()` saves."""
    saved = []
    save = F._save
    monkeypatch.setattr(F, "_save", lambda fig, path, **kw: saved.append(fig) or save(fig, path, **kw))
    draw()
    (fig,) = saved
    columns = len(fig.axes) // 3  # 3 rows
    return [ax.get_title() for ax in fig.axes[:columns]]


def test_trajectory_marks_forced_scales(tmp_path, tokenizer, schedule, monkeypatch):
    x, _ = FashionMNISTConfig().load("test", limit=3)
    with torch.no_grad():
        maps = tokenizer.tokenize(x, schedule)
        from sar_core.generation import decode_scales

        scale_images = decode_scales(tokenizer, maps, 28)

    def draw(forced):
        path = F.trajectory_figure(scale_images, schedule.scales, tmp_path / f"traj{forced}.png", forced=forced,
                                   row_titles=["a", "b", "c"])
        assert Image.open(path).size[0] > Image.open(path).size[1]  # 5 columns, 3 rows

    assert column_titles(monkeypatch, lambda: draw(2)) == ["1x1 GT", "2x2 GT", "3x3", "5x5", "7x7"]
    assert column_titles(monkeypatch, lambda: draw(0)) == ["1x1", "2x2", "3x3", "5x5", "7x7"]


def test_rollout_rows_of_images_latents_and_deltas(tmp_path, tokenizer):
    x, _ = FashionMNISTConfig().load("test", limit=1)
    with torch.no_grad():
        latent = tokenizer.encode_latent(x)[0]  # (Cvae, 7, 7)
    small = torch.nn.functional.interpolate(latent[None], size=(5, 5), mode="area")[0]
    rows = [F.FigureRow("ground truth", [x[0], x[0]], "image"), F.FigureRow("latent", [small, latent]),
            F.FigureRow("|delta|", [F.abs_delta(small, small * 0.5), F.abs_delta(latent, small)], "delta")]
    decoded = F.rollout_figure(rows, ["5 -> 7", "7"], tmp_path / "fig8.png", tokenizer=tokenizer)
    raw = F.rollout_figure(rows, ["5 -> 7", "7"], tmp_path / "fig8_raw.png")  # latents as norm maps
    a, b = np.asarray(Image.open(decoded)), np.asarray(Image.open(raw))
    assert a.shape[2] in (3, 4) and not np.array_equal(a, b)
