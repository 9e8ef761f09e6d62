import pytest
import torch

from sar_core.generation import generate
from sar_core.schedule import ScaleSchedule
from sar_core.token_sampling import SamplingConfig, guided_logits
from sar_core.tokenizer import flatten_tokens

NO_FILTER = dict(top_k=0, top_p=0.0)


def test_kv_cached_sampler_reproduces_the_parallel_teacher_forced_logits(generator_model, schedule):
    labels = torch.tensor([0, 5, 9])
    out = generate(generator_model, None, labels, schedule, SamplingConfig(cfg=0.0, **NO_FILTER),
                   rng=torch.Generator().manual_seed(0), return_logits=True)
    parallel = generator_model.forward_tokens(labels, flatten_tokens(out.token_maps), schedule)
    for step_logits, par in zip(out.logits, schedule.split(parallel)):
        torch.testing.assert_close(step_logits, par, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ramp", ["constant", "linear", "half_linear"])
def test_cfg_uses_guided_logits_with_the_chosen_ramp(generator_model, schedule, ramp):
    labels = torch.tensor([1, 2])
    cfg = SamplingConfig(cfg=2.5, cfg_ramp=ramp, **NO_FILTER)
    out = generate(generator_model, None, labels, schedule, cfg, rng=torch.Generator().manual_seed(0), return_logits=True)
    idx = flatten_tokens(out.token_maps)
    cond = schedule.split(generator_model.forward_tokens(labels, idx, schedule))
    uncond = schedule.split(generator_model.forward_tokens(torch.full_like(labels, 10), idx, schedule))
    N = len(schedule)
    for i, (got, c, u) in enumerate(zip(out.logits, cond, uncond)):
        w = {"constant": 2.5, "linear": 2.5 * i / (N - 1), "half_linear": 2.5 * 0.5 * (1 + i / (N - 1))}[ramp]
        torch.testing.assert_close(got, (1 + w) * c - w * u, atol=1e-4, rtol=1e-4)


def test_guidance_scale_one_equals_the_conditional_logits(generator_model, schedule):
    c, u = torch.randn(2, 4, 64), torch.randn(2, 4, 64)
    assert torch.equal(guided_logits(c, u, 0.0), c)  # cfg=0 is a standard guidance scale of 1
    labels = torch.tensor([3, 4])
    out = generate(generator_model, None, labels, schedule, SamplingConfig(cfg=0.0, **NO_FILTER),
                   rng=torch.Generator().manual_seed(0), return_logits=True)
    cond = generator_model.forward_tokens(labels, flatten_tokens(out.token_maps), schedule)
    torch.testing.assert_close(torch.cat(out.logits, 1), cond, atol=1e-4, rtol=1e-4)


def test_seeded_sampling_is_reproducible_and_seeds_differ(generator_model, tokenizer, schedule):
    labels = torch.arange(4)
    cfg = SamplingConfig(cfg=1.5, top_k=20, top_p=0.9)
    a = generate(generator_model, tokenizer, labels, schedule, cfg, rng=torch.Generator().manual_seed(7))
    b = generate(generator_model, tokenizer, labels, schedule, cfg, rng=torch.Generator().manual_seed(7))
    c = generate(generator_model, tokenizer, labels, schedule, cfg, rng=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a.token_maps, b.token_maps))
    assert torch.equal(a.images, b.images)
    assert not all(torch.equal(x, y) for x, y in zip(a.token_maps, c.token_maps))


def test_generation_returns_images_token_maps_and_the_decoded_trajectory(generator_model, tokenizer, schedule):
    out = generate(generator_model, tokenizer, torch.tensor([0, 1]), schedule, SamplingConfig(),
                   rng=torch.Generator().manual_seed(0), decode_intermediates=True)
    assert out.images.shape == (2, 1, 28, 28) and out.images.abs().max() <= 1
    assert [m.shape for m in out.token_maps] == [(2, s, s) for s in schedule]
    assert len(out.scale_images) == len(schedule) and all(i.shape == (2, 1, 28, 28) for i in out.scale_images)


def test_prefix_forces_the_first_scales(generator_model, schedule):
    labels = torch.tensor([2, 3])
    forced = [torch.zeros(2, 1, 1, dtype=torch.long), torch.full((2, 2, 2), 5)]
    out = generate(generator_model, None, labels, schedule, SamplingConfig(cfg=0.0), prefix=forced,
                   rng=torch.Generator().manual_seed(0))
    assert torch.equal(out.token_maps[0], forced[0]) and torch.equal(out.token_maps[1], forced[1])


def test_model_is_left_in_its_training_mode(generator_model, tokenizer, schedule):
    generator_model.train()
    generate(generator_model, tokenizer, torch.tensor([0]), schedule, SamplingConfig())
    assert generator_model.training



def reference_weights(cfg: float, schedule, max_size: int) -> list[float]:
    """FlexVAR's guidance per scale: cfg * si / min(N - 1, 9) up to its training size, cfg above it."""
    N = len(schedule)
    return [cfg if size > max_size else cfg * si / min(N - 1, 9) for si, size in enumerate(schedule)]


def guided_reference(model, labels, out, schedule, weights):
    idx = flatten_tokens(out.token_maps)
    cond = schedule.split(model.forward_tokens(labels, idx, schedule))
    uncond = schedule.split(model.forward_tokens(torch.full_like(labels, model.config.null_class), idx, schedule))
    return [(1 + w) * c - w * u for w, c, u in zip(weights, cond, uncond)]


def test_flexvar_sampling_ramps_past_cfg_on_long_schedules(generator_model):
    schedule = ScaleSchedule(tuple(range(1, 13)))  # 12 scales: the reference's ratio runs to 11/9
    labels = torch.tensor([2, 7])
    sampling = SamplingConfig(cfg=2.5, cfg_ramp="flexvar", **NO_FILTER)
    out = generate(generator_model, None, labels, schedule, sampling, rng=torch.Generator().manual_seed(0), return_logits=True)
    weights = reference_weights(2.5, schedule, max_size=schedule.last)
    assert weights[-1] == pytest.approx(2.5 * 11 / 9)
    for got, expected in zip(out.logits, guided_reference(generator_model, labels, out, schedule, weights)):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_flexvar_size_rules_are_greedy_and_fully_guided_where_the_reference_is(generator_model, schedule):
    # schedule 1, 2, 3, 5, 7 with training size 3: 5 and 7 lie above it (and 7 is no FlexVAR size)
    labels = torch.arange(6)
    sampling = SamplingConfig(cfg=2.5, cfg_ramp="flexvar", top_k=0, top_p=0.0, flexvar_max_size=3)
    weights = reference_weights(2.5, schedule, max_size=3)
    assert weights == [0.0, 2.5 / 4, 2.5 / 2, 2.5, 2.5]
    maps = []
    for seed in range(3):
        out = generate(generator_model, None, labels, schedule, sampling, rng=torch.Generator().manual_seed(seed),
                       return_logits=True)
        expected = guided_reference(generator_model, labels, out, schedule, weights)
        for size, got, want, tokens in zip(schedule, out.logits, expected, out.token_maps):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            if size > 3:
                assert torch.equal(tokens.flatten(1), got.argmax(-1))  # greedy
        maps.append(out.token_maps[2])
    assert any(not torch.equal(maps[0], m) for m in maps[1:])  # the 3x3 scale is still sampled
