import random

import pytest
import torch

from sar_core.schedule import FLEXVAR_256, ScaleSchedule, ScheduleDraw, ScheduleError


def test_flexvar_default_has_680_tokens_in_ten_scales():
    assert len(FLEXVAR_256) == 10 and FLEXVAR_256.num_tokens == 680
    assert FLEXVAR_256.slices[-1] == slice(680 - 256, 680)


@pytest.mark.parametrize("bad, message", [
    ((), "at least one scale"),
    ((1, 3, 2), "strictly increasing"),
    ((1, 2, 2), "strictly increasing"),
    ((0, 2), "positive integers"),
    ((1, 2.5), "positive integers"),
    ((True, 2), "positive integers"),
])
def test_bad_schedules_are_refused_with_the_reason(bad, message):
    with pytest.raises(ScheduleError, match=message):
        ScaleSchedule(bad)


def test_a_schedule_must_end_at_the_latent_size():
    ScaleSchedule((1, 2, 4, 7)).check_latent(7)
    with pytest.raises(ScheduleError, match=r"ends at 5x5 .* latent is 7x7"):
        ScaleSchedule((1, 2, 5)).check_latent(7)


def test_block_causal_mask_lets_scale_k_see_exactly_scales_up_to_k():
    s = ScaleSchedule((1, 2, 3))
    mask = s.block_causal_mask()
    idx = s.scale_index()
    for q in range(s.num_tokens):
        for k in range(s.num_tokens):
            assert bool(mask[q, k]) == bool(idx[k] <= idx[q])


def test_split_returns_per_scale_chunks_and_checks_length():
    s = ScaleSchedule((1, 2, 3))
    parts = s.split(torch.arange(14)[None])
    assert [p.shape[1] for p in parts] == [1, 4, 9]
    with pytest.raises(ScheduleError):
        s.split(torch.arange(13)[None])


def test_random_draw_for_a_16_latent_follows_the_flexvar_rule():
    draw = ScheduleDraw(FLEXVAR_256, max_tokens=680)
    rng = random.Random(0)
    seen = set()
    for _ in range(2000):
        s = draw(rng)
        seen.add(s.scales)
        assert s.scales[:2] == (1, 2) and s.last == 16
        assert s.num_tokens <= 680
        assert len(s) <= 10
    assert FLEXVAR_256.scales in seen and len(seen) > 100


@pytest.mark.parametrize("latent", [4, 7, 8, 12])
def test_random_draw_serves_other_latent_sizes(latent):
    default = ScaleSchedule(tuple(range(1, latent + 1)))
    draw = ScheduleDraw(default, default_prob=0.0)
    rng = random.Random(1)
    draws = {draw(rng).scales for _ in range(300)}
    assert all(d[-1] == latent and d[0] == 1 for d in draws)
    assert len(draws) > 1


def test_default_prob_one_always_returns_the_default():
    draw = ScheduleDraw(FLEXVAR_256, default_prob=1.0)
    assert all(draw(random.Random(i)) == FLEXVAR_256 for i in range(20))
