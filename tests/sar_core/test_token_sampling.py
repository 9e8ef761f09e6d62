"""Drawing a token from logits: top-k / top-p filters, temperature, and the settings' checks."""
import pytest
import torch

from sar_core.schedule import FLEXVAR_256
from sar_core.token_sampling import SAMPLING_PRESETS, SamplingConfig, filter_logits, sample_tokens


def test_top_k_keeps_exactly_k_tokens_and_top_p_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[[0.5, 0.2, 0.15, 0.1, 0.05]]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    kept = torch.isfinite(filter_logits(logits, top_p=0.8))  # 0.5 + 0.2 < 0.8 <= 0.85
    assert kept.tolist() == [[[True, True, True, False, False]]]
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1  # the best token always stays
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.0)).all()
    assert torch.isfinite(filter_logits(logits, top_k=900)).all()  # k >= V keeps all


def test_sampled_tokens_respect_the_filters_and_temperature():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4000, 50, generator=gen)
    idx = sample_tokens(logits, top_k=3, generator=gen)
    top3 = logits.topk(3, dim=-1).indices
    assert (idx[..., None] == top3).any(-1).all()
    margin = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 0.01)  # no near-ties
    cold = sample_tokens(logits + margin, temperature=1e-4, generator=gen)
    assert torch.equal(cold, logits.argmax(-1))


def test_bad_sampling_settings_are_refused():
    for bad in (dict(top_p=1.5), dict(top_k=-1), dict(cfg=-1.0), dict(temperature=0.0), dict(cfg_ramp="cosine")):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_sampling_draws_from_exactly_the_filtered_distribution():
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(8, generator=gen)
    idx = sample_tokens(row.expand(1, 200_000, 8), top_k=5, top_p=0.8, temperature=0.7, generator=gen)
    empirical = torch.bincount(idx.flatten(), minlength=8).float() / idx.numel()
    expected = filter_logits(row[None, None] / 0.7, 5, 0.8).softmax(-1)[0, 0]
    torch.testing.assert_close(empirical, expected, atol=4e-3, rtol=0)


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_top_p_alone_draws_exactly_the_nucleus_distribution_without_sorting_every_position(top_p):
    # no top-k: draws from the whole vocabulary are kept inside the nucleus and the rest redrawn
    # from it; at top_p 0.3 the most likely token (mass 0.34) is the nucleus and ~2/3 are redrawn
    gen = torch.Generator().manual_seed(1)
    row = torch.randn(8, generator=gen) * 1.5
    row[[0, 5]] = float("-inf")  # tokens of probability 0, at the start and inside the vocabulary
    idx = sample_tokens(row.expand(2, 100_000, 8), top_p=top_p, generator=gen)
    empirical = torch.bincount(idx.flatten(), minlength=8).float() / idx.numel()
    expected = filter_logits(row[None, None], 0, top_p).softmax(-1)[0, 0]
    torch.testing.assert_close(empirical, expected, atol=4e-3, rtol=0)
    assert empirical[[0, 5]].sum() == 0


def test_the_flexvar_ramp_is_linear_up_to_ten_scales_and_keeps_rising_past_cfg_beyond():
    flexvar, linear = SamplingConfig(cfg=2.5, cfg_ramp="flexvar"), SamplingConfig(cfg=2.5, cfg_ramp="linear")
    for N in range(2, 11):
        assert [flexvar.cfg_at(i, N) for i in range(N)] == [linear.cfg_at(i, N) for i in range(N)]
    # FlexVAR's 13-step setting: the reference's ratio si / min(N - 1, 9)
    assert [flexvar.cfg_at(i, 13) for i in range(13)] == pytest.approx([2.5 * i / 9 for i in range(13)])
    assert flexvar.cfg_at(12, 13) == pytest.approx(3.333, abs=1e-3) and linear.cfg_at(12, 13) == 2.5


def test_flexvar_size_rules_draw_untrained_sizes_greedily_and_fully_guided_above_the_training_size():
    flexvar = SamplingConfig(cfg=2.5, cfg_ramp="flexvar", top_k=900, flexvar_max_size=16)
    assert [flexvar.top_k_at(s) for s in FLEXVAR_256] == [900] * 10
    assert [flexvar.top_k_at(s) for s in (7, 9, 11, 12, 14, 15, 17, 23, 24, 32)] == [1] * 10  # off-grid or > 16
    assert flexvar.cfg_at(4, 15, size=5) == pytest.approx(2.5 * 4 / 9)  # ramped up to 16x16
    assert flexvar.cfg_at(1, 15, size=23) == 2.5  # constant above it
    project = SamplingConfig(cfg=2.5, top_k=900)  # the project's own sampler: every size alike
    assert project.top_k_at(7) == project.top_k_at(23) == 900 and project.cfg_at(13, 15, size=23) == pytest.approx(2.5 * 13 / 14)


def test_the_flexvar_eval_preset_is_flexvars_published_evaluation():
    assert SamplingConfig.from_preset("flexvar_eval") == SamplingConfig(
        cfg=2.5, cfg_ramp="flexvar", top_k=900, top_p=0.95, temperature=1.0, flexvar_max_size=16)
    assert SamplingConfig.from_preset("flexvar_eval", cfg=1.5).cfg == 1.5
    assert SAMPLING_PRESETS["flexvar_eval"]["cfg"] == 2.5  # merging never edits the preset
    assert SamplingConfig().top_p == 0.95  # FlexVAR's evaluation top-p is also the default
    with pytest.raises(ValueError, match="unknown sampling preset 'flexvar'"):
        SamplingConfig.from_preset("flexvar")
    with pytest.raises(ValueError, match="unknown sampling field 'topk'"):
        SamplingConfig.from_preset("flexvar_eval", topk=5)
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="flexvar_max_size must be a scale size"):
            SamplingConfig(flexvar_max_size=bad)
