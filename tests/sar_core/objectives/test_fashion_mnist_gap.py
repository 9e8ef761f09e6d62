"""SAR narrows the train-test gap on real Fashion-MNIST tokens, where teacher forcing does not.

Both runs fine-tune the same teacher-forcing-pretrained tiny generator for the same steps on the
same batches; the gap is measured on 256 held-out images by the objectives' diagnostics (argmax
draws, so both runs are measured alike):
    gap/sf = cross-entropy to ground truth of one-step student forcing - of teacher forcing
    gap/ar = the same with every input from the model's own scale-by-scale rollout
    kl     = KL(teacher || one-step student)
averaged over scales 2..N with token weights. Over seeds 0-2 of the whole pipeline SAR's gap/sf
was 0.73-0.77x, its KL 0.55-0.60x and its gap/ar 0.68-0.77x teacher forcing's, at a teacher-forced
loss 0.03-0.06 nats higher; the asserted margins leave room for that spread.
"""
import torch

from sar_core.objectives import ObjectiveConfig, build_objective

from .conftest import GAP_SCHEDULE, train_steps


def test_sar_reduces_the_student_teacher_gap_relative_to_teacher_forcing(pretrained_setup):
    labels, tokens = pretrained_setup.train
    results = {}
    for name, config in (("tf", ObjectiveConfig()), ("sar", ObjectiveConfig(kind="sar"))):
        model, objective = pretrained_setup.generator(), build_objective(config)
        train_steps(model, objective, labels, tokens, GAP_SCHEDULE, steps=20, lr=1e-3, batch_size=32, seed=1)
        diag = objective.diagnostics(model, pretrained_setup.test, torch.Generator().manual_seed(0))
        results[name] = {k: diag[f"diag/{k}"] for k in ("tf/loss", "sf/loss", "ar/loss", "gap/sf", "gap/ar", "kl")}
    for name, r in results.items():
        print(name, " ".join(f"{k}={v:.4f}" for k, v in r.items()))
    tf, sar = results["tf"], results["sar"]
    assert tf["gap/sf"] > 0.05  # the gap exists: own draws as context cost the teacher-forced model
    assert sar["gap/sf"] < 0.9 * tf["gap/sf"]
    assert sar["gap/ar"] < 0.9 * tf["gap/ar"]
    assert sar["kl"] < 0.8 * tf["kl"]
    assert sar["tf/loss"] < tf["tf/loss"] + 0.15  # without giving up teacher-forced quality
