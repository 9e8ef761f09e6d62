"""The converged-base protocol: a stated rule picks a run's best step from its selection evaluations
and ends training once they stop improving; `step:<name>@best` takes the chosen checkpoint; specs
that cannot follow the protocol are refused at the field."""
import math

import pytest

from sar_platform.services.selection import BestStep
from sar_platform.spec import load_job
from sar_platform.spec.selection import SelectSpec
from tests.support.specs import pipeline_spec, spec_problems, train_spec, train_step, write_spec

FIDS = [(500, 14.0), (1000, 12.1), (1500, 11.2), (2000, 11.25), (2500, 10.69), (3000, 11.67)]
"""A pretraining FID curve: the last checkpoint is not the best."""


def seen(rule: SelectSpec, evaluations) -> BestStep:
    best = BestStep(rule)
    for step, value in evaluations:
        best.observe(step, value)
    return best


def test_the_rule_picks_the_lowest_fid_not_the_last_evaluation():
    best = seen(SelectSpec(metric="fid"), FIDS)
    assert (best.best_step, best.best_value) == (2500, 10.69)
    assert best.since_best == 1 and not best.should_stop  # no patience: trains every step


def test_higher_is_better_for_is_precision_and_recall_and_a_mode_against_that_is_refused():
    best = seen(SelectSpec(metric="is"), [(1, 5.0), (2, 7.5), (3, 7.0)])
    assert best.best_step == 2 and best.rule.better == "max"
    with pytest.raises(ValueError, match="fid is better when lower; use mode: min"):
        SelectSpec(metric="fid", mode="max")


def test_an_improvement_must_reach_min_delta_and_ties_keep_the_earlier_step():
    assert seen(SelectSpec(min_delta=0.5), FIDS).best_step == 2500  # 10.69 beats 11.2 by 0.51
    strict = seen(SelectSpec(min_delta=0.6), FIDS)
    assert (strict.best_step, strict.best_value, strict.since_best) == (1500, 11.2, 3)  # 0.51 is not enough
    assert seen(SelectSpec(), [(1, 3.0), (2, 3.0)]).best_step == 1


def test_a_non_finite_evaluation_never_becomes_the_best():
    best = seen(SelectSpec(patience=2), [(1, math.nan), (2, 9.0), (3, math.inf), (4, math.nan)])
    assert best.best_step == 2 and best.should_stop


def test_early_stopping_ends_after_patience_evaluations_without_improvement_and_says_why():
    rule = SelectSpec(patience=2, min_delta=0.1)
    best = BestStep(rule)
    decisions = []
    for step, value in [(500, 12.0), (1000, 11.0), (1500, 10.95), (2000, 11.3)]:
        best.observe(step, value)
        decisions.append(best.should_stop)
    assert decisions == [False, False, False, True]  # 10.95 is no improvement of at least 0.1
    with pytest.raises(RuntimeError, match="the rule ended training at step 2000"):
        best.observe(2500, 9.0)
    best = seen(rule, [(500, 12.0), (1000, 11.0), (1500, 10.95), (2000, 11.3)])
    assert best.stop_reason() == ("stopped at step 2000: 2 evaluations without improving by at least 0.1 on "
                                  "select/fid = 11 (step 1000); patience 2")
    assert best.standing() == {"select/best_step": 1000.0, "select/best_fid": 11.0, "select/evaluations": 4.0,
                               "select/evaluations_since_best": 2.0, "select/stopped_early": 1.0}
    assert seen(rule, FIDS[:2]).stop_reason() is None


def test_a_selection_evaluation_is_reported_under_select_with_the_rules_standing():
    best = BestStep(SelectSpec())
    report = best.score(500, {"fid": 12.0, "fid_se": 0.1, "is": 7.0})
    assert report["select/fid"] == 12.0 and report["select/fid_se"] == 0.1 and report["select/best_step"] == 500
    assert "fid" not in report  # never mixed with the final evaluation's, made on another sample set
    with pytest.raises(KeyError, match="reported no fid"):
        best.score(1000, {"is": 7.0})


def test_ray_train_ranks_the_rules_best_checkpoint_first_whatever_min_delta_says_of_raw_values():
    best, scores = BestStep(SelectSpec(min_delta=0.6)), {}
    for step, value in FIDS:
        best.observe(step, value)
        scores[step] = best.checkpoint_score(step)
    ranked = sorted((s for s in scores if not math.isnan(scores[s])), key=scores.get, reverse=True)
    assert ranked == [1500, 1000, 500]  # 2500 has the lowest FID, but not by min_delta: it is not kept for it
    assert math.isnan(best.checkpoint_score(1000))  # asked now, when it is no longer the best: ranked last


def test_the_state_is_the_evaluations_and_replaying_them_restores_every_decision():
    rule = SelectSpec(patience=2)
    before = seen(rule, FIDS)
    after = BestStep(rule)
    after.load_state_dict(before.state_dict())
    assert after.state_dict() == before.state_dict() == {"history": [[s, v] for s, v in FIDS]}
    assert (after.best_step, after.best_value, after.since_best, after.should_stop) == \
           (before.best_step, before.best_value, before.since_best, before.should_stop) == (2500, 10.69, 1, False)


# -- specs ---------------------------------------------------------------------------------------

TRAIN = train_spec("tiny", "checkpoint: {every_steps: 500}", optim="{steps: 3000, batch_size: 8}")


