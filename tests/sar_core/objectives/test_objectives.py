import dataclasses
import random
import re

import pytest
import torch

from sar_core.objectives import OBJECTIVE_KINDS, ObjectiveConfig, build_objective
from sar_core.objectives.batch import StepInputs
from sar_core.objectives.teacher_forcing import TF_NLL, teacher_forced_nll
from sar_core.schedule import ScaleSchedule, ScheduleDraw
from sar_core.token_sampling import SamplingConfig

from .conftest import Recorder, make_batch

KINDS = tuple(OBJECTIVE_KINDS)


def step_results(model, config, batches):
    """Losses of consecutive steps and the gradient of the last one."""
    objective, losses = build_objective(config), []
    for step, batch in enumerate(batches):
        model.zero_grad(set_to_none=True)
        out = objective(model, batch, step, torch.Generator().manual_seed(step))
        out.loss.backward()
        losses.append(out.loss.detach())
    return torch.stack(losses), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def same(a, b):
    return torch.equal(a[0], b[0]) and len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_gamma_zero_gives_exactly_the_teacher_forcing_gradients(generator_model, batch):
    generator_model.train()  # class dropout and drop-path on: both objectives must draw them alike

    def grads(config):
        torch.manual_seed(0)
        generator_model.zero_grad(set_to_none=True)
        build_objective(config)(generator_model, batch, 0, torch.Generator().manual_seed(0)).loss.backward()
        return [p.grad.clone() for p in generator_model.parameters()]

    tf = grads(ObjectiveConfig(kind="tf", weighting="dynamic"))
    sar = grads(ObjectiveConfig.from_preset("paper", gamma=0.0))
    assert all(torch.equal(a, b) for a, b in zip(tf, sar))
    assert not all(torch.equal(a, b) for a, b in zip(tf, grads(ObjectiveConfig.from_preset("paper", gamma=0.1))))


# Each field's alternative value, against bases in which every field a kind reads is live.
ALTERNATIVES = {
    "weighting": "scale", "dynamic_momentum": 0.5, "gamma": 0.3, "sampling": ("argmax", "stochastic"),
    "rollout.cfg": 4.0, "rollout.cfg_ramp": "constant", "rollout.top_k": 2, "rollout.top_p": 0.3,
    "rollout.temperature": 0.3, "rollout_depth": 2, "csfl_target": "ground_truth", "csfl_scales": "all",
    "student_context": "single_scale", "student_fraction": 0.5, "hybrid_scale": 2, "noise_rate": 0.3,
    "noise_source": ("random", "model"),
}
LIVE_ROLLOUT = SamplingConfig(cfg=1.5, cfg_ramp="linear", top_k=0, top_p=0.0, temperature=1.0)
BASES = [ObjectiveConfig(kind=k, weighting="dynamic", sampling="cfg", rollout=LIVE_ROLLOUT, csfl_scales="last",
                         hybrid_scale=3) for k in KINDS]
BASES.append(dataclasses.replace(BASES[1], sampling="argmax"))  # rollout.* read by no argmax step
BASES.append(dataclasses.replace(BASES[KINDS.index("noisy_context")], noise_source="model"))  # draws with the sampler
BASE_IDS = [f"{b.kind}-{b.sampling}" + (f"-{b.noise_source}" if b.kind == "noisy_context" else "") for b in BASES]


def with_field(config, name, value):
    if isinstance(value, tuple):  # the first choice that differs from the base
        value = next(v for v in value if v != getattr(config, name))
    if name.startswith("rollout."):
        return dataclasses.replace(config, rollout=dataclasses.replace(config.rollout, **{name[8:]: value}))
    return dataclasses.replace(config, **{name: value})


@pytest.mark.parametrize("base", BASES, ids=BASE_IDS)
def test_every_field_a_kind_reads_changes_its_step_and_no_other_field_does(confident_model, schedule, base):
    batches = [make_batch(schedule, B=4, seed=s) for s in (0, 1)]
    reference = step_results(confident_model, base, batches)
    assert same(reference, step_results(confident_model, base, batches))  # deterministic, so a change is the field's
    active = set(base.active_fields())
    for name, value in ALTERNATIVES.items():
        changed = step_results(confident_model, with_field(base, name, value), batches)
        matters = name in active
        assert same(reference, changed) != matters, f"{base.kind}: {name} should{'' if matters else ' not'} matter"


