"""Metric-key names of the train-test-gap gauges (`diag/...`) and of continuation quality (`cont/...`).

One place for every name, so the training diagnostics, the evaluation and the comparison code agree:

    diag/{tf,sf,ar}/loss[/sNN]     cross-entropy to the ground truth under teacher-forced, one-step
                                   student-forced (SSR) and full-rollout context (raw model, whole probe)
    diag/{tf,sf,ar}/acc[/sNN]      top-1 agreement of the argmax prediction with the ground truth
    diag/kl[/sNN]                  KL(teacher || one-step student)
    diag/gap/{sf,ar}[/sNN]         loss gap: context loss - teacher-forced loss (hedging lowers it)
    diag/acc_gap/{sf,ar}[/sNN]     agreement gap: teacher-forced acc - context acc (no logit scale enters)
    diag/cal/temperature           T_fit: minimises the teacher-forced loss of logits / T on the calibration part
    diag/cal/<any key above>       the same for the calibrated model (logits / T_fit, its contexts drawn from
                                   them) on the measurement part: no global temperature moves them
    cont/k<k>/<metric>             FID / IS / precision / recall (and their _se) of images whose first k
                                   scales are ground truth and the rest the model's own rollout

`sNN` is a scale's SIZE (s07: the 7x7 scale). Aggregates without it average scales 2..N with token weights.
"""
from __future__ import annotations

from sar_core.objectives.metrics import scale_key

CONTEXTS = ("sf", "ar")
"""The self-generated contexts every gap compares with teacher forcing: one-step SSR, full rollout."""


def diag_key(name: str, size: int | None = None, calibrated: bool = False) -> str:
    """`diag/<name>` (or `diag/cal/<name>`), with `/sNN` for the scale of size `size`."""
    key = f"diag/cal/{name}" if calibrated else f"diag/{name}"
    return key if size is None else f"{key}/{scale_key(size)}"


TEMPERATURE = diag_key("temperature", calibrated=True)
RAW_GAPS = {c: diag_key(f"gap/{c}") for c in CONTEXTS}
CALIBRATED_GAPS = {c: diag_key(f"gap/{c}", calibrated=True) for c in CONTEXTS}
AGREEMENT_GAPS = {c: diag_key(f"acc_gap/{c}") for c in CONTEXTS}


def continuation_key(k: int, metric: str) -> str:
    """`cont/k<k>/<metric>`: a metric of continuations from k ground-truth scales."""
    return f"cont/k{k}/{metric}"
