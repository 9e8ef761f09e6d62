import pytest
import torch
import torch.nn.functional as F

from sar_core.objectives import ObjectiveConfig, ScaleWeighting, build_objective
from sar_core.objectives.metrics import per_scale_mean, token_cross_entropy

from .conftest import make_batch


def teacher_logits(model, batch, seed=0):
    label = model.drop_labels(batch.labels, torch.Generator().manual_seed(seed))
    return model.forward_tokens(label, batch.tokens, batch.schedule)


def test_token_weighting_is_the_reference_mean_over_all_tokens(generator_model, batch):
    out = build_objective(ObjectiveConfig(weighting="token"))(generator_model, batch, 0, torch.Generator().manual_seed(0))
    logits = teacher_logits(generator_model, batch)
    expected = F.cross_entropy(logits.flatten(0, 1), batch.tokens.flatten())
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert out.metrics["weight/s07"] == pytest.approx(49 / 88) and out.metrics["weight/s01"] == pytest.approx(1 / 88)


def test_scale_weighting_averages_the_per_scale_means(generator_model, batch):
    out = build_objective(ObjectiveConfig(weighting="scale"))(generator_model, batch, 0, torch.Generator().manual_seed(0))
    logits = teacher_logits(generator_model, batch)
    per_scale = [F.cross_entropy(scale.flatten(0, 1), target.flatten())
                 for scale, target in zip(batch.schedule.split(logits), batch.token_maps())]
    torch.testing.assert_close(out.loss, torch.stack(per_scale).mean(), rtol=1e-5, atol=1e-6)
    assert all(out.metrics[f"weight/s{s:02d}"] == pytest.approx(0.2) for s in batch.schedule)


def test_dynamic_weights_are_the_running_per_scale_losses_normalised():
    w = ScaleWeighting("dynamic", momentum=0.75)
    w.observe((1, 2, 3), torch.tensor([1.0, 2.0, 5.0]))  # a size seen for the first time starts at its loss
    torch.testing.assert_close(w((1, 2, 3)), torch.tensor([1.0, 2.0, 5.0]) / 8)
    w.observe((1, 3, 4), torch.tensor([3.0, 1.0, 2.0]))  # EMA: 0.75 * old + 0.25 * new; size 2 untouched
    assert w.running == {1: 1.5, 2: 2.0, 3: 4.0, 4: 2.0}
    torch.testing.assert_close(w((1, 3, 4)), torch.tensor([1.5, 4.0, 2.0]) / 7.5)  # the hardest scale weighs most
    with pytest.raises(RuntimeError, match="no running loss for scale sizes \\[5\\]"):
        w((1, 5))
    fixed = ScaleWeighting("token", momentum=0.5)
    fixed.observe((1, 2), torch.tensor([9.0, 1.0]))
    assert fixed.running == {} and torch.allclose(fixed((1, 2)), torch.tensor([0.2, 0.8]))


def test_dynamic_weights_are_constants_in_the_gradient(generator_model, batch):
    objective = build_objective(ObjectiveConfig(weighting="dynamic", dynamic_momentum=0.9))
    objective(generator_model, make_batch(batch.schedule, seed=3), 0, torch.Generator().manual_seed(0))  # history
    generator_model.zero_grad()
    out = objective(generator_model, batch, 1, torch.Generator().manual_seed(0))
    out.loss.backward()
    got = [p.grad.clone() for p in generator_model.parameters()]
    generator_model.zero_grad()
    weights = torch.tensor([out.metrics[f"weight/s{s:02d}"] for s in batch.schedule])
    assert weights.sum() == pytest.approx(1.0) and not torch.allclose(weights, torch.full((5,), 0.2))
    loss_N = per_scale_mean(token_cross_entropy(teacher_logits(generator_model, batch), batch.tokens), batch.schedule)
    (weights * loss_N).sum().backward()
    for g, p in zip(got, generator_model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


def test_a_resumed_objective_continues_with_the_same_weights(generator_model, schedule):
    def run(objective, seeds):
        return [objective(generator_model, make_batch(schedule, seed=s), s, torch.Generator().manual_seed(s)).metrics
                for s in seeds]

    config = ObjectiveConfig(weighting="dynamic", dynamic_momentum=0.5)
    first = build_objective(config)
    run(first, [0, 1])
    resumed, fresh = build_objective(config), build_objective(config)
    resumed.load_state_dict(first.state_dict())
    assert first.state_dict()["weighting"]["running_loss"].keys() == {"1", "2", "3", "5", "7"}
    [a], [b], [c] = run(first, [2]), run(resumed, [2]), run(fresh, [2])
    assert a == b
    assert a["loss/total"] != c["loss/total"]
