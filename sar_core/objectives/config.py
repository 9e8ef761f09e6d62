"""One configuration for every training objective the paper discusses, so a sweep can compare them.

`ObjectiveConfig` is a frozen stdlib dataclass of plain fields (the platform embeds it in its
pydantic spec tree, which validates field types and Literal choices at the field's path and turns
the ValueErrors of `__post_init__`, whose messages name the field, into errors at the config's
path). Every field has a default; which fields a kind reads is `ObjectiveConfig.active_fields()`,
and `unread_fields()` says of every other one why it is not read (specs refuse such fields when
they are written explicitly):

    kind           a key of OBJECTIVE_KINDS (kinds.py): tf | sar | sf_* | noisy_context
    weighting      token | scale | dynamic   per-scale weights of every loss (all kinds)
    dynamic_momentum                         EMA decay of the running per-scale loss (weighting=dynamic)
    sampling       argmax | stochastic | cfg how self-generated tokens are drawn (sar, sf_*, noisy_context
                                             with noise_source model, diagnostics)
    rollout        SamplingConfig            top_k/top_p/temperature (stochastic, cfg), cfg/cfg_ramp (cfg)
    gamma, rollout_depth, csfl_target, csfl_scales, student_context, student_fraction    (sar)
    residual_context   ground_truth_below | own_draws: what the student's input at scale k+1
                       accumulates below the drawn scale k, on families whose inputs accumulate
                       every earlier scale (VAR's f-hat; docs/model-families.md)     (sar, family var)
    hybrid_scale   scale SIZE from which sf_hybrid student-forces ("Hybrid @ 8")       (sf_hybrid)
    noise_rate, noise_source   input tokens replaced, and by what (random | model)  (noisy_context)
    preset         the name of the preset the values started from (a label recorded with runs)

`OBJECTIVE_PRESETS` names the paper's equation-10 SAR, the released code's SAR, and the paper's SSR
with the student graded on the ground truth (no CSFL).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from sar_core.objectives.kinds import KIND_FIELDS, OBJECTIVE_KINDS
from sar_core.objectives.noisy_context import NOISE_SOURCES
from sar_core.token_sampling import SamplingConfig

Kind = Literal[tuple(OBJECTIVE_KINDS)]  # the table's keys: an unknown kind fails validation
NoiseSource = Literal[tuple(NOISE_SOURCES)]
Weighting = Literal["token", "scale", "dynamic"]
SamplingStrategy = Literal["argmax", "stochastic", "cfg"]
CsflTarget = Literal["teacher_soft", "teacher_hard", "ground_truth"]
CsflScales = Literal["all", "last", "random_one"]
StudentContext = Literal["full", "single_scale"]
ResidualContext = Literal["ground_truth_below", "own_draws"]

_GUIDANCE_FIELDS = ("rollout.cfg", "rollout.cfg_ramp")


@dataclass(frozen=True)
class ObjectiveConfig:
    kind: Kind = "tf"
    weighting: Weighting = "token"
    dynamic_momentum: float = 0.99
    gamma: float = 1.0
    sampling: SamplingStrategy = "argmax"
    rollout: SamplingConfig = SamplingConfig()  # a partial dict fills the rest from SamplingConfig's defaults
    rollout_depth: int = 1
    csfl_target: CsflTarget = "teacher_soft"
    csfl_scales: CsflScales = "all"
    student_context: StudentContext = "full"
    student_fraction: float = 1.0
    residual_context: ResidualContext = "ground_truth_below"
    hybrid_scale: int = 8
    noise_rate: float = 0.1
    noise_source: NoiseSource = "random"
    preset: str = ""

    def __post_init__(self):
        for name, choices in (("kind", Kind), ("weighting", Weighting), ("sampling", SamplingStrategy),
                              ("csfl_target", CsflTarget), ("csfl_scales", CsflScales),
                              ("student_context", StudentContext), ("noise_source", NoiseSource),
                              ("residual_context", ResidualContext)):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"{name} must be one of {', '.join(get_args(choices))}; got {getattr(self, name)!r}")
        if isinstance(self.rollout, dict):  # plain-Python callers may pass the nested settings as a dict
            object.__setattr__(self, "rollout", SamplingConfig(**self.rollout))
        if not isinstance(self.rollout, SamplingConfig):
            raise ValueError(f"rollout must be a SamplingConfig (or a dict of its fields); got {type(self.rollout).__name__}")
        _check_int("rollout_depth", self.rollout_depth, 1)
        _check_int("hybrid_scale", self.hybrid_scale, 1)
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0 (0 trains on L_TF alone); got {self.gamma}")
        if not (math.isfinite(self.noise_rate) and 0.0 <= self.noise_rate < 1.0):
            raise ValueError(f"noise_rate must be in [0, 1): the probability that each input token is replaced "
                             f"(1 would leave no ground truth in the context); got {self.noise_rate}")
        if not 0.0 < self.student_fraction <= 1.0:
            raise ValueError(f"student_fraction must be in (0, 1]; got {self.student_fraction}")
        if not 0.0 <= self.dynamic_momentum < 1.0:
            raise ValueError(f"dynamic_momentum must be in [0, 1); got {self.dynamic_momentum}")
        if self.student_context == "single_scale" and self.csfl_scales == "all":
            raise ValueError("student_context='single_scale' trains one transition per step, so csfl_scales must be "
                             "'last' or 'random_one'; got csfl_scales='all' (use student_context='full' for all scales)")
        if self.rollout.flexvar_max_size is not None:
            raise ValueError("rollout.flexvar_max_size is a rule of FlexVAR's sampler at inference (greedy and fully "
                             "guided at sizes its training never saw); training rollouts draw every scale alike: "
                             "leave it out")
        if self.sampling == "cfg" and self.rollout.cfg == 0:
            raise ValueError("sampling='cfg' needs rollout.cfg > 0 (cfg 0 is unguided: use sampling='stochastic')")
        if self.preset and self.preset not in OBJECTIVE_PRESETS:
            raise ValueError(f"unknown objective preset {self.preset!r}; presets: {', '.join(OBJECTIVE_PRESETS)}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ObjectiveConfig":
        """The preset's values with `overrides` on top (a `rollout` dict overrides key by key)."""
        return cls(**merge_preset(name, overrides))

    def active_fields(self) -> tuple[str, ...]:
        """The fields this configuration's training step reads; the others do not change it."""
        unread = self.unread_fields()
        paths = [f.name for f in fields(self) if f.name not in ("rollout", "preset")]
        paths[paths.index("sampling") + 1:paths.index("sampling") + 1] = [f"rollout.{f.name}" for f in fields(self.rollout)]
        return tuple(p for p in paths if not any(p == u or p.startswith(u + ".") for u in unread))

    def unread_fields(self) -> dict[str, str]:
        """Field path -> why this configuration's training step never reads it, and what would make
        it count. A path covers the fields below it (`rollout` covers `rollout.top_k`)."""
        kind, spec = self.kind, OBJECTIVE_KINDS[self.kind]
        out = {}
        if self.weighting != "dynamic":
            out["dynamic_momentum"] = f"is only read with weighting: dynamic (here weighting: {self.weighting})"
        for name, readers in KIND_FIELDS.items():
            if kind not in readers:
                names = " or ".join(readers)
                out[name] = f"is only read by kind: {names} (here kind: {kind}; use kind: {names}, or remove it)"
        out.update(spec.unread_own(self))
        why_no_draws = spec.unread_draws(self)
        if why_no_draws is not None:
            return {**out, "sampling": why_no_draws, "rollout": why_no_draws}
        return {**out, **unread_rollout_fields(self.sampling, self.rollout)}

    def rollout_words(self) -> str:
        """How the rollout draws its tokens, with the settings that tell two rollouts apart, e.g.
        "cfg 2.5 rollout (linear ramp, top-k 900, top-p 0.95)"."""
        r = self.rollout
        if self.sampling == "argmax":
            return "argmax rollout"
        head = f"cfg {r.cfg:g} rollout" if self.sampling == "cfg" else "stochastic rollout"
        details = [f"{r.cfg_ramp} ramp"] if self.sampling == "cfg" else []
        details += [f"top-k {r.top_k}"] if r.top_k > 0 else []
        details += [f"top-p {r.top_p:g}"] if 0 < r.top_p < 1 else []
        details += [f"temperature {r.temperature:g}"] if r.temperature != 1 else []
        return head + (f" ({', '.join(details)})" if details else "")

    def summary(self) -> str:
        """One line saying what this objective is, e.g. "sar (paper preset), γ=1, cfg 2.5 rollout (...), ..."."""
        head = self.kind + (f" ({self.preset} preset)" if self.preset else "")
        return ", ".join([head, *OBJECTIVE_KINDS[self.kind].describe(self), f"{self.weighting} weighting"])

    def schedule_conflicts(self, last: int, where: str) -> list[tuple[str, str]]:
        """(field, problem) for fields this kind cannot train with on schedules whose last scale is
        `last` (at smallest; `where` says where that scale comes from, e.g. "schedule.scales, which ends")."""
        return OBJECTIVE_KINDS[self.kind].schedule_conflicts(self, last, where)