def test_a_selection_spec_names_its_rule_and_its_own_sample_set(tmp_path):
    job = load_job(write_spec(tmp_path, TRAIN + "eval: {every_steps: 1000, select: {patience: 3, min_delta: 0.1}}\n"))
    assert job.eval.select.report_key == "select/fid" and job.eval.select.better == "min"
    assert job.eval.selection_metrics.seed == 1 != job.eval.metrics.seed
    assert job.eval.select.describe() == ("lowest select/fid (selection samples, seed 1), improving by at least 0.1; "
                                          "stop after 3 evaluations without improvement")


@pytest.mark.parametrize("written, expected", [
    ("eval: {every_steps: 700, select: {}}", "eval.every_steps: 700 is not a multiple of checkpoint.every_steps = 500: "
                                             "the selection rule can only pick a kept checkpoint; use a multiple of 500 "
                                             "(e.g. 1000)"),
    ("eval: {select: {metric: fid}}", "eval.select: needs periodic evaluations to choose from; set eval.every_steps"),
    ("eval: {every_steps: 3500, select: {}}", "eval.every_steps: 3500 is beyond optim.steps = 3000"),
    ("eval: {every_steps: 500, select: {seed: 0}}", "eval.select.seed: 0 is eval.metrics.seed too: the selection "
                                                   "samples must differ from the final evaluation's"),
    ("eval: {every_steps: 500, select: {metric: recall, mode: min}}", "recall is better when higher; use mode: max"),
    ("eval: {every_steps: 500, select: {patience: 0}}", "eval.select.patience: Input should be greater than or equal to 1"),
])
def test_a_spec_that_cannot_follow_the_protocol_is_refused_at_the_field(tmp_path, written, expected):
    found = spec_problems(tmp_path, TRAIN + written + "\n")
    assert any(expected in p for p in found), found


PIPELINE = pipeline_spec("p", {
    "pretrain": train_step("checkpoint: {every_steps: 10}", "eval: {every_steps: 10, select: {patience: 2}}",
                           optim="{steps: 20}"),
    "tf": train_step(init_from="step:pretrain@best", optim="{steps: 5}"),
})


def test_a_reference_names_best_or_last_and_best_needs_a_selection_rule(tmp_path):
    job = load_job(write_spec(tmp_path, PIPELINE))
    assert job.steps["tf"].init_from == "step:pretrain@best"
    assert load_job(write_spec(tmp_path, PIPELINE.replace("@best", "@last"))).steps["tf"].init_from == "step:pretrain@last"
    (problem,) = spec_problems(tmp_path, PIPELINE.replace("    eval: {every_steps: 10, select: {patience: 2}}\n", ""))
    assert ("steps.tf.init_from: step:pretrain@best: step pretrain has no selection rule, so no best checkpoint; "
            "give it eval.select (a train step) or use step:pretrain@last") in problem
    (problem,) = spec_problems(tmp_path, PIPELINE.replace("@best", "@first"))
    assert (":15:5: steps.tf.init_from: 'step:pretrain@first' is not a step reference: write step:<name>, "
            "step:<name>@best or step:<name>@last") in problem


OUTPUTS = {"pretrain": {
    "kind": "train", "tokenizer": "/ws/tok.safetensors", "checkpoint": "/ws/runs/p.pretrain/checkpoint_00000020",
    "generator": "/ws/runs/p.pretrain/checkpoint_00000020/generator.safetensors",
    "selection": {"why": "lowest select/fid (selection samples, seed 1): best select/fid = 10.69 at step 10 of 2 evaluations",
                  "best_step": 10, "checkpoint": "/ws/runs/p.pretrain/checkpoint_00000010",
                  "generator": "/ws/runs/p.pretrain/checkpoint_00000010/generator.safetensors"}}}


def test_best_resolves_to_the_recorded_best_checkpoint_and_last_or_bare_to_the_last(tmp_path):
    job = load_job(write_spec(tmp_path, PIPELINE))
    tf = job.steps["tf"]
    assert tf.resolve(OUTPUTS).init_from == "/ws/runs/p.pretrain/checkpoint_00000010/generator.safetensors"
    for ref in ("step:pretrain@last", "step:pretrain"):
        assert tf.model_copy(update={"init_from": ref}).resolve(OUTPUTS).init_from.endswith("checkpoint_00000020/generator.safetensors")


def test_the_consuming_run_is_tagged_with_the_checkpoint_it_took_and_why(tmp_path):
    tf = load_job(write_spec(tmp_path, PIPELINE)).steps["tf"]
    tags = tf.reference_tags(OUTPUTS)
    assert tags["sar.ref.init_from"] == "step:pretrain@best"
    assert tags["sar.ref.init_from.chosen"] == ("the best checkpoint of step pretrain by its rule: lowest select/fid "
                                                "(selection samples, seed 1): best select/fid = 10.69 at step 10 of 2 evaluations")
    bare = tf.model_copy(update={"init_from": "step:pretrain"}).reference_tags(OUTPUTS)["sar.ref.init_from.chosen"]
    assert bare.startswith("the last (a bare step:<name> takes the last) checkpoint of step pretrain; its rule would choose:")


def test_best_without_a_recorded_best_checkpoint_is_an_error_never_the_last_one(tmp_path):
    tf = load_job(write_spec(tmp_path, PIPELINE)).steps["tf"]
    no_rule = {"pretrain": {k: v for k, v in OUTPUTS["pretrain"].items() if k != "selection"}}
    with pytest.raises(ValueError, match="step pretrain recorded no best checkpoint .* use step:pretrain@last"):
        tf.resolve(no_rule)
    lost = {"pretrain": {**OUTPUTS["pretrain"], "selection": {"why": "...", "missing": "checkpoint_00000010 is damaged"}}}
    with pytest.raises(ValueError, match="no best checkpoint to take: checkpoint_00000010 is damaged"):
        tf.resolve(lost)
