"""The evaluation entry point on a tiny generator: metrics, FID@scale, figures, npz, seeding,
checkpoint paths, data-parallel gathering (2 gloo processes)."""
import importlib
import re

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sar_core import SamplingConfig, save_model
from sar_core.eval.config import FigureConfig, MetricConfig

EV = importlib.import_module("sar_core.eval.evaluate")  # the module; `sar_core.eval.evaluate` the attribute is the function

SAMPLING = SamplingConfig(cfg=1.0, top_k=0, top_p=0.95)
METRICS = MetricConfig(num_samples=150, batch_size=64, reference="test", is_splits=3, fid_at_scales=(3,), seed=0)
MLFLOW_KEY = re.compile(r"^[A-Za-z0-9_\-./ ]+$")


@pytest.fixture(scope="module")
def first_run(generator_model_m, tokenizer_m, tmp_path_factory, data_cache_dir):
    out = tmp_path_factory.mktemp("eval")
    metrics = MetricConfig(**{**METRICS.__dict__, "save_npz": True})
    return EV.evaluate(generator_model_m, tokenizer_m, SAMPLING, metrics, (1, 2, 3, 5, 7), out, progress=False,
                       figures=FigureConfig(grid_classes=10, grid_per_class=6, trajectory_seeds=4, trajectory_prefix=2))


@pytest.fixture(scope="module")
def tokenizer_m():
    from tests.conftest import TINY_TOKENIZER
    from sar_core import MultiScaleVQ

    torch.manual_seed(0)
    return MultiScaleVQ(TINY_TOKENIZER).eval()


@pytest.fixture(scope="module")
def generator_model_m(tokenizer_m):
    from tests.conftest import TINY_GENERATOR
    from sar_core import ScaleGenerator

    torch.manual_seed(1)
    model = ScaleGenerator(TINY_GENERATOR).set_codebook(tokenizer_m.codebook.weight)
    with torch.no_grad():
        for block in model.blocks:
            block.ada_ln[-1].bias[: 2 * model.config.embed_dim].fill_(1.0)
    return model.eval()


def test_the_four_metrics_fid_at_scale_and_keys(first_run):
    m = first_run.metrics
    headline = {"fid", "is", "precision", "recall", "fid_at/s03"}
    assert set(m) == headline | {f"{k}_se" for k in headline}  # every number with its standard error
    assert all(0 < m[f"{k}_se"] < abs(m[k]) for k in ("fid", "is", "fid_at/s03"))
    assert all(0 <= m[f"{k}_se"] < 0.2 for k in ("precision", "recall"))
    assert all(MLFLOW_KEY.match(k) for k in m)
    assert m["fid"] > 0 and 1.0 <= m["is"] <= 10.0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["fid_at/s03"] != m["fid"]
    assert first_run.num_samples == 150 and first_run.reference == "fashion_mnist/test[n=150,seed=0]"
    assert first_run.feature_network.startswith("fmnist-classifier:")


def test_samples_are_class_balanced_and_exported(first_run):
    with np.load(first_run.samples_path) as z:
        arr, labels = z["arr_0"], z["arr_1"]
    assert arr.shape == (150, 28, 28, 1) and arr.dtype == np.uint8
    assert np.bincount(labels).tolist() == [15] * 10


def test_figures_exist(first_run):
    assert set(first_run.figures) == {"samples_grid", "trajectory"}
    assert all(p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in first_run.figures.values())


def test_same_seed_same_numbers_other_seed_other_numbers(first_run, generator_model_m, tokenizer_m, tmp_path):
    again = EV.evaluate(generator_model_m, tokenizer_m, SAMPLING, METRICS, (1, 2, 3, 5, 7), tmp_path / "a", progress=False,
                        figures=None)
    assert again.metrics == pytest.approx(first_run.metrics, rel=1e-6)
    other = EV.evaluate(generator_model_m, tokenizer_m, SAMPLING, MetricConfig(**{**METRICS.__dict__, "seed": 1}),
                        (1, 2, 3, 5, 7), tmp_path / "b", progress=False, figures=None)
    assert other.metrics["fid"] != pytest.approx(first_run.metrics["fid"], rel=1e-6)


def test_checkpoint_paths_and_batch_size(first_run, generator_model_m, tokenizer_m, tmp_path, monkeypatch):
    gen = save_model(generator_model_m, tmp_path / "g.safetensors")
    tok = save_model(tokenizer_m, tmp_path / "t.safetensors")
    calls = []
    original = EV.generate
    monkeypatch.setattr(EV, "generate", lambda *a, **k: calls.append(len(a[2])) or original(*a, **k))
    res = EV.evaluate(str(gen), tok, SAMPLING, METRICS, (1, 2, 3, 5, 7), tmp_path, progress=False, figures=None)
    assert res.metrics == pytest.approx(first_run.metrics, rel=1e-6)
    assert calls == [64, 64, 22]
    calls.clear()
    EV.evaluate(str(gen), tok, SAMPLING, MetricConfig(**{**METRICS.__dict__, "batch_size": 100}), (1, 2, 3, 5, 7), tmp_path,
                progress=False, figures=None)
    assert calls == [100, 50]


