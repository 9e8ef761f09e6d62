"""Job specs: one validated tree, errors that point at file:line:column, nothing started on error."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sar_core.objectives import ObjectiveConfig
from sar_core.token_sampling import SamplingConfig
from sar_platform.spec import SpecError, SweepJob, TrainJob, load_job
from sar_platform.spec.overrides import trial_job
from tests.conftest import REPO

SAR = [sys.executable, "-m", "sar_platform.cli"]

TRAIN = """\
kind: train
name: tiny
tokenizer: tok.safetensors
model: {depth: 2, width: 64, num_heads: 2, num_classes: 10, vocab_size: 64, codebook_dim: 8, pos_grid: 8}
schedule: {scales: [1, 2, 3, 5, 7]}
optim: {steps: 10, batch_size: 8}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(tmp_path, text) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_job(write(tmp_path, text))
    return e.value.problems


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_validates(path):
    job = load_job(path)
    assert job.name


def test_a_valid_spec_becomes_one_typed_tree(tmp_path):
    job = load_job(write(tmp_path, TRAIN))
    assert isinstance(job, TrainJob) and job.objective == ObjectiveConfig()
    assert Path(job.tokenizer).is_absolute()  # resolved once, so workers with another cwd agree
    with pytest.raises(Exception):
        job.name = "changed"  # specs are immutable once validated


def test_yaml_syntax_errors_name_the_line_and_column(tmp_path):
    (problem,) = errors(tmp_path, "kind: train\nname: [unclosed\n")
    assert problem.startswith(f"{tmp_path / 'spec.yaml'}:3:1: YAML syntax error")


def test_unknown_fields_are_reported_with_the_allowed_ones(tmp_path):
    (problem,) = errors(tmp_path, TRAIN.replace("depth: 2", "dpeth: 2"))
    assert ":4:" in problem and "model.dpeth: unknown field 'dpeth'; allowed here: depth, width" in problem


def test_value_errors_name_the_field_and_what_is_allowed(tmp_path):
    problems = errors(tmp_path, TRAIN + "objective: {kind: sar, csfl_target: kl}\n")
    assert len(problems) == 1
    assert ":7:" in problems[0] and "objective.csfl_target: Input should be 'teacher_soft', 'teacher_hard' or 'ground_truth'" in problems[0]
    (problem,) = errors(tmp_path, TRAIN.replace("[1, 2, 3, 5, 7]", "[1, 3, 2]"))
    assert "schedule.scales: scales must be strictly increasing" in problem
    (problem,) = errors(tmp_path, TRAIN + "objective: {kind: sar, gamma: -1}\n")
    assert "objective: gamma must be a finite number >= 0" in problem


def test_a_model_or_a_checkpoint_is_required_but_not_both(tmp_path):
    (problem,) = errors(tmp_path, TRAIN.replace("model: {", "init_from: g.safetensors\nmodel: {"))
    assert "init_from carries the model config" in problem


def test_objective_presets_expand_with_explicit_fields_on_top(tmp_path):
    job = load_job(write(tmp_path, TRAIN + "objective: {preset: released_code, gamma: 0.05, rollout: {cfg: 2.0}}\n"))
    assert job.objective == ObjectiveConfig.from_preset("released_code", gamma=0.05, rollout={"cfg": 2.0})
    assert job.objective.csfl_target == "teacher_hard" and job.objective.rollout.top_p == 0.96


def test_sampling_presets_expand_with_explicit_fields_on_top(tmp_path):
    job = load_job(write(tmp_path, TRAIN + "eval: {sampling: {preset: flexvar_eval, top_k: 50}}\n"))
    assert job.eval.sampling == SamplingConfig.from_preset("flexvar_eval", top_k=50)
    assert job.eval.sampling.cfg_ramp == "flexvar" and job.eval.sampling.flexvar_max_size == 16
    (problem,) = errors(tmp_path, TRAIN + "eval: {sampling: {preset: flexvar}}\n")
    assert ":7:" in problem and "eval.sampling: unknown sampling preset 'flexvar'; presets: flexvar_eval" in problem
    (problem,) = errors(tmp_path, TRAIN + "objective: {kind: sar, sampling: cfg, rollout: {flexvar_max_size: 16}}\n")
    assert "rollout.flexvar_max_size is a rule of FlexVAR's sampler at inference" in problem


