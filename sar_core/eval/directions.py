"""Which way is better, for every metric key whose direction matters: one table, read by the runs'
tags, the comparison's headline and the report page.

A key is matched on its path parts (`cfg/1.5/select/fid`, `diff/sar-tf/fid_diff`, `diag/gap/sf/s07`):
the first rule whose part appears decides. A difference (`_diff`) is better in the metric's own
direction (a negative FID difference favours the first arm). Standard errors, interval half-widths
and p-values have no direction.
"""
from __future__ import annotations

import re

LOWER, HIGHER = "lower", "higher"

DIRECTIONS: tuple[tuple[str, str, str], ...] = (
    # (path part, better, what it is)
    ("fid", LOWER, "Fréchet distance to real images"),
    ("is", HIGHER, "Inception Score"),
    ("precision", HIGHER, "share of samples on the real manifold"),
    ("recall", HIGHER, "share of real images on the samples' manifold"),
    ("acc_gap", LOWER, "top-1 agreement lost to self-generated context"),
    ("gap", LOWER, "loss gap of self-generated context to teacher forcing"),
    ("kl", LOWER, "KL(teacher || student)"),
    ("loss", LOWER, "cross-entropy (nats per token)"),
    ("acc", HIGHER, "top-1 agreement with the ground truth"),
)
NO_DIRECTION = re.compile(r"_(se|ci95|p|p_holm)$")
_PART = re.compile(r"_diff$")


def better(key: str) -> str | None:
    """"lower", "higher" or None (no direction: an uncertainty, a p-value, a count, a setting)."""
    if NO_DIRECTION.search(key):
        return None
    parts = [_PART.sub("", p) for p in key.split("/")]
    for part, direction, _ in DIRECTIONS:
        if part in parts:
            return direction
    return None


def directions_line(keys: list[str] | None = None) -> str:
    """One line for a run's tag or description: `lower is better: ...; higher is better: ...`
    (over the rules, or over the given keys)."""
    names = keys if keys is not None else [part for part, _, _ in DIRECTIONS]
    sides = {side: [k for k in names if better(k) == side] for side in (LOWER, HIGHER)}
    return "; ".join(f"{side} is better: {', '.join(ks)}" for side, ks in sides.items() if ks)
