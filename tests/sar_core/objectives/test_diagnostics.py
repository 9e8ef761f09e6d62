import pytest
import torch
import torch.nn as nn

import sar_core.gauge_keys as keys
from sar_core.objectives import ObjectiveConfig, RolloutDraw, TokenBatch, build_objective, gap_diagnostics, student_forcing_trace
from sar_core.objectives.calibration import TEMPERATURE_BOUNDS, calibration_split, fit_temperature
from sar_core.objectives.diagnostics import GaugeSettings, context_logits
from sar_core.objectives.metrics import per_scale_mean, token_cross_entropy, token_kl
from sar_core.token_sampling import SamplingConfig

from .conftest import Recorder, hand_inputs, hand_upsample, single_thread


def test_diagnostics_measure_teacher_one_step_and_rollout_contexts(confident_model, batch):
    confident_model.train()
    recorder = Recorder(confident_model)
    diag = build_objective(ObjectiveConfig(sampling="argmax")).diagnostics(recorder, batch)
    assert confident_model.training  # eval mode inside, restored after
    teacher, student = recorder.calls[0], recorder.calls[1]
    final = recorder.calls[-1]
    assert not any(c.logits.requires_grad for c in recorder.calls)
    assert torch.equal(teacher.label, batch.labels)  # real labels: no class dropout
    schedule, gt = batch.schedule, batch.tokens
    tf_N = per_scale_mean(token_cross_entropy(teacher.logits, gt), schedule)
    sf_N = per_scale_mean(token_cross_entropy(student.logits, gt), schedule)
    kl_N = per_scale_mean(token_kl(student.logits, teacher.logits), schedule)
    ar_N = per_scale_mean(token_cross_entropy(final.logits, gt), schedule)
    for i, s in enumerate(schedule):
        assert diag[f"diag/tf/loss/s{s:02d}"] == pytest.approx(tf_N[i].item(), rel=1e-5)
        if i:
            assert diag[f"diag/sf/loss/s{s:02d}"] == pytest.approx(sf_N[i].item(), rel=1e-5)
            assert diag[f"diag/kl/s{s:02d}"] == pytest.approx(kl_N[i].item(), rel=1e-4, abs=1e-7)
            assert diag[f"diag/ar/loss/s{s:02d}"] == pytest.approx(ar_N[i].item(), rel=1e-5)
    assert "diag/sf/loss/s01" not in diag  # scale 1 sees the class token alone in every context
    counts = torch.tensor(schedule.token_counts[1:], dtype=torch.float32)
    assert diag["diag/sf/loss"] == pytest.approx(((sf_N[1:] * counts).sum() / counts.sum()).item(), rel=1e-5)
    assert diag["diag/gap/sf"] == pytest.approx(diag["diag/sf/loss"] - diag["diag/tf/loss"], abs=1e-6)
    assert diag["diag/gap/ar"] == pytest.approx(diag["diag/ar/loss"] - diag["diag/tf/loss"], abs=1e-6)
    assert diag["diag/kl"] > 0 and diag["diag/gap/ar"] != diag["diag/gap/sf"]
    # the full rollout's 7x7 input is the model's own 5x5, drawn from its own 3x3, not the teacher's
    assert not torch.allclose(final.x, student.x)


def latent_map(x_BlC, h):
    return x_BlC.transpose(1, 2).reshape(x_BlC.shape[0], -1, h, h)


def test_trace_holds_figure_8s_rows(confident_model, batch):
    draw = RolloutDraw("argmax", ObjectiveConfig().rollout)
    trace = student_forcing_trace(confident_model, batch, draw)
    schedule, codebook = batch.schedule, confident_model.codebook
    assert trace.scales == (2, 3, 5, 7)
    with torch.no_grad():
        teacher = confident_model(batch.labels, hand_inputs(codebook, batch.token_maps(), schedule), schedule)
        drawn = [logits.argmax(-1) for logits in schedule.split(teacher)]
        student = confident_model(batch.labels, hand_inputs(codebook, drawn, schedule), schedule)
    for i, h in enumerate(trace.scales, start=1):
        assert torch.equal(trace.ground_truth[i - 1], batch.token_maps()[i].reshape(-1, h, h))
        below = batch.token_maps()[i - 1]
        torch.testing.assert_close(trace.teacher_input[i - 1], latent_map(hand_upsample(codebook, below, h), h))
        torch.testing.assert_close(trace.student_input[i - 1], latent_map(hand_upsample(codebook, drawn[i - 1], h), h))
        assert torch.equal(trace.student_prediction[i - 1], schedule.split(student)[i].argmax(-1).reshape(-1, h, h))
    assert trace.teacher_input[-1].shape == (6, 8, 7, 7) and trace.student_prediction[-1].shape == (6, 7, 7)
    deeper = student_forcing_trace(confident_model, batch, draw, depth=2)
    assert not torch.allclose(deeper.student_input[-1], trace.student_input[-1])