def test_the_reference_schedule_draw_is_a_named_choice_of_random_schedules(tmp_path):
    flexvar = TRAIN.replace("schedule: {scales: [1, 2, 3, 5, 7]}",
                            "schedule: {scales: [1, 2, 3, 5, 7], random: true, draw_rule: flexvar, max_tokens: 90}")
    job = load_job(write(tmp_path, flexvar))
    assert job.schedule.draw().rule == "flexvar" and job.schedule.smallest_last() < 7
    assert load_job(write(tmp_path, TRAIN.replace("[1, 2, 3, 5, 7]}", "[1, 2, 3, 5, 7], random: true}"))).schedule.draw().rule == "keep_last"
    (problem,) = errors(tmp_path, TRAIN.replace("[1, 2, 3, 5, 7]}", "[1, 2, 3, 5, 7], draw_rule: flexvar}"))
    assert "schedule.draw_rule only apply with schedule.random: true" in problem
    # sf_hybrid needs every schedule to reach hybrid_scale: a draw that can end below it is refused
    (problem,) = errors(tmp_path, flexvar + "objective: {kind: sf_hybrid, hybrid_scale: 7}\n")
    last = job.schedule.smallest_last()
    assert f"objective.hybrid_scale=7 leaves no student-forced scale in schedules that end at {last}x{last}" in problem
    assert load_job(write(tmp_path, flexvar + f"objective: {{kind: sf_hybrid, hybrid_scale: {last}}}\n"))
    (problem,) = errors(tmp_path, TRAIN + "objective: {kind: sf_hybrid, hybrid_scale: 8}\n")
    assert "use hybrid_scale <= 7" in problem


SWEEP = """\
kind: sweep
name: sw
train:
  tokenizer: tok.safetensors
  model: {depth: 2, width: 64, num_heads: 2, num_classes: 10, vocab_size: 64, codebook_dim: 8, pos_grid: 8}
  schedule: {scales: [1, 2, 3, 5, 7]}
  objective: {kind: sar}
  optim: {steps: 10, batch_size: 8}
space:
  objective.gamma: {grid: [0.0, 0.5]}
  objective.sampling: {choice: [argmax, stochastic]}
  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
seeds: [0, 1]
"""


def test_a_sweep_can_search_any_field_path_of_its_train_spec(tmp_path):
    sweep = load_job(write(tmp_path, SWEEP))
    assert isinstance(sweep, SweepJob) and sweep.train.kind == "train"
    trial = trial_job(sweep, {"objective.gamma": 0.5, "optim.lr": 3e-4, "objective.rollout.top_k": 5}, name="sw.t1")
    assert (trial.objective.gamma, trial.optim.lr, trial.objective.rollout.top_k, trial.name) == (0.5, 3e-4, 5, "sw.t1")
    assert trial.objective.kind == "sar" and trial.optim.steps == 10  # the rest of the base spec is kept


def test_sweeps_refuse_unknown_paths_and_invalid_candidates_before_running(tmp_path):
    (problem,) = errors(tmp_path, SWEEP.replace("objective.gamma:", "objective.gama:"))
    assert "space.objective.gama: the train spec has no field 'objective.gama'" in problem
    (problem,) = errors(tmp_path, SWEEP.replace("[argmax, stochastic]", "[argmax, greedy]"))
    assert "space.objective.sampling: value 'greedy' is not valid" in problem


def test_a_sweep_over_an_objective_field_its_kind_never_reads_is_refused(tmp_path):
    """Identical trials under different labels would be a setting that silently does nothing."""
    (problem,) = errors(tmp_path, SWEEP.replace("objective: {kind: sar}", "objective: {kind: tf}"))
    assert "space.objective.gamma: objective kind 'tf'" in problem and "does not read 'gamma'" in problem


def test_pipeline_references_must_name_earlier_steps(tmp_path):
    text = """\
    kind: pipeline
    name: p
    steps:
      train:
        kind: train
        tokenizer: step:tok
        model: {depth: 2, width: 64, num_heads: 2, num_classes: 10, vocab_size: 64, codebook_dim: 8, pos_grid: 8}
        schedule: {scales: [1, 2, 3, 5, 7]}
        optim: {steps: 10}
    """
    (problem,) = errors(tmp_path, text)
    assert "steps.train.tokenizer: step:tok does not name an earlier step" in problem


def test_cli_validate_exits_2_with_located_errors_and_touches_nothing(tmp_path):
    spec = write(tmp_path, TRAIN.replace("depth: 2", "depth: two"))
    out = subprocess.run([*SAR, "run", str(spec)], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{spec}:4:" in out.stderr and "model.depth" in out.stderr
    assert not (tmp_path / "workspace").exists()  # no MLflow server, no run folder
    ok = subprocess.run([*SAR, "validate", str(REPO / "jobs" / "quickstart.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok:" in ok.stdout


def test_schema_is_json_schema_of_every_kind():
    out = subprocess.run([*SAR, "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(out.stdout)
    kinds = {d["properties"]["kind"].get("const") for d in schema["$defs"].values() if "kind" in d.get("properties", {})}
    assert kinds >= {"tokenizer", "train", "eval", "sweep", "pipeline"}
