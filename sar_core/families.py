"""Model families: the scale-wise architectures the project trains, as one table.

A family is a tokenizer class and a generator class that agree on how token maps become the
generator's next-scale inputs. Everything else (objectives, generation, evaluation, the platform)
talks to the two modules through their shared methods and never branches on a family's name:

    tokenizer   tokenize / tokenize_flat, decode_maps, decode_trajectory, code_vectors, token_scales
    generator   scale_inputs / inputs_from_maps (teacher forcing and rollouts), staggered_inputs (the
                Stagger-Scale Rollout's student inputs), input_stream (generation, one scale at a
                time), schedule_problem, attach_tokenizer / matches_tokenizer

Configs name their family in `family`; `build_tokenizer` / `build_generator` pick the class. A
config field that only some families read is listed in the config module's *_FAMILY_FIELDS and is
refused by specs for the others. Adding a family: one module with the two classes and one entry here
(docs/model-families.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from sar_core.generator import ScaleGenerator
from sar_core.tokenizer import MultiScaleVQ
from sar_core.var_family import ResidualVQ, VarGenerator


@dataclass(frozen=True)
class ModelFamily:
    tokenizer: type[nn.Module]
    generator: type[nn.Module]
    doc: str
    """What sets the family apart, in one line."""
    objective_fields: tuple[str, ...] = ()
    """ObjectiveConfig fields only this family reads."""


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "flexvar": ModelFamily(MultiScaleVQ, ScaleGenerator,
                           "per-scale quantisation of the resized latent; scale k's up-sampled code vectors feed "
                           "scale k+1; positions resized to any schedule"),
    "var": ModelFamily(ResidualVQ, VarGenerator,
                       "residual quantisation at a fixed schedule; f-hat of scales 1..k, area-resized, feeds scale "
                       "k+1; absolute positions and a level embedding", objective_fields=("residual_context",)),
}


def family(name: str) -> ModelFamily:
    if name not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {name!r}; families: {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[name]


def build_tokenizer(config) -> nn.Module:
    return family(config.family).tokenizer(config)


def build_generator(config) -> nn.Module:
    return family(config.family).generator(config)


def check_family(config) -> None:
    if config.family not in MODEL_FAMILIES:
        raise ValueError(f"family must be one of {', '.join(MODEL_FAMILIES)}; got {config.family!r}")


def unread_objective_fields(name: str) -> dict[str, str]:
    """Objective fields that only other families read -> why a `name` model never reads them."""
    return {field: f"is only read with a generator of family: {other} (here family: {name}; remove it)"
            for other, spec in MODEL_FAMILIES.items() if other != name for field in spec.objective_fields}


def family_unread_fields(config, family_fields: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The fields of `config` that only other families read -> why they are not read here."""
    out = {}
    for name, owned in family_fields.items():
        if name != config.family:
            for field in owned:
                out[field] = f"is only read by family: {name} (here family: {config.family}; remove it)"
    return out

