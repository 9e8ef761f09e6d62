"""Schedules that end below the latent size, as FlexVAR's own draw makes them (its token cap can drop
the last scale): the shards serve them, every objective trains on them, and the dynamic weighting
averages across ranks whose schedules end at different sizes."""
import math
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sar_core.data.shards import default_scales, select_scales
from sar_core.objectives import (OBJECTIVE_KINDS, OBJECTIVE_PRESETS, ObjectiveConfig, ScaleWeighting, TokenBatch,
                                 build_objective)
from sar_core.schedule import ScaleSchedule
from tests.support.processes import free_port

SHORT = ScaleSchedule((1, 2, 4, 5))  # the tiny tokenizer's latent is 7x7


def test_shards_serve_a_short_schedule_with_each_scales_own_ground_truth(tokenizer, fmnist_small):
    images = fmnist_small[0][0][:4]
    latent = tokenizer.config.latent_size
    with torch.no_grad():
        stored = tokenizer.tokenize_flat(images, ScaleSchedule(default_scales(latent)))
        served = select_scales(stored, default_scales(latent), SHORT)
        f = tokenizer.encode_latent(images)
        by_hand = [tokenizer.quantize(F.interpolate(f, size=(s, s), mode="area")).idx.flatten(1) for s in SHORT]
    assert SHORT.last < latent and served.shape == (4, SHORT.num_tokens)
    assert torch.equal(served, torch.cat(by_hand, dim=1))  # the 5x5 target is the latent area-resized to 5x5


@pytest.mark.parametrize("config", [
    *(ObjectiveConfig(kind=kind, hybrid_scale=4) if kind == "sf_hybrid" else ObjectiveConfig(kind=kind) for kind in OBJECTIVE_KINDS),
    *(ObjectiveConfig.from_preset(name) for name in OBJECTIVE_PRESETS),
], ids=lambda c: c.kind + ("" if c.weighting == "token" else f"-{c.weighting}") + f"-{c.csfl_target}")
def test_every_objective_trains_on_a_schedule_that_ends_below_the_latent(generator_model, config):
    g = torch.Generator().manual_seed(0)
    batch = TokenBatch(torch.randint(0, 10, (6,), generator=g), torch.randint(0, 64, (6, SHORT.num_tokens), generator=g), SHORT)
    generator_model.train()
    out = build_objective(config)(generator_model, batch, 1, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert math.isfinite(out.metrics["loss/total"])
    grads = {name: p.grad for name, p in generator_model.named_parameters()}
    assert not [name for name, g in grads.items() if g is None], "parameters the loss does not reach"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert not [name for name, g in grads.items() if not g.any()], "parameters whose gradient is zero"
    sizes = {int(m.group(1)) for key in out.metrics if (m := re.search(r"/s(\d\d)$", key))}
    assert sizes <= set(SHORT) and SHORT.last in sizes  # losses of the drawn scales only


def test_token_weighted_tf_on_a_short_schedule_is_the_mean_over_its_tokens(generator_model):
    g = torch.Generator().manual_seed(1)
    batch = TokenBatch(torch.randint(0, 10, (4,), generator=g), torch.randint(0, 64, (4, SHORT.num_tokens), generator=g), SHORT)
    out = build_objective(ObjectiveConfig())(generator_model, batch, 0, torch.Generator().manual_seed(0))
    label = generator_model.drop_labels(batch.labels, torch.Generator().manual_seed(0))
    logits = generator_model.forward_tokens(label, batch.tokens, SHORT)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.flatten(0, 1), batch.tokens.flatten()), rtol=1e-5, atol=1e-6)


RANK_SIZES = {0: (1, 2, 4, 5), 1: (1, 2, 4, 5, 7)}  # rank 0's draw dropped the 7x7 scale


def observe_on_rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        weighting = ScaleWeighting("dynamic", momentum=0.9)
        sizes = RANK_SIZES[rank]
        weighting.observe(sizes, torch.tensor([float(10 * rank + s) for s in sizes]))
        results[rank] = dict(weighting.running)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(600)  # a collective that never matches hangs: fail sooner than the suite guard
def test_dynamic_weights_average_across_ranks_whose_schedules_end_at_different_sizes():
    results = mp.Manager().dict()
    mp.spawn(observe_on_rank, args=(free_port(), results), nprocs=2, join=True)
    # a size both ranks saw: the mean of their losses; a size one rank saw: that rank's loss
    expected_shared = {s: (s + 10 + s) / 2 for s in RANK_SIZES[0]}
    assert results[0] == pytest.approx(expected_shared)
    assert results[1] == pytest.approx({**expected_shared, 7: 17.0})