def test_fid_at_a_scale_outside_the_schedule_is_an_error(generator_model_m, tokenizer_m, tmp_path):
    with pytest.raises(ValueError, match=r"\[4\].*allowed: \(1, 2, 3, 5, 7\)"):
        EV.evaluate(generator_model_m, tokenizer_m, SAMPLING, MetricConfig(num_samples=10, fid_at_scales=(4,)),
                    (1, 2, 3, 5, 7), tmp_path, progress=False, figures=None)


@pytest.mark.parametrize("field, value, message", [
    ("num_samples", 1, "num_samples must be"), ("feature_network", "vgg", "feature_network must be"),
    ("pr_k", 0, "pr_k must be"), ("is_splits", 0, "is_splits must be"), ("reference", " ", "reference must be"),
    ("fid_at_scales", (0,), "fid_at_scales must be"), ("block_size", 0, "block_size must be"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        MetricConfig(**{field: value})


def test_inception_needs_weights():
    with pytest.raises(ValueError, match="inception_weights"):
        MetricConfig(feature_network="inception")


def _worker(rank, world, init_file, gen_path, tok_path, cache, out, queue):
    import os

    import torch.distributed as dist

    os.environ["SAR_DATA_CACHE"] = cache
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = EV.evaluate(gen_path, tok_path, SAMPLING, METRICS, (1, 2, 3, 5, 7), out, progress=False, figures=None)
        queue.put((rank, res.metrics, res.num_samples))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_gather_to_rank_zero(first_run, generator_model_m, tokenizer_m, data_cache_dir, tmp_path):
    gen = save_model(generator_model_m, tmp_path / "g.safetensors")
    tok = save_model(tokenizer_m, tmp_path / "t.safetensors")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, tmp_path / "init", str(gen), str(tok), str(data_cache_dir),
                                              str(tmp_path / "out"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (m, n)) for r, m, n in (queue.get(timeout=600) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    assert results[1][0] == {} and results[1][1] == 64  # rank 1 made global batch 1 and returns no metrics
    assert results[0][1] == 150  # rank 0 reports the gathered count
    # The sample set does not depend on the world size: rank 0 reproduces the single-process numbers.
    assert results[0][0] == pytest.approx(first_run.metrics, rel=1e-4)


def test_pydantic_rejects_unknown_keys_and_names_the_field():
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(MetricConfig)
    assert adapter.validate_python({"num_samples": 100, "fid_at_scales": [4]}).fid_at_scales == (4,)
    with pytest.raises(ValidationError, match="bogus"):
        adapter.validate_python({"bogus": 1})
    with pytest.raises(ValidationError, match="pr_k must be"):
        adapter.validate_python({"pr_k": 0})


def test_inception_network_end_to_end_with_a_reference_npz(generator_model_m, tokenizer_m, tmp_path):
    from sar_core.data.fashion_mnist import FashionMNISTConfig
    from sar_core.eval.export import save_samples_npz
    from sar_core.eval.inception import WeightsError
    from tests.sar_core.eval.test_inception import synthetic_state

    torch.save(synthetic_state(), tmp_path / "inception.pth")
    images, labels = FashionMNISTConfig().load("test", limit=6)
    save_samples_npz(tmp_path / "ref.npz", images, labels)
    metrics = MetricConfig(num_samples=4, batch_size=4, feature_network="inception", inception_weights=str(tmp_path / "inception.pth"),
                           reference=str(tmp_path / "ref.npz"), is_splits=2, pr_k=1)
    res = EV.evaluate(generator_model_m, tokenizer_m, SAMPLING, metrics, (1, 2, 3, 5, 7), tmp_path / "out", progress=False,
                      figures=FigureConfig(grid_classes=0, trajectory_seeds=2, trajectory_prefix=3),
                      cache_dir=tmp_path / "cache")
    assert res.feature_network.startswith("inception-v3-fid:") and res.reference.startswith("npz:ref.npz[n=6,sha256=")
    headline = {"fid", "is", "precision", "recall"}
    assert set(res.metrics) == headline | {f"{k}_se" for k in headline} and np.isfinite(res.metrics["fid"])
    assert set(res.figures) == {"trajectory"}  # grid_classes=0: no grid; the prefix came from the npz's labelled images
    remote = MetricConfig(feature_network="inception", inception_weights="http://127.0.0.1:9/pt_inception.pth")
    with pytest.raises(WeightsError, match="allow_download"):
        EV.build_feature_network(remote, FashionMNISTConfig(), cache_dir=tmp_path / "cache")
