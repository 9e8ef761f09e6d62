import dataclasses

import pytest
import torch

from sar_core import ScaleGenerator, ScaleSchedule, generate
from sar_core.objectives import ObjectiveConfig, RolloutDraw, build_objective, sequential_rollout
from sar_core.token_sampling import SamplingConfig

from .conftest import Recorder, hand_inputs, hand_upsample


def run(model, batch, kind, seed=0, step=1, **config):
    return build_objective(ObjectiveConfig(kind=kind, **config))(model, batch, step, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("settings", [SamplingConfig(cfg=0.0, top_k=20, top_p=0.9), SamplingConfig(cfg=2.5, cfg_ramp="linear")])
def test_full_rollout_draws_what_the_sampler_draws(generator_model, batch, settings):
    strategy = "cfg" if settings.cfg else "stochastic"
    rolled = sequential_rollout(generator_model, batch.labels, batch.token_maps(), batch.schedule, 0,
                                RolloutDraw(strategy, settings), torch.Generator().manual_seed(5))
    sampled = generate(generator_model, None, batch.labels, batch.schedule, settings, rng=torch.Generator().manual_seed(5))
    for mine, theirs in zip(rolled, sampled.token_maps[:-1]):
        assert torch.equal(mine, theirs.flatten(1))


def test_sf_full_trains_on_the_samplers_trajectory_with_its_recorded_choices(generator_model, batch):
    # no class dropout, so that the objective's rng makes exactly the sampler's draws
    model = ScaleGenerator(dataclasses.replace(generator_model.config, class_dropout=0.0))
    model.load_state_dict(generator_model.state_dict())
    recorder = Recorder(model.eval())
    settings = SamplingConfig(cfg=0.0, top_k=20, top_p=0.9)
    run(recorder, batch, "sf_full", seed=5, sampling="stochastic", rollout=settings)
    sampled = generate(model, None, batch.labels, batch.schedule, settings, rng=torch.Generator().manual_seed(5))
    forced = generate(model, None, batch.labels, batch.schedule, settings, prefix=sampled.token_maps, return_logits=True)
    final = recorder.calls[-1]
    assert final.logits.requires_grad and all(not c.logits.requires_grad for c in recorder.calls[:-1])
    torch.testing.assert_close(final.x, hand_inputs(model.codebook, [m.flatten(1) for m in sampled.token_maps], batch.schedule))
    torch.testing.assert_close(final.logits, torch.cat(forced.logits, dim=1), atol=1e-4, rtol=1e-4)


def test_hybrid_teacher_forces_scales_below_the_hybrid_size_and_rolls_out_from_it(recorder, batch):
    run(recorder, batch, "sf_hybrid", sampling="argmax", hybrid_scale=5)
    model, schedule, gt = recorder.module, batch.schedule, batch.token_maps()
    final = recorder.calls[-1]
    label = final.label
    # by hand: the 3x3 prediction under ground-truth context feeds the 5x5 scale, whose own prediction feeds 7x7
    with torch.no_grad():
        t3 = schedule.split(model(label, hand_inputs(model.codebook, gt, schedule), schedule))[2].argmax(-1)
        head = ScaleSchedule(schedule.scales[:4])
        t5 = model(label, hand_inputs(model.codebook, gt[:2] + [t3], head), head)[:, -25:].argmax(-1)
    expected = hand_inputs(model.codebook, gt[:2] + [t3, t5], schedule)
    torch.testing.assert_close(final.x, expected)
    # sizes, not positions, decide: 4 lies between 3 and 5, so it means the same as 5
    recorder.calls.clear()
    run(recorder, batch, "sf_hybrid", sampling="argmax", hybrid_scale=4)
    torch.testing.assert_close(recorder.calls[-1].x, expected)
    # hybrid @ 7 student-forces the last scale alone
    recorder.calls.clear()
    run(recorder, batch, "sf_hybrid", sampling="argmax", hybrid_scale=7)
    torch.testing.assert_close(recorder.calls[-1].x[:, :-49], hand_inputs(model.codebook, gt, schedule)[:, :-49])
    assert not torch.allclose(recorder.calls[-1].x[:, -49:], hand_inputs(model.codebook, gt, schedule)[:, -49:])
    with pytest.raises(ValueError, match="hybrid_scale=8 leaves no student-forced scale"):
        run(recorder, batch, "sf_hybrid", hybrid_scale=8)


def test_interleave_feeds_ground_truth_to_odd_scales_and_drawn_tokens_to_even_ones(recorder, batch):
    run(recorder, batch, "sf_interleave", sampling="argmax")
    teacher, final = recorder.calls
    assert not teacher.logits.requires_grad and final.logits.requires_grad
    model, gt = recorder.module, batch.token_maps()
    drawn = [logits.argmax(-1) for logits in teacher.schedule.split(teacher.logits)]
    assert teacher.schedule.scales == (1, 2, 3, 5)
    # 1-based scales 2 and 4 (sizes 2, 5) get drawn inputs; scales 3 and 5 (sizes 3, 7) ground truth
    expected = [hand_upsample(model.codebook, m, s) for m, s in zip([drawn[0], gt[1], drawn[2], gt[3]], (2, 3, 5, 7))]
    torch.testing.assert_close(final.x, torch.cat(expected, dim=1))


def test_alternate_switches_between_teacher_and_student_forcing_by_step(generator_model, batch):
    even = run(generator_model, batch, "sf_alternate", step=4)
    odd = run(generator_model, batch, "sf_alternate", step=5)
    assert "loss/tf" in even.metrics and "loss/sf" not in even.metrics
    assert odd.metrics == run(generator_model, batch, "sf_full").metrics
    assert even.metrics == run(generator_model, batch, "tf").metrics

