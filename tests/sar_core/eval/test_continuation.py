"""Continuation quality: real images' first k scales, the rest the model's own rollout."""
import pytest
import torch

from sar_core import MultiScaleVQ, SamplingConfig, ScaleGenerator
from sar_core.data.fashion_mnist import FashionMNISTConfig
from sar_core.eval.config import ContinuationConfig, MetricConfig
from sar_core.eval.continuation import continue_from_ground_truth, evaluate_continuation
from sar_core.gauge_keys import continuation_key
from tests.conftest import TINY_GENERATOR, TINY_SCHEDULE, TINY_TOKENIZER

SAMPLING = SamplingConfig(cfg=1.0, top_k=0, top_p=0.95)


@pytest.fixture(scope="module")
def tokenizer_m():
    torch.manual_seed(0)
    return MultiScaleVQ(TINY_TOKENIZER).eval()


def generator(tokenizer, seed: int) -> ScaleGenerator:
    torch.manual_seed(seed)
    model = ScaleGenerator(TINY_GENERATOR).set_codebook(tokenizer.codebook.weight)
    with torch.no_grad():  # open the residual gates (tests/conftest.py: generator_model)
        for block in model.blocks:
            block.ada_ln[-1].bias[: 2 * model.config.embed_dim].fill_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def real(tokenizer_m, fmnist_small):
    _, (images, labels) = fmnist_small
    return labels[:8], tokenizer_m.tokenize(images[:8], TINY_SCHEDULE)


def continuation(model, tokenizer, real, k, seed=0, gt=None):
    labels, gt_maps = real
    rng = torch.Generator().manual_seed(seed)
    return continue_from_ground_truth(model, tokenizer, labels, gt or gt_maps, k, TINY_SCHEDULE, SAMPLING, rng)


def test_continuing_from_every_scale_is_the_reconstruction(tokenizer_m, real):
    N = len(TINY_SCHEDULE)
    images = continuation(generator(tokenizer_m, 1), tokenizer_m, real, N)
    assert torch.equal(images, tokenizer_m.decode_tokens(real[1][-1]).clamp(-1, 1))
    assert torch.equal(images, continuation(generator(tokenizer_m, 2), tokenizer_m, real, N))  # no model in it


def test_continuing_from_no_scale_uses_only_the_labels(tokenizer_m, real):
    model, (labels, gt_maps) = generator(tokenizer_m, 1), real
    other = [torch.randint_like(m, TINY_TOKENIZER.codebook_size) for m in gt_maps]
    assert torch.equal(continuation(model, tokenizer_m, real, 0), continuation(model, tokenizer_m, real, 0, gt=other))
    assert not torch.equal(continuation(model, tokenizer_m, real, 2), continuation(model, tokenizer_m, real, 2, gt=other))


def test_a_k_beyond_the_schedule_is_refused(tokenizer_m, real):
    with pytest.raises(ValueError, match=r"continuation ks \[6\] are not in 0..5"):
        continuation(generator(tokenizer_m, 1), tokenizer_m, real, 6)


def test_every_k_is_scored_and_only_the_reconstruction_ignores_the_model(tokenizer_m, fmnist_classifier, data_cache_dir):
    config = ContinuationConfig(ks=(0, 5), num_samples=40, split="test")
    metrics = MetricConfig(batch_size=20, reference="test", is_splits=2, bootstrap=0)

    def scores(seed):
        return evaluate_continuation(generator(tokenizer_m, seed), tokenizer_m, SAMPLING, config, metrics, TINY_SCHEDULE,
                                     FashionMNISTConfig(), feature_network=fmnist_classifier, cache_dir=data_cache_dir)

    a, b = scores(1), scores(2)
    assert set(a) == {continuation_key(k, m) for k in (0, 5) for m in ("fid", "is", "precision", "recall")}
    assert all(a[continuation_key(5, m)] == b[continuation_key(5, m)] for m in ("fid", "is", "precision", "recall"))
    assert a[continuation_key(0, "fid")] != b[continuation_key(0, "fid")]


@pytest.mark.parametrize("field, value, message", [
    ("ks", (), "ks must be a non-empty list"), ("ks", (1, 1), "ks must be a list without repeats"),
    ("ks", (-1,), "ks must be a non-empty list of integers >= 0"), ("num_samples", 1, "num_samples must be an integer >= 2"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ContinuationConfig(**{field: value})
