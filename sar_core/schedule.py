"""Scale schedules: the square token-map sizes a scale-wise AR model generates, coarse to fine.

A schedule such as (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) means the model first predicts a 1x1 token
map, then 2x2, ... and finally the 16x16 map that the tokenizer's decoder turns into an image. All
token maps of a schedule are concatenated into one sequence of length L = sum(h_i^2); the slices
of that sequence and the per-token scale index are what the rest of the code needs.

`ScheduleDraw` is FlexVAR's training-time randomisation: a new schedule every iteration so that a
model serves any schedule at inference (the reference's rule, or the project's variant that always
ends at the latent size).
"""
from __future__ import annotations

import functools
import itertools
import math
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Sequence, get_args

import torch


class ScheduleError(ValueError):
    """A scale schedule that a model or tokenizer cannot use."""


@dataclass(frozen=True)
class ScaleSchedule:
    scales: tuple[int, ...]

    def __init__(self, scales: Sequence[int]):
        scales = tuple(scales)
        if not scales:
            raise ScheduleError("a scale schedule needs at least one scale")
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise ScheduleError(f"scales must be positive integers, got {s!r} in {scales}")
        if any(b <= a for a, b in zip(scales, scales[1:])):
            raise ScheduleError(f"scales must be strictly increasing, got {scales}")
        object.__setattr__(self, "scales", scales)

    def __len__(self) -> int:
        return len(self.scales)

    def __iter__(self):
        return iter(self.scales)

    def __getitem__(self, i: int) -> int:
        return self.scales[i]

    def __str__(self) -> str:
        return "-".join(map(str, self.scales))

    @property
    def last(self) -> int:
        return self.scales[-1]

    @cached_property
    def token_counts(self) -> tuple[int, ...]:
        return tuple(s * s for s in self.scales)

    @cached_property
    def num_tokens(self) -> int:
        return sum(self.token_counts)

    @cached_property
    def slices(self) -> tuple[slice, ...]:
        """The positions of each scale's tokens in the concatenated sequence."""
        out, start = [], 0
        for n in self.token_counts:
            out.append(slice(start, start + n))
            start += n
        return tuple(out)

    def scale_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(L,) long tensor: the scale each sequence position belongs to."""
        return torch.repeat_interleave(
            torch.arange(len(self.scales), device=device),
            torch.tensor(self.token_counts, device=device),
        )

    def block_causal_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(L, L) bool, True where attention is allowed: a token of scale k sees scales <= k."""
        s = self.scale_index(device)
        return s[:, None] >= s[None, :]

    def split(self, x: torch.Tensor, dim: int = 1) -> list[torch.Tensor]:
        """Split a concatenated (.., L, ..) tensor into per-scale chunks along `dim`."""
        if x.shape[dim] != self.num_tokens:
            raise ScheduleError(f"tensor has {x.shape[dim]} positions on dim {dim}, schedule {self} has {self.num_tokens}")
        return list(torch.split(x, self.token_counts, dim=dim))

    def check_latent(self, latent_size: int) -> "ScaleSchedule":
        """Every schedule must end at the tokenizer's latent size: that map is what gets decoded."""
        if self.last != latent_size:
            raise ScheduleError(
                f"schedule {self} ends at {self.last}x{self.last} but the tokenizer's latent is "
                f"{latent_size}x{latent_size}; the last scale must equal the latent size"
            )
        return self


FLEXVAR_256 = ScaleSchedule((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))


DrawRule = Literal["flexvar", "keep_last"]


