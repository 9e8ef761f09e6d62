"""Noisy-context teacher forcing: inputs corrupted at rate p, targets the ground truth, one pass."""
import pytest
import torch

from sar_core.objectives import ObjectiveConfig, build_objective, corrupt_token_maps
from sar_core.objectives.metrics import per_scale_mean, token_cross_entropy

from .conftest import Recorder, hand_inputs


def step(model, batch, seed=0, **config):
    return build_objective(ObjectiveConfig(**config))(model, batch, 0, torch.Generator().manual_seed(seed))


def loss_and_grads(model, batch, **config):
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    out = step(model, batch, **config)
    out.loss.backward()
    return out.loss, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("source", ["random", "model"])
def test_rate_zero_is_teacher_forcing_exactly(generator_model, batch, source):
    generator_model.train()  # class dropout and drop-path drawn alike
    tf_loss, tf_grads = loss_and_grads(generator_model, batch, kind="tf", weighting="dynamic")
    loss, grads = loss_and_grads(generator_model, batch, kind="noisy_context", noise_rate=0.0, noise_source=source,
                                 weighting="dynamic")
    assert torch.equal(loss, tf_loss) and all(torch.equal(a, b) for a, b in zip(grads, tf_grads))
    noisy_loss, _ = loss_and_grads(generator_model, batch, kind="noisy_context", noise_rate=0.3, noise_source=source)
    assert not torch.equal(noisy_loss, tf_loss)


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.9])
def test_each_token_is_replaced_independently_with_probability_rate(rate):
    clean = [torch.zeros(500, n, dtype=torch.int64) for n in (1, 4, 9, 25)]  # 19,500 tokens
    replacements = [torch.ones_like(m) for m in clean]
    noisy, replaced_BL = corrupt_token_maps(clean, replacements, rate, torch.Generator().manual_seed(0))
    assert [m.shape for m in noisy] == [m.shape for m in clean]
    noisy_BL = torch.cat(noisy, dim=1)
    assert torch.equal(noisy_BL == 1, replaced_BL)  # replaced positions hold the replacement, the others the original
    frac, n = replaced_BL.float().mean().item(), replaced_BL.numel()
    assert abs(frac - rate) < 5 * (rate * (1 - rate) / n) ** 0.5
    per_scale = [m.float().mean().item() for m in noisy]  # the same rate at every scale, the 1x1 one included
    assert all(abs(f - rate) < 5 * (rate * (1 - rate) / 500) ** 0.5 for f in per_scale)


def test_the_logged_replacement_rate_is_the_rate_on_average(generator_model, batch):
    replaced = [step(generator_model, batch, seed=s, kind="noisy_context", noise_rate=0.3).metrics["noisy/replaced"]
                for s in range(20)]
    n = 20 * batch.tokens.shape[0] * (batch.schedule.num_tokens - batch.schedule.token_counts[-1])
    assert abs(sum(replaced) / 20 - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5


def test_model_noise_replaces_inputs_by_the_teacher_passs_draws_and_grades_the_ground_truth(generator_model, batch):
    recorder, tokens = Recorder(generator_model), batch.tokens.clone()
    out = step(recorder, batch, seed=3, kind="noisy_context", noise_rate=0.5, noise_source="model", sampling="argmax")
    teacher, final = recorder.calls
    assert teacher.schedule.scales == batch.schedule.scales[:-1] and not teacher.logits.requires_grad
    # by hand, with the objective's rng: class dropout, then the argmax draws (no rng), then the replacement mask
    rng = torch.Generator().manual_seed(3)
    label_B = generator_model.drop_labels(batch.labels, rng)
    drawn = [m.argmax(-1) for m in teacher.schedule.split(teacher.logits)]
    noisy, replaced_BL = corrupt_token_maps(batch.token_maps()[:-1], drawn, 0.5, rng)
    assert torch.equal(final.label, label_B) and 0.3 < replaced_BL.float().mean() < 0.7
    torch.testing.assert_close(final.x, hand_inputs(generator_model.codebook, noisy, batch.schedule))
    # targets: the untouched ground truth, every scale (token weighting: the mean over all tokens)
    assert torch.equal(batch.tokens, tokens)
    loss_N = per_scale_mean(token_cross_entropy(final.logits, tokens), batch.schedule)
    counts = torch.tensor(batch.schedule.token_counts, dtype=torch.float32)
    torch.testing.assert_close(out.loss, (loss_N * counts).sum() / counts.sum())
    changed = torch.cat(noisy, dim=1) != torch.cat(batch.token_maps()[:-1], dim=1)
    assert out.metrics["noisy/changed"] == pytest.approx(changed.float().mean().item())


def test_gradients_flow_through_the_noisy_pass_only(recorder, batch):
    out = step(recorder, batch, kind="noisy_context", noise_rate=0.5, noise_source="model", sampling="stochastic")
    out.loss.backward()
    teacher, final = recorder.calls
    assert not teacher.logits.requires_grad and final.logits.grad is not None and final.logits.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in recorder.module.blocks.parameters())
    assert {"loss/noisy", "noisy/loss/s07", "noisy/acc/s01", "noisy/replaced", "noisy/changed"} <= set(out.metrics)


@pytest.mark.parametrize("field, value, message", [
    ("noise_rate", 1.0, r"noise_rate must be in \[0, 1\)"),
    ("noise_rate", -0.1, r"noise_rate must be in \[0, 1\)"),
    ("noise_rate", float("nan"), r"noise_rate must be in \[0, 1\)"),
    ("noise_source", "uniform", "noise_source must be one of random, model; got 'uniform'"),
])
def test_bad_noise_settings_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ObjectiveConfig(kind="noisy_context", **{field: value})
