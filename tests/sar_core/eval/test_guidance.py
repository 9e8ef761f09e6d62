"""Evaluation across guidance weights: every key of the contract, best_cfg picked on the selection
set (not the report set), one real reference, and a single weight keeping today's keys."""
import importlib
from dataclasses import replace

import pytest

from sar_core import SamplingConfig
from sar_core.eval.config import FigureConfig, MetricConfig
from sar_core.eval.guidance import EvalSampling, SampleSet, guidance_table, sample_sets, with_best_cfg
from tests.sar_core.eval.test_evaluate import generator_model_m, tokenizer_m  # noqa: F401 (module fixtures)

EV = importlib.import_module("sar_core.eval.evaluate")

GRID = EvalSampling(cfg=(0.5, 3.0), top_k=0, top_p=0.95)
METRICS = MetricConfig(num_samples=40, batch_size=20, reference="test", is_splits=2, fid_at_scales=(3,), bootstrap=4, seed=0)
HEADLINE = ("fid", "is", "precision", "recall")
SCHEDULE = (1, 2, 3, 5, 7)


@pytest.fixture(scope="module")
def grid_run(generator_model_m, tokenizer_m, tmp_path_factory, data_cache_dir):  # noqa: F811
    """A 2-weight evaluation whose selection-set FID at each weight is minus the report set's (each
    weight's report set is scored just before its selection set), so that the selection set's best
    weight is the report set's worst: a pick made on the report set fails."""
    real_calls, report_fid = [], []
    with pytest.MonkeyPatch.context() as mp:
        scored, reference = EV._metrics, EV.real_reference

        def metrics_with_selection_inverted(rows, real, metrics, device):
            out = scored(rows, real, metrics, device)
            if metrics.seed != METRICS.selection_draw_seed:
                report_fid.append(out["fid"])
                return out
            return {**out, "fid": -report_fid[-1]}

        mp.setattr(EV, "_metrics", metrics_with_selection_inverted)
        mp.setattr(EV, "real_reference", lambda *a, **k: real_calls.append(1) or reference(*a, **k))
        result = EV.evaluate(generator_model_m, tokenizer_m, GRID, METRICS, SCHEDULE, tmp_path_factory.mktemp("grid"),
                             progress=False, figures=FigureConfig(grid_classes=2, grid_per_class=2, trajectory_seeds=0))
    return result, len(real_calls)


def test_a_grid_logs_every_key_of_the_contract(grid_run):
    m = grid_run[0].metrics
    per_g = {f"cfg/{g}/{k}" for g in ("0.5", "3") for k in (*HEADLINE, "fid_at/s03")}
    report = per_g | {f"{k}_se" for k in per_g}
    select = {f"cfg/{g}/select/{k}" for g in ("0.5", "3") for k in HEADLINE}
    plain = {*HEADLINE, "fid_at/s03"}
    assert set(m) == report | select | {"best_cfg"} | plain | {f"{k}_se" for k in plain}
    assert all(m[f"cfg/{g}/select/is"] != m[f"cfg/{g}/is"] for g in ("0.5", "3"))  # other draws


def test_best_cfg_is_the_selection_set_argmin_and_the_plain_keys_are_its_report(grid_run):
    m = grid_run[0].metrics
    selection_best = min((0.5, 3.0), key=lambda g: m[f"cfg/{g:g}/select/fid"])
    report_best = min((0.5, 3.0), key=lambda g: m[f"cfg/{g:g}/fid"])
    assert selection_best != report_best  # the two sets disagree, so the test tells them apart
    assert m["best_cfg"] == selection_best
    for k in (*HEADLINE, "fid_at/s03"):
        assert m[k] == m[f"cfg/{selection_best:g}/{k}"] and m[f"{k}_se"] == m[f"cfg/{selection_best:g}/{k}_se"]


