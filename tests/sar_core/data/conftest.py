"""A tiny folder of generated PNGs in ImageNet's class-folder layout."""
import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"n02": [(300, 200), (64, 96)], "n01": [(128, 128)], "a_class": [(50, 40), (40, 50)]}
    for cls, shapes in sizes.items():
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(tmp_path / "train" / "n01" / "grey.JPEG")
    return tmp_path
