"""A parent run's comparison: every arm with its uncertainty, the others against the baseline with
intervals on the right basis (paired by seed from one checkpoint, unpaired otherwise, sample noise
only for single runs), a verdict in words, and metrics the parent can log."""
import math

import pytest

from sar_platform.driver.compare import Arm, Comparison, sweep_arms
from sar_platform.spec.jobs import SweepJob

FROM = "ckpt/generator.safetensors"


def arm(name, fids, start=FROM, se=0.5, kind="sar"):
    return Arm(name, f"{name} arm", {"objective.kind": kind, "optim.lr": "0.001", "name": name},
               {seed: {"fid": f, "fid_se": se, "is": 3.0 + seed, "is_se": 0.1} for seed, f in enumerate(fids)}, start)


def test_seeded_arms_get_t_intervals_and_paired_differences_from_the_same_checkpoint():
    tf = arm("tf", [20.0, 23.0, 26.0], kind="tf")
    sar = arm("sar", [19.0, 22.1, 24.9])  # 1 lower on every seed: paired, the seed luck cancels
    c = Comparison([tf, sar], "tf")
    rows = {r["arm"]: r for r in c.rows()}
    assert rows["tf"]["fid"] == 23.0 and rows["tf"]["n"] == 3 and rows["tf"]["fid_ci95"] == pytest.approx(4.30 * 3 / 3 ** 0.5, rel=1e-2)
    assert rows["sar"]["objective.kind"] == "sar" and "optim.lr" not in rows["sar"] and "name" not in rows["sar"]
    (d,) = c.differences()
    assert d["basis"] == "paired over 3 seeds" and d["fid_diff"] == pytest.approx(-1.0) and d["fid_beyond_noise"]
    assert d["fid_ci95"] < 0.5 < rows["tf"]["fid_ci95"]  # far narrower than either arm's own interval
    (verdict,) = c.verdicts()
    assert verdict.startswith("sar vs tf: FID 22.00 vs 23.00, 1.00 lower") and "beyond the noise" in verdict
    metrics = c.parent_metrics()
    assert metrics["compare/tf/fid"] == 23.0 and metrics["diff/sar-tf/fid_beyond_noise"] == 1.0
    assert "compare/tf/fid_ci95" in metrics and "diff/sar-tf/fid_ci95" in metrics
    text = c.render()
    assert "23.00 ± 7.45" in text and "-1.00 ± " in text and " *" in text


def test_arms_from_different_checkpoints_are_not_paired():
    tf, sar = arm("tf", [20.0, 23.0, 26.0]), arm("sar", [19.0, 22.1, 24.9], start="other.safetensors")
    (d,) = Comparison([tf, sar], "tf").differences()
    assert d["basis"] == "unpaired (Welch)" and not d["fid_beyond_noise"]
    assert "within the noise" in Comparison([tf, sar], "tf").verdicts()[0]


def test_single_runs_compare_on_their_standard_errors_only():
    tf, sar = arm("tf", [20.0], se=0.6), arm("sar", [19.0], se=0.8)
    c = Comparison([tf, sar], "tf")
    (d,) = c.differences()
    assert d["basis"] == "one run each: sample-draw noise only"
    assert d["fid_ci95"] == pytest.approx(1.96 * 1.0) and not d["fid_beyond_noise"]  # |-1| < 1.96
    assert "20.00 (SE 0.60)" in c.render()
    assert Comparison([tf, sar], None).differences() == [] and Comparison([tf, sar], None).verdicts() == []


def test_a_sweep_with_seeds_becomes_one_arm_per_configuration():
    sweep = SweepJob.model_validate({
        "kind": "sweep", "name": "sw", "seeds": [0, 1],
        "train": {"tokenizer": "t.safetensors", "init_from": FROM, "schedule": {"scales": [1, 2, 3]},
                  "objective": {"kind": "sar"}, "optim": {"steps": 4}},
        "space": {"objective.gamma": {"grid": [0.0, 1.0]}},
    })
    trials = [{"trial": f"t{i}", "objective.gamma": g, "seed": s, "status": "finished", "fid": 10 + g + s, "fid_se": 0.1}
              for i, (g, s) in enumerate([(0.0, 0), (1.0, 0), (0.0, 1), (1.0, 1)])]
    trials.append({"trial": "t4", "objective.gamma": 1.0, "seed": 2, "status": "error"})
    arms = sweep_arms("sw", sweep, trials)
    assert [a.name for a in arms] == ["sw[objective.gamma=0.0]", "sw[objective.gamma=1.0]"]
    assert arms[1].values("fid") == {0: 11.0, 1: 12.0} and arms[1].start.endswith(FROM)  # the errored trial is left out
    (d,) = Comparison(arms, arms[0].name).differences()
    assert d["fid_diff"] == pytest.approx(1.0) and d["basis"] == "paired over 2 seeds" and d["fid_ci95"] == 0.0
    assert math.isnan(Comparison(arms[:1], None).rows()[0].get("fid_se", math.nan))  # two seeds: an interval, not an SE


def with_gaps(a, tf_loss, ar_loss):
    """Give every seed of `a` per-scale diagnostics: teacher-forced loss and full-rollout loss at scales 2 and 3."""
    for seed, metrics in a.results.items():
        for s, (tf, ar) in enumerate(zip(tf_loss, ar_loss), start=2):
            metrics.update({f"diag/tf/loss/s{s:02d}": tf + seed, f"diag/ar/loss/s{s:02d}": ar + seed + 0.1 * seed})
        metrics["diag/gap/ar"] = ar_loss[-1] - tf_loss[-1] + 0.1 * seed
    return a


def test_the_gap_per_scale_is_the_student_loss_minus_the_teacher_forced_loss_across_seeds(tmp_path):
    from sar_platform.driver.report import gap_figure

    tf = with_gaps(arm("tf", [20.0, 23.0, 26.0], kind="tf"), [1.0, 2.0], [1.5, 3.0])
    sar = with_gaps(arm("sar", [19.0, 22.1, 24.9]), [1.1, 2.1], [1.3, 2.4])
    no_diag = arm("pretrain", [21.0, 24.0, 27.0])
    c = Comparison([no_diag, tf, sar], "tf")
    gaps = {(g["arm"], g["context"], g["scale"]): g for g in c.gaps()}
    assert set(gaps) == {(a, "ar", s) for a in ("tf", "sar") for s in (2, 3)}  # no sf measured, pretrain none
    # per seed the gap is (ar + 1.1 seed) - (tf + seed) = base + 0.1 seed: mean base + 0.1, t-interval of 0, 0.1, 0.2
    assert gaps["tf", "ar", 3]["gap"] == pytest.approx(1.1) and gaps["sar", "ar", 2]["gap"] == pytest.approx(0.3)
    assert gaps["tf", "ar", 3]["ci95"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3) and gaps["tf", "ar", 3]["n"] == 3
    assert "gap/ar" in c.render() and "pretrain" not in c.render().split("gap/ar")[1]
    assert gap_figure(c.gaps(), tmp_path / "gaps.png").stat().st_size > 0
    assert Comparison([no_diag], None).gaps() == [] and gap_figure([], tmp_path / "none.png") is None