def unread_rollout_fields(sampling: str, rollout: SamplingConfig) -> dict[str, str]:
    """`rollout` field paths that drawing tokens with `sampling` never reads -> why."""
    if sampling == "argmax":
        return {"rollout": "is not read with sampling: argmax (use sampling: stochastic or cfg, or remove it)"}
    if sampling == "stochastic":
        return {f: "is only read with sampling: cfg (use sampling: cfg, or remove it)" for f in _GUIDANCE_FIELDS}
    return {f"rollout.{k}": why for k, why in rollout.unread_fields().items()}


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


OBJECTIVE_PRESETS: dict[str, dict[str, Any]] = {
    # Equation 10: all scales 2..N in one parallel student pass with full context, each matched to the
    # detached teacher distribution; Table 5's best sampling (top-k 900, top-p 0.95, CFG 2.5, which
    # we put on the inference ramp: the first scale unguided). gamma is not given in the paper (ours: 1);
    # the paper says SAR reweights scales dynamically without a formula (ours: see weighting.py).
    "paper": dict(
        kind="sar", weighting="dynamic", gamma=1.0, sampling="cfg",
        rollout=dict(cfg=2.5, cfg_ramp="linear", top_k=900, top_p=0.95, temperature=1.0),
        rollout_depth=1, csfl_target="teacher_soft", csfl_scales="all", student_context="full", student_fraction=1.0,
    ),
    # What the released trainer does: one transition (the last), the student sees only the class token
    # and the up-sampled sampled scale N-1, hard cross-entropy to the teacher's sampled tokens, weight
    # 0.01, CFG rollout sampling with cfg 1.2 on the half-linear ramp, top-k 900, top-p 0.96, 1/L
    # weighting. Its launch scripts ask for other rollouts (argmax for d16/d20/d24, or cfg 2.5 with
    # top-p 0.96), but those flags never reach the trainer: the preset follows what runs.
    "released_code": dict(
        kind="sar", weighting="token", gamma=0.01, sampling="cfg",
        rollout=dict(cfg=1.2, cfg_ramp="half_linear", top_k=900, top_p=0.96, temperature=1.0),
        rollout_depth=1, csfl_target="teacher_hard", csfl_scales="last", student_context="single_scale",
        student_fraction=1.0,
    ),
}
# The paper's SAR with the student graded on the ground truth instead of the teacher (CE to f_i, as
# naive student forcing and the paper's Algorithm 1, line 24, do): everything else as `paper`.
# Against `paper` it isolates CSFL; against `tf` it measures SSR's exposure with ground-truth supervision.
OBJECTIVE_PRESETS["ssr_no_csfl"] = {**copy.deepcopy(OBJECTIVE_PRESETS["paper"]), "csfl_target": "ground_truth"}


def merge_preset(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The field values of preset `name` with `overrides` on top, as plain values (nested `rollout`
    dicts merge key by key). This is the expansion a spec's `preset:` key stands for."""
    if name not in OBJECTIVE_PRESETS:
        raise ValueError(f"unknown objective preset {name!r}; presets: {', '.join(OBJECTIVE_PRESETS)}")
    values = {**copy.deepcopy(OBJECTIVE_PRESETS[name]), "preset": name}
    known = {f.name for f in fields(ObjectiveConfig)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"unknown objective field {key!r}; fields: {', '.join(sorted(known))}")
        if key == "rollout" and isinstance(value, dict):
            values["rollout"] = {**values.get("rollout", {}), **value}
        else:
            values[key] = value
    return values
