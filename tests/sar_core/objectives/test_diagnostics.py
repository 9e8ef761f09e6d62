import pytest
import torch

from sar_core.objectives import ObjectiveConfig, RolloutDraw, build_objective, student_forcing_trace
from sar_core.objectives.metrics import per_scale_mean, token_cross_entropy, token_kl

from .conftest import Recorder, hand_inputs, hand_upsample


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
