"""Per-scale loss weighting: every loss of an objective is sum_s w_s * (mean loss of scale s).

The weights of the scales a loss covers sum to 1:

    token    w_s = n_s / sum_j n_j   (n_s = h_s^2 tokens): every token counts the same, i.e. the plain
             mean over all tokens; the reference repositories' 1/L. A 16x16 scale outweighs the
             1x1 scale 256 to 1.
    scale    w_s = 1 / S: every scale counts the same, however few tokens it holds.
    dynamic  w_s = r_s / sum_j r_j, where r_s is the running mean (EMA, decay `dynamic_momentum`)
             of the ground-truth cross-entropy of scale size s, over the steps that contained it.

Why `dynamic`: the paper reweights scales "to address gradient sparsity" without a formula. Under
token weighting the coarse scales, which set the global structure, get a vanishing share of the
gradient; under scale weighting a scale the model has already mastered keeps a full share. The
dynamic rule gives each scale a share of the objective proportional to the loss it still carries:
equal running losses give scale weighting, and a scale whose loss falls cedes weight to the scales
that remain hard. The EMA is keyed by scale size, so random schedules share it; a size seen for the
first time starts at its observed loss; the current batch is included before the weights are read;
the weights are constants (no gradient). Under DDP the per-scale losses are averaged across ranks
before the update, so every rank holds the same weights. The running losses are the objective's
state (`state_dict`), so a resumed run continues with the same weights.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


class ScaleWeighting:
    def __init__(self, rule: str, momentum: float):
        self.rule = rule
        self.momentum = momentum
        self.running: dict[int, float] = {}  # scale size -> EMA of its cross-entropy (dynamic only)

    def observe(self, sizes: Sequence[int], loss_S: torch.Tensor) -> None:
        """Fold this step's per-scale ground-truth losses (S,) into the running losses (dynamic only)."""
        if self.rule != "dynamic":
            return
        m = self.momentum
        for size, value in zip(sizes, _mean_across_ranks(sizes, loss_S.detach().float()).tolist()):
            self.running[size] = value if size not in self.running else m * self.running[size] + (1 - m) * value

    def __call__(self, sizes: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """(S,) weights, summing to 1, for a loss over the scales of these sizes."""
        if self.rule == "token":
            w = torch.tensor([s * s for s in sizes], dtype=torch.float32, device=device)
        elif self.rule == "scale":
            w = torch.ones(len(sizes), device=device)
        else:
            missing = [s for s in sizes if s not in self.running]
            if missing:
                raise RuntimeError(f"dynamic weighting has no running loss for scale sizes {missing}; observe() them first")
            w = torch.tensor([self.running[s] for s in sizes], dtype=torch.float32, device=device)
        return w / w.sum()

    def state_dict(self) -> dict:
        return {"running_loss": {str(s): v for s, v in self.running.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.running = {int(s): float(v) for s, v in state["running_loss"].items()}


def _mean_across_ranks(sizes: Sequence[int], loss_S: torch.Tensor) -> torch.Tensor:
    """Average per-scale losses over DDP ranks. Ranks may hold different schedules, even of different
    last scales (FlexVAR's draw can drop the last one), so the values travel in a vector indexed by
    scale size, as long as the largest size on any rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss_S
    idx = torch.tensor(list(sizes), device=loss_S.device)
    longest = torch.tensor([max(sizes)], device=loss_S.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    buf = torch.zeros(2, int(longest) + 1, device=loss_S.device)
    buf[0, idx] = loss_S
    buf[1, idx] = 1.0
    dist.all_reduce(buf)
    return buf[0, idx] / buf[1, idx]
