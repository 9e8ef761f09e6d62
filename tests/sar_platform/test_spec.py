"""Job specs: one validated tree, errors that point at file:line:column, nothing started on error."""
import json
import subprocess
from pathlib import Path

import pytest

from sar_core.objectives import ObjectiveConfig
from sar_core.token_sampling import SamplingConfig
from sar_platform.spec import SweepJob, TrainJob, load_job
from sar_platform.spec.overrides import trial_job
from tests.conftest import REPO
from tests.support.processes import SAR
from tests.support.specs import pipeline_spec, spec_problems, sweep_spec, train_body, train_spec, train_step, write_spec

TRAIN = train_spec()


@pytest.mark.parametrize("path", sorted((REPO / "jobs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO / "jobs")))
def test_every_shipped_job_validates(path):
    job = load_job(path)
    assert job.name


def test_a_valid_spec_becomes_one_typed_tree(tmp_path):
    job = load_job(write_spec(tmp_path, TRAIN))
    assert isinstance(job, TrainJob) and job.objective == ObjectiveConfig()
    assert Path(job.tokenizer).is_absolute()  # resolved once, so workers with another cwd agree
    with pytest.raises(Exception):
        job.name = "changed"  # specs are immutable once validated


def test_yaml_syntax_errors_name_the_line_and_column(tmp_path):
    (problem,) = spec_problems(tmp_path, "kind: train\nname: [unclosed\n")
    assert problem.startswith(f"{tmp_path / 'spec.yaml'}:3:1: YAML syntax error")


def test_unknown_fields_are_reported_with_the_allowed_ones(tmp_path):
    (problem,) = spec_problems(tmp_path, TRAIN.replace("depth: 2", "dpeth: 2"))
    assert ":4:" in problem and "model.dpeth: unknown field 'dpeth'; allowed here: depth, width" in problem


def test_value_errors_name_the_field_and_what_is_allowed(tmp_path):
    problems = spec_problems(tmp_path, TRAIN + "objective: {kind: sar, csfl_target: kl}\n")
    assert len(problems) == 1
    assert ":7:" in problems[0] and "objective.csfl_target: Input should be 'teacher_soft', 'teacher_hard' or 'ground_truth'" in problems[0]
    (problem,) = spec_problems(tmp_path, TRAIN.replace("[1, 2, 3, 5, 7]", "[1, 3, 2]"))
    assert "schedule.scales: scales must be strictly increasing" in problem
    (problem,) = spec_problems(tmp_path, TRAIN + "objective: {kind: sar, gamma: -1}\n")
    assert "objective: gamma must be a finite number >= 0" in problem


def test_a_model_or_a_checkpoint_is_required_but_not_both(tmp_path):
    (problem,) = spec_problems(tmp_path, TRAIN.replace("model: {", "init_from: g.safetensors\nmodel: {"))
    assert "init_from carries the model config" in problem


def test_objective_presets_expand_with_explicit_fields_on_top(tmp_path):
    job = load_job(write_spec(tmp_path, TRAIN + "objective: {preset: released_code, gamma: 0.05, rollout: {cfg: 2.0}}\n"))
    assert job.objective == ObjectiveConfig.from_preset("released_code", gamma=0.05, rollout={"cfg": 2.0})
    assert job.objective.csfl_target == "teacher_hard" and job.objective.rollout.top_p == 0.96


def test_sampling_presets_expand_with_explicit_fields_on_top(tmp_path):
    job = load_job(write_spec(tmp_path, TRAIN + "eval: {sampling: {preset: flexvar_eval, top_k: 50}}\n"))
    assert job.eval.sampling.single() == SamplingConfig.from_preset("flexvar_eval", top_k=50)
    assert job.eval.sampling.cfg_ramp == "flexvar" and job.eval.sampling.flexvar_max_size == 16
    (problem,) = spec_problems(tmp_path, TRAIN + "eval: {sampling: {preset: flexvar}}\n")
    assert ":7:" in problem and "eval.sampling: unknown sampling preset 'flexvar'; presets: flexvar_eval" in problem
    (problem,) = spec_problems(tmp_path, TRAIN + "objective: {kind: sar, sampling: cfg, rollout: {flexvar_max_size: 16}}\n")
    assert "rollout.flexvar_max_size is a rule of FlexVAR's sampler at inference" in problem


def test_the_reference_schedule_draw_is_a_named_choice_of_random_schedules(tmp_path):
    flexvar = TRAIN.replace("schedule: {scales: [1, 2, 3, 5, 7]}",
                            "schedule: {scales: [1, 2, 3, 5, 7], random: true, draw_rule: flexvar, max_tokens: 90}")
    job = load_job(write_spec(tmp_path, flexvar))
    assert job.schedule.draw().rule == "flexvar" and job.schedule.smallest_last() < 7
    assert load_job(write_spec(tmp_path, TRAIN.replace("[1, 2, 3, 5, 7]}", "[1, 2, 3, 5, 7], random: true}"))).schedule.draw().rule == "keep_last"
    (problem,) = spec_problems(tmp_path, TRAIN.replace("[1, 2, 3, 5, 7]}", "[1, 2, 3, 5, 7], draw_rule: flexvar}"))
    assert "schedule.draw_rule: is only read with schedule.random: true" in problem
    # sf_hybrid needs every schedule to reach hybrid_scale: a draw that can end below it is refused
    (problem,) = spec_problems(tmp_path, flexvar + "objective: {kind: sf_hybrid, hybrid_scale: 7}\n")
    last = job.schedule.smallest_last()
    assert f"objective.hybrid_scale: 7 leaves no student-forced scale in schedule draws that end at {last}x{last}" in problem
    assert load_job(write_spec(tmp_path, flexvar + f"objective: {{kind: sf_hybrid, hybrid_scale: {last}}}\n"))
    (problem,) = spec_problems(tmp_path, TRAIN + "objective: {kind: sf_hybrid, hybrid_scale: 8}\n")
    assert "use a size <= 7" in problem


SWEEP = sweep_spec("sw", train_body("objective: {kind: sar}"), (
    "objective.gamma: {grid: [0.0, 0.5]}", "objective.sampling: {choice: [argmax, stochastic]}",
    "optim.lr: {loguniform: [1.0e-5, 1.0e-3]}"), "seeds: [0, 1]")


def test_a_sweep_can_search_any_field_path_of_its_train_spec(tmp_path):
    sweep = load_job(write_spec(tmp_path, SWEEP))
    assert isinstance(sweep, SweepJob) and sweep.train.kind == "train"
    trial = trial_job(sweep, {"objective.gamma": 0.5, "optim.lr": 3e-4, "objective.rollout.top_k": 5}, name="sw.t1")
    assert (trial.objective.gamma, trial.optim.lr, trial.objective.rollout.top_k, trial.name) == (0.5, 3e-4, 5, "sw.t1")
    assert trial.objective.kind == "sar" and trial.optim.steps == 10  # the rest of the base spec is kept


def test_sweeps_refuse_unknown_paths_and_invalid_candidates_before_running(tmp_path):
    (problem,) = spec_problems(tmp_path, SWEEP.replace("objective.gamma:", "objective.gama:"))
    assert "space.objective.gama: the train spec has no field 'objective.gama'" in problem
    (problem,) = spec_problems(tmp_path, SWEEP.replace("[argmax, stochastic]", "[argmax, greedy]"))
    assert "space.objective.sampling: value 'greedy' is not valid" in problem


def test_a_sweep_over_an_objective_field_its_kind_never_reads_is_refused(tmp_path):
    """Identical trials under different labels would be a setting that silently does nothing."""
    (problem,) = spec_problems(tmp_path, SWEEP.replace("objective: {kind: sar}", "objective: {kind: tf}"))
    assert "space.objective.gamma: is only read by kind: sar (here kind: tf" in problem and "identical" in problem


def test_pipeline_references_must_name_earlier_steps(tmp_path):
    text = pipeline_spec("p", {"train": train_step(tokenizer="step:tok", optim="{steps: 10}")})
    (problem,) = spec_problems(tmp_path, text)
    assert "steps.train.tokenizer: step:tok does not name an earlier step" in problem


def test_a_pipeline_compares_against_its_baseline_or_every_pair(tmp_path):
    step = "{kind: train, tokenizer: t.safetensors, init_from: g.safetensors, schedule: {scales: [1, 2, 3]}, optim: {steps: 4}}"
    text = f"kind: pipeline\nname: p\nsteps:\n  a: {step}\n  b: {step}\ncompare: [a, b]\n"
    assert load_job(write_spec(tmp_path, text)).pairs == "baseline"
    assert load_job(write_spec(tmp_path, text + "pairs: all\n")).pairs == "all"
    (problem,) = spec_problems(tmp_path, text + "pairs: some\n")
    assert ":7:" in problem and "pairs: Input should be 'baseline' or 'all'" in problem
    (problem,) = spec_problems(tmp_path, text + "baseline: a\npairs: all\n")
    assert "pairs: all compares every pair, so baseline: 'a' would not be read" in problem
    (problem,) = spec_problems(tmp_path, text.replace("compare: [a, b]", "pairs: all"))
    assert "pairs: is only read with compare" in problem


def test_cli_validate_exits_2_with_located_errors_and_touches_nothing(tmp_path):
    spec = write_spec(tmp_path, TRAIN.replace("depth: 2", "depth: two"))
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


# -- every written setting does something ------------------------------------------------------

UNREAD = {  # written field -> (spec lines added to TRAIN, where it is reported, why)
    "rollout under argmax": ("objective: {kind: sar, rollout: {top_k: 50, cfg: 7}}",
                             "7:34: objective.rollout.top_k: is not read with sampling: argmax (use sampling: stochastic or cfg"),
    "guidance without cfg sampling": ("objective: {kind: sar, sampling: stochastic, rollout: {cfg: 7}}",
                                      "objective.rollout.cfg: is only read with sampling: cfg"),
    "SAR fields under tf": ("objective: {kind: tf, gamma: 0.5, csfl_target: teacher_hard}",
                            "7:23: objective.gamma: is only read by kind: sar (here kind: tf"),
    "hybrid_scale under sar": ("objective: {kind: sar, hybrid_scale: 3}", "objective.hybrid_scale: is only read by kind: sf_hybrid"),
    "noise settings under tf": ("objective: {kind: tf, noise_rate: 0.2}", "objective.noise_rate: is only read by kind: noisy_context"),
    "a noise source at rate 0": ("objective: {kind: noisy_context, noise_rate: 0, noise_source: model}",
                                 "objective.noise_source: is not read with noise_rate: 0"),
    "a rollout for random noise": ("objective: {kind: noisy_context, sampling: stochastic}",
                                   "objective.sampling: is only read with noise_source: model"),
    "momentum without dynamic weighting": ("objective: {dynamic_momentum: 0.9}", "objective.dynamic_momentum: is only read with weighting: dynamic"),
    "inception weights with the classifier": ("eval: {metrics: {inception_weights: w.pth}}",
                                              "eval.metrics.inception_weights: is only read with feature_network: inception"),
    "num_reference with an npz": ("eval: {metrics: {reference: ref.npz, num_reference: 10}}", "eval.metrics.num_reference: is not read with a reference .npz"),
    "cfg_ramp without guidance": ("eval: {sampling: {cfg: 0, cfg_ramp: constant}}", "eval.sampling.cfg_ramp: is only read when cfg > 0"),
    "evaluation settings of a job that never evaluates": ("eval: {at_end: false, metrics: {num_samples: 50}}",
                                                          "eval.metrics.num_samples: is not read: this job never evaluates"),
    "a fixed schedule's draw settings": ("", "schedule.max_tokens: is only read with schedule.random: true"),
    "min_lr_ratio of a constant lr": ("", "optim.min_lr_ratio: is only read with lr_schedule: linear or cosine"),
    "the embedded server's port with a tracking URI": ("mlflow: {tracking_uri: 'http://127.0.0.1:9', port: 5056}",
                                                      "mlflow.port: is not read with mlflow.tracking_uri set"),
    "an S3 endpoint for local storage": ("storage: {s3_endpoint: 'http://127.0.0.1:9000'}", "storage.s3_endpoint: is only read with an s3://"),
    "a probe nothing reads": ("eval: {at_end: false}\nprobe: {images: 16}", "probe.images: is only read with log.diagnostics_every > 0"),
    "draws of an argmax probe": ("log: {diagnostics_every: 5}\nprobe: {sampling: argmax, draws: 4}",
                                 "probe.draws: is not read with sampling: argmax"),
    "a rollout of a probe that draws with the eval sampler": ("log: {diagnostics_every: 5}\nprobe: {rollout: {top_k: 3}}",
                                                              "probe.rollout.top_k: is not read with sampling: eval"),
    "continuation without a final evaluation": ("eval: {at_end: false, every_steps: 5, continuation: {ks: [1]}}",
                                                "eval.continuation.ks: is only read by the final evaluation"),
    "a probe rollout under argmax": ("log: {diagnostics_every: 5}\nprobe: {sampling: argmax, rollout: {top_k: 3}}", "probe.rollout.top_k: is not read with sampling: argmax"),
}


@pytest.mark.parametrize("case", sorted(UNREAD), ids=lambda c: c.replace(" ", "-"))
def test_an_explicitly_written_field_the_job_never_reads_is_refused_where_it_is_written(tmp_path, case):
    extra, expected = UNREAD[case]
    text = TRAIN + extra + "\n"
    if case == "a fixed schedule's draw settings":
        text = text.replace("schedule: {scales: [1, 2, 3, 5, 7]}", "schedule: {scales: [1, 2, 3, 5, 7], max_tokens: 80}")
    if case == "min_lr_ratio of a constant lr":
        text = text.replace("optim: {steps: 10, batch_size: 8}", "optim: {steps: 10, batch_size: 8, min_lr_ratio: 0.1}")
    problems = spec_problems(tmp_path, text)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(str(tmp_path / "spec.yaml") + ":") for p in problems)


def test_values_a_preset_or_a_default_fills_in_never_trip_the_check(tmp_path):
    # the paper preset brings rollout.cfg / cfg_ramp, which stochastic sampling does not read
    job = load_job(write_spec(tmp_path, TRAIN + "objective: {preset: paper, sampling: stochastic}\n"))
    assert job.objective.preset == "paper" and job.objective.rollout.cfg == 2.5
    assert ("objective", "rollout", "cfg") in job.unread_fields()  # unread, but not written: accepted
    load_job(write_spec(tmp_path, TRAIN + "objective: {kind: sar, sampling: cfg, rollout: {cfg: 2, cfg_ramp: constant}}\n"))


def test_settings_that_cannot_work_together_are_refused_at_load(tmp_path):
    (problem,) = spec_problems(tmp_path, TRAIN + "eval: {metrics: {fid_at_scales: [4]}}\n")
    assert ":7:" in problem and "eval.metrics.fid_at_scales: [4] are not scales of the evaluated schedule [1, 2, 3, 5, 7]" in problem
    (problem,) = spec_problems(tmp_path, TRAIN + "objective: {kind: sf_hybrid, hybrid_scale: 9}\n")
    assert "objective.hybrid_scale: 9 leaves no student-forced scale" in problem
    (problem,) = spec_problems(tmp_path, TRAIN + "resources: {num_workers: 3}\n")
    assert "optim.batch_size: 8 does not split evenly over resources.num_workers = 3" in problem
    eval_job = "kind: eval\nname: e\ngenerator: g.safetensors\ntokenizer: t.safetensors\nschedule: [1, 2, 7]\n"
    (problem,) = spec_problems(tmp_path, eval_job + "eval: {metrics: {fid_at_scales: [3]}}\n")
    assert "eval.metrics.fid_at_scales: [3] are not scales of the evaluated schedule [1, 2, 7]" in problem
    (problem,) = spec_problems(tmp_path, eval_job + "data: {limit: 100}\n")
    assert "data.limit: is not read by eval jobs" in problem


def test_a_sweep_accepts_a_field_some_trial_reads_and_refuses_one_no_trial_reads(tmp_path):
    # gamma is read by the sar trials of a sweep over the kind
    base = SWEEP.replace("objective: {kind: sar}", "objective: {kind: tf, gamma: 0.3}")
    kinds = base.replace("""  objective.gamma: {grid: [0.0, 0.5]}
  objective.sampling: {choice: [argmax, stochastic]}
""", "  objective.kind: {grid: [tf, sar]}\n")
    assert load_job(write_spec(tmp_path, kinds)).train.objective.gamma == 0.3
    (problem,) = spec_problems(tmp_path, kinds.replace("gamma: 0.3", "hybrid_scale: 3"))
    assert "train.objective.hybrid_scale: is only read by kind: sf_hybrid" in problem
    (problem,) = spec_problems(tmp_path, kinds.replace("[tf, sar]", "[tf, sf_hybrid]").replace("gamma: 0.3", "hybrid_scale: 9"))
    assert "space.objective.kind: value 'sf_hybrid': objective.hybrid_scale 9 leaves no student-forced scale" in problem


def test_a_pipeline_shares_one_probe_and_refuses_one_per_step(tmp_path):
    text = pipeline_spec("p", {"a": train_step("log: {diagnostics_every: 5}", tokenizer="t.safetensors", optim="{steps: 10}")},
                         head=("probe: {images: 32, seed: 3}",))
    job = load_job(write_spec(tmp_path, text))
    assert job.steps["a"].probe.images == 32 and job.steps["a"].probe.seed == 3
    (problem,) = spec_problems(tmp_path, text + "    probe: {images: 8}\n")
    assert "steps.a.probe: set probe on the pipeline, not on a step" in problem


def test_a_runs_params_are_exactly_the_fields_its_job_reads(tmp_path):
    from sar_platform.services.tracking import flatten
    from sar_platform.spec.reads import read_spec

    tf = flatten(read_spec(load_job(write_spec(tmp_path, TRAIN))))
    assert {k for k in tf if k.startswith("objective.")} == {"objective.kind", "objective.weighting"}
    assert "eval.metrics.inception_weights" not in tf and "schedule.max_tokens" not in tf and "mlflow.port" in tf
    sar = load_job(write_spec(tmp_path, TRAIN + "objective: {preset: paper, sampling: argmax}\n"))
    params = flatten(read_spec(sar))
    assert params["objective.preset"] == "paper" and params["objective.gamma"] == "1.0"
    assert not any(k.startswith("objective.rollout.") for k in params)  # argmax reads no rollout setting
    unread = {".".join(map(str, k)) for k in sar.unread_fields()}
    assert not any(k == u or k.startswith(u + ".") for k in params for u in unread)
    # a pipeline's run records its own fields, not its steps'
    pipeline = load_job(REPO / "jobs" / "quickstart.yaml")
    assert not any(k.startswith("steps.") for k in flatten(read_spec(pipeline)))
    assert flatten(read_spec(pipeline))["baseline"] == "tf"


def test_probe_and_continuation_settings_are_checked_at_their_fields(tmp_path):
    job = load_job(write_spec(tmp_path, TRAIN + "log: {diagnostics_every: 5}\neval: {continuation: {ks: [0, 5], num_samples: 50}}\n"))
    assert job.probe.draw(job.eval.sampling) == ("cfg", job.eval.sampling.single()) and job.probe.rollout_draws() == 4
    assert job.eval.continuation.ks == (0, 5)
    (problem,) = spec_problems(tmp_path, TRAIN + "eval: {continuation: {ks: [2, 6]}}\n")
    assert "eval.continuation.ks: [6] go beyond the schedule's 5 scales; pick from 0..5" in problem
    (problem,) = spec_problems(tmp_path, TRAIN + "eval: {continuation: {ks: [1], num_samples: 5}}\n")
    assert "eval.continuation.num_samples: 5 is too few for metrics.pr_k = 3 and metrics.is_splits = 10" in problem
    (problem,) = spec_problems(tmp_path, TRAIN + "eval: {continuation: {ks: [1, 1]}}\n")
    assert "eval.continuation" in problem and "ks must be a list without repeats" in problem
    (problem,) = spec_problems(tmp_path, TRAIN + "log: {diagnostics_every: 5}\nprobe: {calibration_fraction: 1.0}\n")
    assert "probe.calibration_fraction" in problem
    flexvar = load_job(write_spec(tmp_path, TRAIN + "log: {diagnostics_every: 5}\neval: {sampling: {preset: flexvar_eval}}\n"))
    strategy, settings = flexvar.probe.draw(flexvar.eval.sampling)
    assert strategy == "cfg" and settings.flexvar_max_size is None and settings.cfg_ramp == "flexvar"