def test_the_real_reference_is_computed_once_and_the_figures_show_best_cfg(grid_run):
    result, real_calls = grid_run
    assert real_calls == 1
    assert set(result.figures) == {"samples_grid", "guidance"}
    assert result.figures["guidance"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.num_samples == METRICS.num_samples


def test_a_report_set_scores_as_the_one_weight_evaluation_at_that_weight(grid_run, generator_model_m, tokenizer_m,  # noqa: F811
                                                                         tmp_path):
    single = EV.evaluate(generator_model_m, tokenizer_m, EvalSampling(cfg=3.0, top_k=0, top_p=0.95), METRICS, SCHEDULE,
                         tmp_path, progress=False, figures=None)
    assert set(single.metrics) == {*HEADLINE, "fid_at/s03"} | {f"{k}_se" for k in (*HEADLINE, "fid_at/s03")}  # today's keys
    assert single.metrics == pytest.approx({k.removeprefix("cfg/3/"): v for k, v in grid_run[0].metrics.items()
                                            if k.startswith("cfg/3/") and "/select/" not in k}, rel=1e-6)


def test_sample_sets_one_weight_grid_and_periodic():
    one = SamplingConfig(cfg=1.5, top_k=0)
    assert sample_sets(EvalSampling(cfg=1.5, top_k=0), METRICS) == [SampleSet("", one, METRICS, 1.5)]
    sets = sample_sets(GRID, METRICS)
    assert [s.prefix for s in sets] == ["cfg/0.5/", "cfg/0.5/select/", "cfg/3/", "cfg/3/select/"]
    assert [s.sampling.cfg for s in sets] == [0.5, 0.5, 3.0, 3.0] and all(type(s.sampling) is SamplingConfig for s in sets)
    select = sets[1].metrics
    assert (select.seed, select.bootstrap, select.fid_at_scales, select.save_npz) == (1_000_000, 0, (), False)
    assert sets[0].metrics == METRICS
    explicit = sample_sets(GRID, replace(METRICS, selection_seed=77))[1].metrics
    assert explicit.seed == 77
    periodic = sample_sets(replace(GRID, cfg=(0.5,)), METRICS, selection=False)
    assert [s.prefix for s in periodic] == ["cfg/0.5/"]


def test_best_cfg_from_constructed_scores_and_the_table():
    scores = {"cfg/0.5/fid": 10.0, "cfg/0.5/select/fid": 30.0, "cfg/2/fid": 20.0, "cfg/2/select/fid": 5.0,
              "cfg/0.5/fid_se": 1.0, "cfg/2/fid_se": 2.0}
    for m in ("is", "precision", "recall"):
        scores.update({f"cfg/0.5/{m}": 0.1, f"cfg/2/{m}": 0.2})
    out = with_best_cfg(scores, (0.5, 2.0))
    assert out["best_cfg"] == 2.0 and out["fid"] == 20.0 and out["fid_se"] == 2.0 and out["is"] == 0.2
    assert "select/fid" not in out
    table = guidance_table(out, (0.5, 2.0)).splitlines()
    assert len(table) == 4 and table[2].startswith("*") and not table[1].startswith("*") and "best_cfg" in table[3]


@pytest.mark.parametrize("cfg, message", [
    ((), "the guidance grid is empty"), ((1.0, -0.5), "-0.5 in .* is not a finite number >= 0"),
    ((1.0, 1), "repeats 1"), ((1.0, "x"), "'x' in .* is not a finite number"), ((float("inf"),), "inf in"),
    ((True, 2.0), "True in"),
])
def test_bad_grids_are_refused_with_the_fix(cfg, message):
    with pytest.raises(ValueError, match=message + r".*such as \[0.5, 1.5, 2.5\]"):
        EvalSampling(cfg=cfg)


def test_a_grid_keeps_every_other_field_at_each_weight_and_refuses_one_weight_use():
    grid = EvalSampling.from_preset("flexvar_eval", cfg=[1.0, 2.0])
    assert grid.grid == (1.0, 2.0) and grid.at(2.0) == SamplingConfig.from_preset("flexvar_eval", cfg=2.0)
    with pytest.raises(ValueError, match="pick one weight"):
        grid.cfg_at(1, 5)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        EvalSampling(cfg=(1.0,), top_k=-1)
    assert EvalSampling(cfg=(0.0,), cfg_ramp="constant").unread_fields() == {
        "cfg_ramp": "is only read when some cfg > 0 (cfg 0 samples without guidance)"}


def test_selection_seed_must_differ_from_the_report_seed():
    with pytest.raises(ValueError, match=r"selection_seed must be a seed >= 0 other than seed \(3\)"):
        MetricConfig(seed=3, selection_seed=3)
    assert MetricConfig(seed=3).selection_draw_seed == 1_000_003
