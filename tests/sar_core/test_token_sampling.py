"""Drawing a token from logits: top-k / top-p filters, temperature, and the settings' checks."""
import pytest
import torch

from sar_core.token_sampling import SamplingConfig, filter_logits, sample_tokens


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
