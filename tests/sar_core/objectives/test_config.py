import dataclasses

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from sar_core.objectives import OBJECTIVE_PRESETS, ObjectiveConfig, merge_preset
from sar_core.token_sampling import SamplingConfig


def test_presets_name_the_paper_and_the_released_code():
    paper = ObjectiveConfig.from_preset("paper")
    assert (paper.kind, paper.csfl_target, paper.csfl_scales, paper.student_context) == ("sar", "teacher_soft", "all", "full")
    assert paper.sampling == "cfg" and paper.rollout == SamplingConfig(cfg=2.5, cfg_ramp="linear", top_k=900, top_p=0.95)
    code = ObjectiveConfig.from_preset("released_code")
    assert (code.kind, code.gamma, code.csfl_target, code.csfl_scales, code.student_context, code.weighting) == (
        "sar", 0.01, "teacher_hard", "last", "single_scale", "token")
    assert code.sampling == "cfg" and code.rollout == SamplingConfig(cfg=1.2, cfg_ramp="half_linear", top_k=900, top_p=0.96)


def test_ssr_no_csfl_is_the_paper_preset_with_the_student_graded_on_the_ground_truth():
    paper, ssr = OBJECTIVE_PRESETS["paper"], OBJECTIVE_PRESETS["ssr_no_csfl"]
    assert {k for k in ssr if ssr[k] != paper[k]} == {"csfl_target"} and ssr["csfl_target"] == "ground_truth"
    assert ObjectiveConfig.from_preset("ssr_no_csfl").summary() == (
        "sar (ssr_no_csfl preset), γ=1, cfg 2.5 rollout (linear ramp, top-k 900, top-p 0.95), CSFL ground_truth on all "
        "scales, dynamic weighting")
    assert set(OBJECTIVE_PRESETS) == {"paper", "released_code", "ssr_no_csfl"}


def test_a_summary_tells_apart_rollouts_that_differ_only_in_their_draw_settings():
    words = [ObjectiveConfig.from_preset("paper", **o).summary() for o in
             ({}, {"rollout": {"cfg": 1.0}}, {"sampling": "stochastic"}, {"sampling": "argmax"},
              {"sampling": "stochastic", "rollout": {"top_k": 0, "top_p": 1.0, "temperature": 0.8}})]
    assert len(set(words)) == len(words)
    assert "cfg 1 rollout (linear ramp, top-k 900, top-p 0.95)" in words[1]
    assert "stochastic rollout (top-k 900, top-p 0.95)," in words[2] and "argmax rollout," in words[3]
    assert "stochastic rollout (temperature 0.8)," in words[4]
    assert ", rollout depth 2, CSFL" in ObjectiveConfig.from_preset("paper", rollout_depth=2).summary()


def test_preset_overrides_replace_fields_and_merge_rollout_key_by_key():
    cfg = ObjectiveConfig.from_preset("released_code", gamma=0.1, rollout={"cfg": 2.0}, csfl_target="ground_truth")
    assert cfg.gamma == 0.1 and cfg.csfl_target == "ground_truth"
    assert cfg.rollout == SamplingConfig(cfg=2.0, cfg_ramp="half_linear", top_k=900, top_p=0.96)
    assert merge_preset("paper", {"sampling": "argmax"})["sampling"] == "argmax"
    assert OBJECTIVE_PRESETS["paper"]["sampling"] == "cfg"  # merging never edits the preset itself
    with pytest.raises(ValueError, match="unknown objective preset 'papr'"):
        ObjectiveConfig.from_preset("papr")
    with pytest.raises(ValueError, match="unknown objective field 'gama'"):
        ObjectiveConfig.from_preset("paper", gama=1.0)


@pytest.mark.parametrize("field, value, message", [
    ("kind", "ssr", "kind must be one of tf, sar"),
    ("weighting", "focal", "weighting must be one of token, scale, dynamic"),
    ("csfl_target", "teacher", "csfl_target must be one of"),
    ("gamma", -0.5, "gamma must be a finite number >= 0"),
    ("gamma", float("nan"), "gamma must be a finite number >= 0"),
    ("rollout_depth", 0, "rollout_depth must be an integer >= 1"),
    ("rollout_depth", True, "rollout_depth must be an integer >= 1"),
    ("student_fraction", 0.0, r"student_fraction must be in \(0, 1\]"),
    ("student_fraction", 1.5, r"student_fraction must be in \(0, 1\]"),
    ("dynamic_momentum", 1.0, r"dynamic_momentum must be in \[0, 1\)"),
    ("hybrid_scale", 0, "hybrid_scale must be an integer >= 1"),
    ("rollout", 3, "rollout must be a SamplingConfig"),
])
def test_bad_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ObjectiveConfig(**{field: value})


def test_combinations_that_would_silently_do_nothing_are_refused():
    with pytest.raises(ValueError, match="student_context='single_scale' .* csfl_scales must be 'last' or 'random_one'"):
        ObjectiveConfig(kind="sar", student_context="single_scale", csfl_scales="all")
    with pytest.raises(ValueError, match="sampling='cfg' needs rollout.cfg > 0"):
        ObjectiveConfig(sampling="cfg", rollout=SamplingConfig(cfg=0.0))


def test_config_is_frozen_and_a_rollout_dict_becomes_a_sampling_config():
    cfg = ObjectiveConfig(rollout={"top_k": 5})
    assert cfg.rollout == SamplingConfig(top_k=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gamma = 2.0


def test_active_fields_list_what_each_kind_reads():
    assert ObjectiveConfig().active_fields() == ("kind", "weighting")
    assert ObjectiveConfig(weighting="dynamic").active_fields() == ("kind", "weighting", "dynamic_momentum")
    sar = ObjectiveConfig.from_preset("paper").active_fields()
    assert {"gamma", "rollout_depth", "student_fraction", "rollout.cfg", "rollout.cfg_ramp", "rollout.top_k"} <= set(sar)
    assert "hybrid_scale" not in sar
    stochastic = ObjectiveConfig(kind="sf_hybrid", sampling="stochastic").active_fields()
    assert "hybrid_scale" in stochastic and "rollout.top_p" in stochastic and "rollout.cfg" not in stochastic
    assert not any(f.startswith("rollout") for f in ObjectiveConfig(kind="sf_full").active_fields())  # argmax
    assert "gamma" not in ObjectiveConfig(kind="sf_interleave").active_fields()


class Spec(BaseModel):
    """How the platform embeds the config in its pydantic spec tree."""

    model_config = ConfigDict(extra="forbid")
    objective: ObjectiveConfig = ObjectiveConfig()


def test_pydantic_validates_the_embedded_config():
    spec = Spec.model_validate({"objective": merge_preset("released_code", {"rollout": {"top_k": 50}})})
    assert isinstance(spec.objective, ObjectiveConfig) and isinstance(spec.objective.rollout, SamplingConfig)
    assert spec.objective.rollout.top_k == 50 and spec.objective.rollout.cfg == 1.2
    for bad, where, message in (
        ({"kind": "ssr"}, ("objective", "kind"), "Input should be"),
        ({"sampling": "greedy"}, ("objective", "sampling"), "Input should be"),
        ({"gama": 1.0}, ("objective", "gama"), "Unexpected keyword"),
        ({"rollout": {"top_q": 0.9}}, ("objective", "rollout", "top_q"), "Unexpected keyword"),
        ({"gamma": -1}, ("objective",), "gamma must be a finite number >= 0"),
    ):
        with pytest.raises(ValidationError) as err:
            Spec.model_validate({"objective": bad})
        first = err.value.errors()[0]
        assert first["loc"] == where and message in first["msg"]