@dataclass(frozen=True)
class ScheduleDraw:
    """FlexVAR's random schedule per training iteration, generalised to any latent size n.

    The draw (both rules): with probability `default_prob` the default schedule, otherwise
    [1, 2] + 5 sizes from 3..10 + 2 from 11..15 + [16] for a 16x16 latent; then with probabilities
    10/5/2/1 % one to four middle scales are dropped; then, while the schedule holds more than
    `max_tokens` tokens, one of its last scales is dropped. For another latent size the two pools
    are 3..ceil(2n/3)-1 and ceil(2n/3)..n-1, and the number drawn from each keeps the reference's
    proportions (5 of 8, 2 of 5; at least one from a non-empty pool).

    `rule` says what the drops may touch:
      flexvar    the reference code's rule (FlexVAR's trainer.py, `gen_curr_patch_nums`): the default
                 schedule gets the middle drops too, and the token cap drops one of the LAST FOUR
                 scales, the last included, so that a draw can end below the latent size (at 256 px
                 with 680 tokens a third of the draws end below 16x16; 591 tokens on average). A
                 16x16 draw with the default (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) and max_tokens 680
                 consumes `rng` call for call as the reference consumes Python's `random` module,
                 so a seed gives the reference's schedule.
      keep_last  the project's variant: the default schedule is used as it is, and the cap drops one
                 of the three scales before the last, so that every draw ends at the latent size
                 (610 tokens on average at 256 px).
    A schedule that ends below the latent size is trained as it stands: its last scale's ground
    truth is the latent area-resized to that size (the token shards store every size).
    """

    default: ScaleSchedule
    default_prob: float = 0.05
    max_tokens: int | None = None
    rule: DrawRule = "keep_last"

    def __post_init__(self):
        if not 0.0 <= self.default_prob <= 1.0:
            raise ScheduleError(f"default_prob must be in [0, 1], got {self.default_prob}")
        if self.rule not in get_args(DrawRule):
            raise ScheduleError(f"rule must be one of {', '.join(get_args(DrawRule))}, got {self.rule!r}")
        if self.max_tokens is not None and self.max_tokens < self.default.num_tokens and self.default_prob > 0:
            raise ScheduleError(
                f"max_tokens={self.max_tokens} is below the default schedule's {self.default.num_tokens} tokens"
            )

    def _pools(self) -> list[tuple[range, int]]:
        n = self.default.last
        split = math.ceil(2 * n / 3)
        coarse, fine = range(3, split), range(split, n)
        return [(pool, max(1, round(len(pool) * share)) if len(pool) else 0) for pool, share in ((coarse, 5 / 8), (fine, 2 / 5))]

    def __call__(self, rng: random.Random) -> ScaleSchedule:
        n, reference = self.default.last, self.rule == "flexvar"
        if n < 4:
            return self.default
        if rng.random() < self.default_prob:
            if not reference:
                return self.default
            scales = list(self.default.scales)
        else:
            scales = [1, 2]
            for pool, k in self._pools():
                scales += sorted(rng.sample(list(pool), min(k, len(pool))))
            scales.append(n)
        x = rng.random()
        for threshold in (0.9, 0.95, 0.98, 0.99):
            if x > threshold and len(scales) > 3:
                scales.pop(rng.randrange(2, len(scales) - 1))
        while self.max_tokens is not None and sum(s * s for s in scales) > self.max_tokens and len(scales) > 2:
            droppable = len(scales) if reference else len(scales) - 1  # the reference may drop the last scale
            scales.pop(rng.randrange(max(0, len(scales) - 4), droppable))
        return ScaleSchedule(scales)

    def smallest_last(self) -> int:
        """The smallest size a drawn schedule can end at (what a loss on the last scales can rely on)."""
        if self.rule == "keep_last" or self.max_tokens is None or self.default.last < 4:
            return self.default.last
        return min(schedule[-1] for schedule in _capped_support(self))


MAX_ENUMERATED_DRAWS = 20_000


@functools.lru_cache(maxsize=8)
def _capped_support(draw: ScheduleDraw) -> frozenset[tuple[int, ...]]:
    """Every schedule the `flexvar` rule can end with: each choice of pools, middle drops and cap drops.

    Exact while the pools allow at most MAX_ENUMERATED_DRAWS draws (a 16x16 latent: 560); beyond, the
    cap is assumed able to drop down to two scales."""
    pools = draw._pools()
    if math.prod(math.comb(len(pool), k) for pool, k in pools) > MAX_ENUMERATED_DRAWS:
        return frozenset({(1, 2)})
    n = draw.default.last
    drawn = {(1, 2, *coarse, *fine, n) for coarse in itertools.combinations(pools[0][0], pools[0][1])
             for fine in itertools.combinations(pools[1][0], pools[1][1])}
    states = drawn | ({draw.default.scales} if draw.default_prob > 0 else set())
    frontier = states
    for _ in range(4):  # up to four middle drops
        frontier = {s[:i] + s[i + 1:] for s in frontier if len(s) > 3 for i in range(2, len(s) - 1)}
        states = states | frontier
    done: set[tuple[int, ...]] = set()
    while states:
        over = {s for s in states if sum(x * x for x in s) > draw.max_tokens and len(s) > 2}
        done |= states - over
        states = {s[:i] + s[i + 1:] for s in over for i in range(max(0, len(s) - 4), len(s))}
    return frozenset(done)
