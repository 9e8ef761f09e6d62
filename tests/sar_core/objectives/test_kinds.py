"""The objective kinds table: every kind's step pinned, and config behaviour derived from the table."""
import dataclasses
from typing import get_args

import pytest
import torch

from sar_core.objectives import OBJECTIVE_KINDS, ObjectiveConfig, build_objective
from sar_core.objectives.config import Kind
from sar_core.objectives.kinds import KIND_FIELDS

from .conftest import make_batch

# name -> (config, loss at step 0, loss at step 1, sum of squared gradients after step 1), computed on
# the tiny confident model before the kinds became a table (noisy_context: when it was added).
PINNED = {
    "tf": (ObjectiveConfig(kind="tf", weighting="dynamic"), 4.973737716674805, 5.365548133850098, 61.210359899205336),
    "sar": (ObjectiveConfig(kind="sar", sampling="stochastic", rollout=dict(top_k=8)),
            5.05485200881958, 4.9661078453063965, 72.32216601508611),
    "sar_paper": (ObjectiveConfig.from_preset("paper"), 4.999318599700928, 5.392065048217773, 68.2157694443924),
    "sar_released": (ObjectiveConfig.from_preset("released_code"), 5.061549663543701, 4.97188663482666, 71.24310752862566),
    "sf_full": (ObjectiveConfig(kind="sf_full", sampling="stochastic"), 5.047255516052246, 4.93502950668335, 74.12581581880642),
    "sf_alternate": (ObjectiveConfig(kind="sf_alternate", weighting="scale"),
                     4.944990158081055, 5.408568382263184, 61.19688019716323),
    "sf_interleave": (ObjectiveConfig(kind="sf_interleave", sampling="cfg", rollout=dict(cfg=1.5)),
                      5.041851997375488, 4.953617095947266, 72.93510739993069),
    "sf_hybrid": (ObjectiveConfig(kind="sf_hybrid", hybrid_scale=3, sampling="stochastic"),
                  5.037144184112549, 4.907173156738281, 58.622457582877196),
    "noisy_context": (ObjectiveConfig(kind="noisy_context", noise_rate=0.3), 5.030952453613281, 4.935546398162842, 71.5861364219047),
    "noisy_context_model": (ObjectiveConfig(kind="noisy_context", noise_rate=0.3, noise_source="model", sampling="stochastic"),
                            5.0416107177734375, 4.91091251373291, 60.10430255953927),
}


def two_steps(model, schedule, config):
    """Losses of steps 0 and 1 of one objective (train mode, seeded) and the squared gradient norm of step 1."""
    model.train()
    objective, rng, losses = build_objective(config), torch.Generator().manual_seed(0), []
    torch.manual_seed(0)  # drop-path
    for step in (0, 1):
        model.zero_grad(set_to_none=True)
        out = objective(model, make_batch(schedule, B=4, seed=step), step, rng)
        out.loss.backward()
        losses.append(out.loss.item())
    return losses, sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)


def test_every_kind_of_the_table_has_a_pinned_step():
    assert {config.kind for config, *_ in PINNED.values()} == set(OBJECTIVE_KINDS)


@pytest.mark.parametrize("name", PINNED)
def test_each_kind_computes_the_loss_and_gradient_it_was_pinned_with(confident_model, schedule, name):
    # bit-identical on the machine that pinned them; the tolerance absorbs other CPUs' float rounding
    config, *pinned = PINNED[name]
    losses, grad_sq = two_steps(confident_model, schedule, config)
    assert [*losses, grad_sq] == pytest.approx(pinned, rel=1e-5)


def test_the_kind_choices_are_the_tables_keys():
    assert get_args(Kind) == tuple(OBJECTIVE_KINDS)
    with pytest.raises(ValueError, match="kind must be one of " + ", ".join(OBJECTIVE_KINDS) + "; got 'ssr'"):
        ObjectiveConfig(kind="ssr")


@pytest.mark.parametrize("kind", OBJECTIVE_KINDS)
def test_a_kind_reads_its_own_fields_and_no_other_kinds(kind):
    config = ObjectiveConfig(kind=kind, sampling="stochastic", noise_source="model")
    unread, own = config.unread_fields(), set(OBJECTIVE_KINDS[kind].fields)
    for field, readers in KIND_FIELDS.items():
        if field in own:
            assert field not in unread
        else:
            assert unread[field].startswith(f"is only read by kind: {' or '.join(readers)} (here kind: {kind}")
    assert config.summary().startswith(kind + ", ") and config.summary().endswith("token weighting")


def test_fields_a_kind_reads_only_in_some_configurations_are_unread_in_the_others():
    assert set(ObjectiveConfig(kind="tf").unread_fields()) >= {"sampling", "rollout"}
    noisy = ObjectiveConfig(kind="noisy_context", sampling="stochastic")
    assert noisy.unread_fields()["sampling"].startswith("is only read with noise_source: model")
    assert {"sampling", "rollout"}.isdisjoint(dataclasses.replace(noisy, noise_source="model").unread_fields())
    clean = dataclasses.replace(noisy, noise_rate=0.0, noise_source="model").unread_fields()
    assert clean["noise_source"].startswith("is not read with noise_rate: 0") and "sampling" in clean


def test_schedule_conflicts_come_from_the_kind():
    hybrid = ObjectiveConfig(kind="sf_hybrid", hybrid_scale=9)
    ((field, problem),) = hybrid.schedule_conflicts(7, "schedule.scales, which ends")
    assert field == "hybrid_scale" and problem == ("9 leaves no student-forced scale in schedule.scales, which ends at "
                                                   "7x7; use a size <= 7")
    assert dataclasses.replace(hybrid, hybrid_scale=7).schedule_conflicts(7, "") == []
    assert all(ObjectiveConfig(kind=k, hybrid_scale=9).schedule_conflicts(7, "") == [] for k in OBJECTIVE_KINDS if k != "sf_hybrid")
