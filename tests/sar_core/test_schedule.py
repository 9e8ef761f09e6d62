import random
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

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


def test_keep_last_draws_always_end_at_the_latent_size_within_the_cap():
    draw = ScheduleDraw(FLEXVAR_256, max_tokens=680, rule="keep_last")
    rng = random.Random(0)
    seen = set()
    for _ in range(2000):
        s = draw(rng)
        seen.add(s.scales)
        assert s.scales[:2] == (1, 2) and s.last == 16
        assert s.num_tokens <= 680
        assert len(s) <= 10
    assert FLEXVAR_256.scales in seen and len(seen) > 100
    assert draw.smallest_last() == 16


def reference_draw_distribution(default=FLEXVAR_256.scales, cap=680) -> dict[tuple[int, ...], float]:
    """The exact distribution of FlexVAR's training-schedule draw (trainer.py, gen_curr_patch_nums),
    computed from its rule as a probability tree, independently of ScheduleDraw:
      1. with probability 0.05 the default schedule; otherwise [1, 2] + sorted(5 distinct sizes
         from 3..10 and 2 from 11..15, uniformly) + [16];
      2. u uniform in [0, 1): for every threshold 0.9, 0.95, 0.98, 0.99 that u exceeds, one scale
         at a uniform index in 2..len-2 is removed (never the first two, never the last);
      3. while the schedule holds more than 680 tokens, one scale at a uniform index among the
         last four (the last included) is removed."""
    start = Counter({tuple(default): 0.05})
    drawn = [(1, 2, *a, *b, 16) for a in combinations(range(3, 11), 5) for b in combinations(range(11, 16), 2)]
    for s in drawn:
        start[s] += 0.95 / len(drawn)

    def drop(dist, positions):
        out = Counter()
        for s, p in dist.items():
            where = positions(s)
            for i in where:
                out[s[:i] + s[i + 1:]] += p / len(where)
        return out

    after_drops, dist = Counter(), start
    for drops, p_drops in enumerate((0.90, 0.05, 0.03, 0.01, 0.01)):
        if drops:
            dist = drop(dist, lambda s: range(2, len(s) - 1))
        for s, p in dist.items():
            after_drops[s] += p * p_drops
    final, todo = Counter(), after_drops
    while todo:
        over = Counter({s: p for s, p in todo.items() if sum(x * x for x in s) > cap})
        for s, p in todo.items():
            if s not in over:
                final[s] += p
        todo = drop(over, lambda s: range(len(s) - 4, len(s)))
    return final


def test_flexvar_draws_follow_the_reference_rules_distribution():
    exact = reference_draw_distribution()
    assert sum(exact.values()) == pytest.approx(1.0)
    mean_tokens = sum(p * sum(x * x for x in s) for s, p in exact.items())
    below_16 = sum(p for s, p in exact.items() if s[-1] < 16)
    assert mean_tokens == pytest.approx(591, abs=1) and below_16 == pytest.approx(1 / 3, abs=0.01)

    draw, rng, n = ScheduleDraw(FLEXVAR_256, max_tokens=680, rule="flexvar"), random.Random(0), 20_000
    draws = [draw(rng).scales for _ in range(n)]
    assert all(s in exact for s in draws)  # every draw is one the rule can make
    tokens = np.array([sum(x * x for x in s) for s in draws])
    assert abs(tokens.mean() - mean_tokens) < 4 * tokens.std() / np.sqrt(n)
    for feature in (lambda s: s[-1], len):  # the last scale's size, the number of scales
        exact_of, drawn_of = Counter(), Counter(feature(s) for s in draws)
        for s, p in exact.items():
            exact_of[feature(s)] += p
        categories = sorted(exact_of)
        expected = np.array([exact_of[c] for c in categories])
        observed = np.array([drawn_of[c] for c in categories])
        keep = expected * n >= 5  # chi-square needs >= 5 expected counts per cell; pool the rest
        f_exp = np.append(expected[keep] * n, expected[~keep].sum() * n)
        f_obs = np.append(observed[keep], observed[~keep].sum())
        nonzero = f_exp > 0
        assert chisquare(f_obs[nonzero], f_exp[nonzero]).pvalue > 1e-4
    assert draw.smallest_last() == min(s[-1] for s in exact) == 11


def test_flexvar_draws_are_seeded_and_the_default_gets_dropped_scales_too():
    draw = ScheduleDraw(FLEXVAR_256, default_prob=1.0, max_tokens=680, rule="flexvar")
    draws = [draw(random.Random(i)) for i in range(400)]
    assert draws == [draw(random.Random(i)) for i in range(400)]
    shorter = [d for d in draws if d != FLEXVAR_256]
    assert 0.05 < len(shorter) / len(draws) < 0.15  # 10 % of the draws drop middle scales
    assert all(set(d.scales) < set(FLEXVAR_256.scales) and d.last == 16 for d in shorter)


@pytest.mark.parametrize("latent", [4, 7, 8, 12])
def test_random_draw_serves_other_latent_sizes(latent):
    default = ScaleSchedule(tuple(range(1, latent + 1)))
    draw = ScheduleDraw(default, default_prob=0.0)
    rng = random.Random(1)
    draws = {draw(rng).scales for _ in range(300)}
    assert all(d[-1] == latent and d[0] == 1 for d in draws)
    assert len(draws) > 1


def test_default_prob_one_always_returns_the_default_with_keep_last():
    draw = ScheduleDraw(FLEXVAR_256, default_prob=1.0)
    assert all(draw(random.Random(i)) == FLEXVAR_256 for i in range(20))
