import random

import pytest
import torch

from sar_core.generator import GeneratorConfig, ScaleGenerator
from sar_core.schedule import ScaleSchedule, ScheduleDraw

# The reference generator's exact parameter counts (V = 8912, VQ-VAE excluded) and the paper's sizes.
REFERENCE_PARAMS = {16: 315_561_936, 20: 607_513_952, 24: 1_041_314_576}
PUBLISHED = {16: 310e6, 20: 600e6, 24: 1.0e9}


def tokens(schedule, B=3, V=64, seed=0):
    return torch.randint(0, V, (B, schedule.num_tokens), generator=torch.Generator().manual_seed(seed))


def test_teacher_forced_forward_returns_float_logits_for_every_scale(generator_model, schedule):
    logits = generator_model.forward_tokens(torch.tensor([0, 4, 9]), tokens(schedule), schedule)
    assert logits.shape == (3, schedule.num_tokens, 64) and logits.dtype == torch.float32
    assert [p.shape[1] for p in schedule.split(logits)] == [1, 4, 9, 25, 49]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_changing_scale_k_plus_1_input_leaves_scales_up_to_k_unchanged(generator_model, schedule, k):
    labels = torch.tensor([1, 2, 3])
    x = generator_model.scale_inputs(tokens(schedule), schedule)  # inputs of scales 2..N
    before = generator_model(labels, x, schedule)
    x2 = x.clone()
    sl = schedule.slices[k + 1]
    first = schedule.token_counts[0]
    x2[:, sl.start - first: sl.stop - first] += torch.randn_like(x2[:, sl.start - first: sl.stop - first])
    after = generator_model(labels, x2, schedule)
    seen = slice(0, schedule.slices[k].stop)
    assert torch.equal(before[:, seen], after[:, seen])
    assert not torch.allclose(before[:, sl], after[:, sl])


def test_one_model_serves_any_schedule_ending_at_the_latent(generator_model):
    draw = ScheduleDraw(ScaleSchedule((1, 2, 3, 4, 5, 6, 7)), default_prob=0.0)
    rng = random.Random(0)
    for _ in range(5):
        s = draw(rng)
        assert generator_model.forward_tokens(torch.tensor([0, 1, 2]), tokens(s), s).shape[1] == s.num_tokens


@pytest.mark.parametrize("depth", [16, 20, 24])
def test_depth_configs_match_the_reference_parameter_counts(depth):
    with torch.device("meta"):  # no allocation
        model = ScaleGenerator(GeneratorConfig(depth=depth))
    n = model.num_parameters()
    assert n == REFERENCE_PARAMS[depth]
    assert abs(n - PUBLISHED[depth]) / PUBLISHED[depth] < 0.05
    assert model.config.embed_dim == 64 * depth and model.config.heads == depth


def test_labels_out_of_range_are_refused_with_the_valid_range(generator_model):
    with pytest.raises(ValueError, match=r"0\.\.9\) plus the null class 10"):
        generator_model.check_labels(torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="1-D integer"):
        generator_model.check_labels(torch.tensor([1.0]))


def test_class_dropout_replaces_labels_with_the_null_class(generator_model):
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = generator_model.drop_labels(labels, torch.Generator().manual_seed(0))
    frac = (dropped == 10).float().mean().item()
    assert abs(frac - 0.1) < 0.01 and set(dropped.unique().tolist()) == {0, 10}


def test_position_embedding_is_resized_per_scale(generator_model, schedule):
    pos = generator_model.position_embedding(schedule)
    assert pos.shape == (1, schedule.num_tokens, 64)
    last = schedule.split(pos)[-1]
    assert not torch.allclose(last[:, 0], last[:, -1])  # positions of one scale differ


def test_inputs_that_do_not_fit_the_schedule_are_refused(generator_model, schedule):
    with pytest.raises(ValueError, match="do not fit schedule"):
        generator_model(torch.tensor([0]), torch.zeros(1, 10, 8), schedule)