def test_objectives_run_on_a_new_schedule_every_step(generator_model):
    draw = ScheduleDraw(ScaleSchedule((1, 2, 3, 4, 5, 6, 7)), default_prob=0.0)
    rng = random.Random(0)
    schedules = [draw(rng) for _ in range(3)] + [ScaleSchedule((1, 3, 7))]
    assert len({s.scales for s in schedules}) >= 3
    configs = [ObjectiveConfig(kind=k, weighting="dynamic", sampling="stochastic", hybrid_scale=2) for k in KINDS]
    configs += [ObjectiveConfig.from_preset("paper", rollout_depth=2), ObjectiveConfig.from_preset("released_code")]
    for config in configs:
        objective = build_objective(config)
        for step, schedule in enumerate(schedules):
            out = objective(generator_model, make_batch(schedule, B=3, seed=step), step, torch.Generator().manual_seed(step))
            out.loss.backward()
            assert torch.isfinite(out.loss) and out.loss.ndim == 0
            assert any(k.endswith(f"/s{schedule.last:02d}") for k in out.metrics)
        if config.weighting == "dynamic":
            seen = {s for schedule in schedules for s in schedule}
            assert {int(s) for s in objective.state_dict()["weighting"]["running_loss"]} == seen


def test_metric_names_are_mlflow_safe_and_indexed_by_scale_size(generator_model, batch):
    keys = set()
    for config in [ObjectiveConfig(kind=k, hybrid_scale=3) for k in KINDS] + [ObjectiveConfig.from_preset("paper")]:
        objective = build_objective(config)
        out = objective(generator_model, batch, 1, torch.Generator().manual_seed(0))
        keys |= set(out.metrics) | set(objective.diagnostics(generator_model, batch, torch.Generator().manual_seed(0)))
        assert all(isinstance(v, float) for v in out.metrics.values())
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./]+", k) for k in keys)
    assert {"loss/total", "loss/tf", "loss/csf", "loss/sf", "tf/loss/s07", "tf/acc/s01", "csf/loss/s05", "sf/acc/s03",
            "weight/s02", "diag/gap/sf", "diag/kl/s07"} <= keys
    scale_keys = {k.rsplit("/", 1)[1] for k in keys if re.search(r"/s\d+$", k)}
    assert scale_keys == {"s01", "s02", "s03", "s05", "s07"}


def test_a_wrapped_model_under_bf16_autocast_gives_a_float32_loss(generator_model, batch):
    generator_model.train()
    wrapped = Recorder(generator_model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build_objective(ObjectiveConfig.from_preset("paper"))(wrapped, batch, 0, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert wrapped.calls[0].logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in generator_model.parameters() if p.grad is not None)


def test_every_kind_reports_the_same_teacher_forced_nll_for_the_same_model_and_batch(generator_model, batch):
    # The curve arms compare on: one formula whatever the kind trains on (eval mode: no drop-path draws).
    generator_model.eval()
    configs = [ObjectiveConfig(kind=k, hybrid_scale=3) for k in KINDS] + [ObjectiveConfig.from_preset("paper")]
    nll = {c.kind + c.preset: build_objective(c)(generator_model, batch, 1, torch.Generator().manual_seed(0)).metrics[TF_NLL]
           for c in configs}
    assert len(nll) == len(configs) and max(nll.values()) - min(nll.values()) < 1e-5, nll
    tf = build_objective(ObjectiveConfig(kind="tf"))(generator_model, batch, 1, torch.Generator().manual_seed(0))
    assert abs(tf.metrics[TF_NLL] - tf.metrics["loss/tf"]) < 1e-5  # token weighting is the mean over tokens


def test_measuring_the_teacher_forced_nll_draws_nothing_from_the_training_rng(generator_model, batch):
    generator_model.train()  # drop path draws from the global RNG in a plain pass
    label_B = generator_model.drop_labels(batch.labels, torch.Generator().manual_seed(0))
    inputs = StepInputs(generator_model, batch, 1, None, label_B, generator_model.scale_inputs(batch.tokens, batch.schedule))
    before = torch.get_rng_state()
    teacher_forced_nll(inputs)
    assert torch.equal(torch.get_rng_state(), before)
    generator_model(label_B, inputs.x_tf_BlCv, batch.schedule)
    assert not torch.equal(torch.get_rng_state(), before)  # what the measurement's own pass would have done
