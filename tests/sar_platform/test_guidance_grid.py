"""Guidance grids in specs: `eval.sampling.cfg` takes a list on every job that evaluates, bad grids
are refused at the field with the fix, and the workers run the whole grid only at the final
evaluation and record how each number was made."""
import pytest

from sar_core.eval import EvalResult, EvalSampling
from sar_core.schedule import ScaleSchedule
from sar_platform.spec import load_job
from sar_platform.worker.evaluation import provenance, scored_sampling
from tests.support.specs import spec_problems, sweep_spec, train_body, train_spec, write_spec

TRAIN = train_spec()
EVAL = """\
kind: eval
name: score
generator: g.safetensors
tokenizer: t.safetensors
schedule: [1, 2, 3, 5, 7]
"""


def test_a_list_is_a_grid_and_a_number_stays_one_weight(tmp_path):
    job = load_job(write_spec(tmp_path, EVAL + "eval: {sampling: {cfg: [0.5, 1.5, 2.5, 3.5]}, metrics: {selection_seed: 7}}\n"))
    assert job.eval.sampling.grid == (0.5, 1.5, 2.5, 3.5) and job.eval.metrics.selection_draw_seed == 7
    one = load_job(write_spec(tmp_path, EVAL + "eval: {sampling: {cfg: 1.5}}\n"))
    assert one.eval.sampling.grid is None and one.eval.sampling.cfg == 1.5


def test_a_train_jobs_evaluation_and_a_preset_take_a_grid(tmp_path):
    job = load_job(write_spec(tmp_path, TRAIN + "eval: {sampling: {preset: flexvar_eval, cfg: [1.5, 2.5]}}\n"))
    assert job.eval.sampling.grid == (1.5, 2.5) and job.eval.sampling.cfg_ramp == "flexvar"
    assert job.eval.sampling.flexvar_max_size == 16


@pytest.mark.parametrize("grid, message", [
    ("[]", "cfg: the guidance grid is empty"), ("[1, -2]", "cfg: -2 in [1, -2] is not a finite number >= 0"),
    ("[1.5, 1.5]", "cfg: [1.5, 1.5] repeats 1.5"), ("[1, two]", "cfg: 'two' in [1, 'two'] is not a finite number"),
    ("abc", "cfg: 'abc' is not a number"),
])
def test_bad_grids_are_refused_at_the_field_with_the_fix(tmp_path, grid, message):
    (problem,) = spec_problems(tmp_path, EVAL + f"eval: {{sampling: {{cfg: {grid}}}}}\n")
    assert ":6:8: eval.sampling: " + message in problem
    assert "a list of distinct weights >= 0 such as [0.5, 1.5, 2.5]" in problem


def test_selection_seed_is_refused_without_a_grid_and_equal_to_seed(tmp_path):
    (problem,) = spec_problems(tmp_path, EVAL + "eval: {sampling: {cfg: 1.5}, metrics: {selection_seed: 4}}\n")
    assert "eval.metrics.selection_seed: is only read with a guidance grid" in problem
    (problem,) = spec_problems(tmp_path, EVAL + "eval: {sampling: {cfg: [1, 2]}, metrics: {seed: 4, selection_seed: 4}}\n")
    assert "eval.metrics: selection_seed must be a seed >= 0 other than seed (4)" in problem


def test_periodic_evaluations_score_the_first_weight_and_the_final_one_the_grid(tmp_path):
    job = load_job(write_spec(tmp_path, TRAIN + "eval: {every_steps: 5, sampling: {cfg: [2.5, 0.5]}}\n"))
    assert scored_sampling(job.eval, final=True).grid == (2.5, 0.5)
    assert scored_sampling(job.eval, final=False).grid == (2.5,)
    one = load_job(write_spec(tmp_path, TRAIN + "eval: {every_steps: 5, sampling: {cfg: 1.5}}\n"))
    assert scored_sampling(one.eval, final=False) is one.eval.sampling


def test_provenance_records_the_sampler_per_weight_the_seeds_and_best_cfg(tmp_path):
    job = load_job(write_spec(tmp_path, EVAL + "eval: {sampling: {cfg: [0.5, 2]}, metrics: {num_samples: 200}}\n"))
    result = EvalResult({"best_cfg": 2.0, "fid": 3.0}, {}, 200, "fmnist-classifier:abc", "fashion_mnist/train[n=200,seed=0]")
    record = provenance(job.eval, job.eval.sampling, result, ScaleSchedule((1, 2, 3, 5, 7)), step=40)
    assert record["cfg"] == [0.5, 2.0] and record["best_cfg"] == 2.0 and record["num_samples"] == 200
    assert (record["seed"], record["selection_seed"]) == (0, 1_000_000)
    assert record["sampler/cfg_0.5"].endswith("cfg 0.5 (linear ramp), top-k 900, top-p 0.95, temperature 1")
    assert record["sampler/cfg_2"].startswith("schedule 1-2-3-5-7, cfg 2 (linear ramp)")
    one = load_job(write_spec(tmp_path, EVAL + "eval: {sampling: {cfg: 1.5}}\n"))
    single = provenance(one.eval, one.eval.sampling, result, ScaleSchedule((1, 2, 3, 5, 7)), step=40)
    assert single["cfg"] == 1.5 and not any(k.startswith(("sampler/", "selection", "best")) for k in single)


def test_the_grid_round_trips_through_a_sweep_trial(tmp_path):
    sweep = load_job(write_spec(tmp_path, sweep_spec("sw", train_body("eval: {sampling: {cfg: [0.5, 1.5]}}"),
                                                     head=("seeds: [0, 1]",))))
    from sar_platform.spec.overrides import trial_job

    assert trial_job(sweep, {"seed": 1}).eval.sampling == EvalSampling(cfg=(0.5, 1.5))