# -- gauges hedging cannot move ------------------------------------------------------------------

class Rescaled(nn.Module):
    """A model whose logits are divided by T: it hedges every prediction, predicting nothing better."""

    def __init__(self, module: nn.Module, T: float):
        super().__init__()
        self.module, self.T = module, T

    def forward(self, label_B, x_BlCv, schedule):
        return self.module(label_B, x_BlCv, schedule) / self.T


def probe_gauges(model, probe, draw, draws):
    return gap_diagnostics(model, probe, draw, torch.Generator().manual_seed(0), GaugeSettings(draws=draws))


@pytest.fixture(scope="module")
def probe(pretrained_setup):
    """64 real held-out images tokenized by the fitted tokenizer."""
    t = pretrained_setup.test
    return TokenBatch(t.labels[:64], t.tokens[:64], t.schedule)


@pytest.fixture(scope="module")
def tf_model(pretrained_setup):
    return pretrained_setup.generator().eval()


DRAWS = {"argmax": (RolloutDraw("argmax", SamplingConfig()), 1),
         "nucleus": (RolloutDraw("stochastic", SamplingConfig(cfg=0, top_k=0, top_p=0.96)), 2),
         "cfg": (RolloutDraw("cfg", SamplingConfig(cfg=1.5, top_k=0, top_p=0.96)), 2)}


@pytest.mark.parametrize("sampler", sorted(DRAWS))
def test_rescaling_the_logits_moves_the_raw_gap_but_neither_the_calibrated_gap_nor_the_agreement(tf_model, probe, sampler):
    draw, draws = DRAWS[sampler]
    with single_thread():
        plain = probe_gauges(tf_model, probe, draw, draws)
        for T in (1.5, 2.0):
            hedged = probe_gauges(Rescaled(tf_model, T), probe, draw, draws)
            for c in keys.CONTEXTS:
                assert hedged[keys.RAW_GAPS[c]] < plain[keys.RAW_GAPS[c]] - 0.02  # hedging pays on the raw gap
                assert hedged[keys.CALIBRATED_GAPS[c]] == pytest.approx(plain[keys.CALIBRATED_GAPS[c]], abs=1e-4)
                calibrated_agreement = keys.diag_key(f"acc_gap/{c}", calibrated=True)
                assert hedged[calibrated_agreement] == pytest.approx(plain[calibrated_agreement], abs=1e-6)
                if sampler == "argmax":  # the same contexts: the raw agreement does not move either
                    assert hedged[keys.AGREEMENT_GAPS[c]] == pytest.approx(plain[keys.AGREEMENT_GAPS[c]], abs=1e-6)
            # the fitted temperature divides the logits: a model already divided by T needs T times less
            assert hedged[keys.TEMPERATURE] == pytest.approx(plain[keys.TEMPERATURE] / T, rel=1e-5)


def test_the_fitted_temperature_is_the_one_that_generated_the_targets():
    g = torch.Generator().manual_seed(0)
    z_NV = 3 * torch.randn(20000, 16, generator=g)
    for T in (0.5, 1.0, 1.7):
        y_N = torch.multinomial(torch.softmax(z_NV / T, -1), 1, generator=g)[:, 0]
        assert fit_temperature(z_NV, y_N) == pytest.approx(T, rel=0.03)
        assert fit_temperature(z_NV * 2, y_N) == pytest.approx(2 * fit_temperature(z_NV, y_N), rel=1e-5)
    least_likely = z_NV.argmin(-1)  # no finite temperature fits: the search stops at its bound
    assert fit_temperature(z_NV, least_likely) == TEMPERATURE_BOUNDS[1]


def test_the_calibration_split_is_seeded_disjoint_and_covers_the_probe():
    cal, meas = calibration_split(10, 0.3, seed=4)
    assert len(cal) == 3 and len(meas) == 7 and set(cal.tolist()).isdisjoint(meas.tolist())
    assert sorted(cal.tolist() + meas.tolist()) == list(range(10))
    assert torch.equal(calibration_split(10, 0.3, seed=4)[0], cal)
    assert not torch.equal(calibration_split(10, 0.3, seed=5)[0], cal)
    with pytest.raises(ValueError, match="at least 2 images"):
        calibration_split(1, 0.5, 0)


def test_a_diverse_probe_rolls_out_one_context_per_draw_and_argmax_one_per_class(tf_model, probe):
    with single_thread():
        nucleus = context_logits(tf_model, probe, DRAWS["nucleus"][0], draws=3, rng=torch.Generator().manual_seed(0))
        greedy = context_logits(tf_model, probe, DRAWS["argmax"][0], draws=1)

    def distinct(rolled):
        return len(torch.cat(rolled, dim=1).unique(dim=0))

    assert distinct(nucleus.rolled) == 3 * len(probe.labels)
    assert distinct(greedy.rolled) <= len(probe.labels.unique())  # every image of a class shares its rollout
