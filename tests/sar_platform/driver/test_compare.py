"""A parent run's comparison: every arm with its uncertainty, the compared pairs (against the
baseline, or all) with intervals and p-values on the right basis (paired by seed from one
checkpoint, unpaired otherwise, sample noise only for single runs), stars and verdicts that survive
Holm's adjustment over the family shown, each arm at its own best guidance, and metrics the parent
can log."""
import math

import pytest

from sar_platform.driver.compare import Arm, Comparison, field_labels, sweep_arms
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
    assert "23.00 ± 7.45" in text and starred_cells(text) == ["-1.00 ± 0.25 *"]


def test_the_answers_lead_with_the_clearest_difference_and_name_the_arm_it_favours():
    tf, close, far = arm("tf", [20.0, 23.0, 26.0]), arm("close", [20.5, 22.6, 26.3]), arm("far", [22.0, 25.1, 27.9])
    c = Comparison([tf, close, far], "tf")
    far_line, close_line = c.answers(c.differences())
    assert far_line.startswith("far - tf: FID +2.00 ± 0.25, **far worse** (Holm-adjusted p = ")
    assert close_line.startswith("close - tf: FID +0.13 ± ") and "within the noise" in close_line
    better = Comparison([tf, arm("sar", [19.0, 22.1, 24.9])], "tf")
    assert "**sar better**" in better.answers(better.differences())[0]  # lower FID favours the first arm


def starred_cells(text: str) -> list[str]:
    """The cells of the printed differences table that carry a star."""
    table = text.split("| difference")[1].split("\n  (")[0]
    return [cell.strip() for line in table.splitlines()[2:] for cell in line.split("|") if cell.strip().endswith("*")]


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
    assert [a.name for a in arms] == ["sw[gamma=0.0]", "sw[gamma=1.0]"]
    assert "γ=0" in arms[0].summary and "γ=1" in arms[1].summary  # each arm says what it trained, not the template
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


def test_a_sweeps_arms_are_named_by_their_fields_last_names_unless_two_share_one():
    assert field_labels(["objective.gamma", "objective.rollout_depth"]) == {"objective.gamma": "gamma",
                                                                            "objective.rollout_depth": "rollout_depth"}
    assert field_labels(["objective.rollout.cfg", "eval.sampling.cfg", "optim.lr"]) == {
        "objective.rollout.cfg": "objective.rollout.cfg", "eval.sampling.cfg": "eval.sampling.cfg", "optim.lr": "lr"}


def test_the_figures_legend_sits_under_every_panel_so_it_hides_no_curve():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sar_platform.driver.report import legend_below

    fig, axes = plt.subplots(1, 3)
    for i in range(5):
        for ax in axes:
            ax.plot([0, 1], [i, i], label=f"arm {i} (mean of n = 3 seeds, 95% t-interval)")
    legend_below(fig, axes[0], 5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 5  # one entry per arm, not per panel
    assert all(legend.get_window_extent(renderer).y1 <= ax.get_tightbbox(renderer).y0 + 1 for ax in axes)
    plt.close(fig)

# -- multiplicity: Holm over the family of differences shown ------------------------------------

def single_run(name, fid, se=1.0, start=FROM):
    """One run with all four headline metrics, each `fid` units (in SEs) from 0 and with the same SE."""
    return Arm(name, f"{name} arm", {"name": name}, {0: {m: fid * w for m, w in WEIGHTS.items()} |
                                                      {f"{m}_se": se * w for m, w in WEIGHTS.items()}}, start)


WEIGHTS = {"fid": 1.0, "is": 0.1, "precision": 0.01, "recall": 0.01}


def test_stars_that_do_not_survive_holm_over_twelve_differences_are_not_printed():
    # each other arm sits 3.1 SE-units from the baseline: z = 3.1 / sqrt(2) = 2.19, p = 0.028 < 0.05 per cell,
    # but Holm over 4 metrics x 3 pairs = 12 cells needs the smallest p below 0.05 / 12
    arms = [single_run("base", 10.0), *(single_run(f"arm{i}", 10.0 + 3.1) for i in range(3))]
    c = Comparison(arms, "base")
    diffs = c.differences()
    assert len(diffs) == 3
    for row in diffs:
        for m in WEIGHTS:
            assert row[f"{m}_p"] == pytest.approx(0.0285, abs=1e-3) and abs(row[f"{m}_diff"]) > row[f"{m}_ci95"]
            assert row[f"{m}_p_holm"] == pytest.approx(12 * row[f"{m}_p"], rel=1e-6)  # twelve equal p: each x 12
            assert not row[f"{m}_beyond_noise"]
    text = c.render()
    assert starred_cells(text) == [] and "* p < 0.05, Holm-adjusted over 12 comparisons: 4 metrics x 3 pairs" in text
    verdicts = c.verdicts()
    assert len(verdicts) == 3 and all("Holm-adjusted over 12 comparisons" in v for v in verdicts)
    assert all("within the noise once the other comparisons are accounted for (unadjusted p < 0.05)" in v for v in verdicts)
    metrics = c.parent_metrics()
    assert metrics["diff/arm0-base/fid_p"] < 0.05 <= metrics["diff/arm0-base/fid_p_holm"]
    assert metrics["diff/arm0-base/fid_beyond_noise"] == 0.0
    # the same difference alone (one metric, one pair) keeps its star
    alone = Comparison([Arm("base", "", {}, {0: {"fid": 10.0, "fid_se": 1.0}}), Arm("a", "", {}, {0: {"fid": 13.1, "fid_se": 1.0}})], "base")
    assert alone.differences()[0]["fid_beyond_noise"] and starred_cells(alone.render()) == ["+3.10 ± 2.77 *"]
    assert "Holm-adjusted over 1 comparison:" in alone.verdicts()[0]


def test_all_pairs_gives_k_choose_2_paired_differences_inside_one_family():
    k = 4
    arms = [arm(name, [20.0 + i, 23.0 + i, 26.5 + i]) for i, name in enumerate(["tf", "sar_token", "sar_dynamic", "sar_gamma"])]
    c = Comparison(arms, None, pairs="all")
    diffs = c.differences()
    assert len(diffs) == k * (k - 1) // 2
    assert {d["difference"] for d in diffs} == {f"{b.name} - {a.name}" for i, a in enumerate(arms) for b in arms[i + 1:]}
    assert all(d["basis"] == "paired over 3 seeds" for d in diffs)
    dynamic_vs_token = next(d for d in diffs if d["difference"] == "sar_dynamic - sar_token")
    assert dynamic_vs_token["fid_diff"] == pytest.approx(1.0)
    assert f"Holm-adjusted over {2 * len(diffs)} comparisons: 2 metrics x 6 pairs" in c.render()  # fid and is
    assert Comparison(arms, "tf").compared_pairs() == [(a, arms[0]) for a in arms[1:]]
    with pytest.raises(ValueError, match="pairs: 'some' is not one of 'baseline', 'all'"):
        Comparison(arms, None, pairs="some")


# -- guidance: each arm at its own best guidance, chosen on the selection set ---------------------

def with_grid(a, report: dict[str, float], select: dict[str, float], se=0.2):
    """Give every seed of `a` a guidance grid: report-set FID = its plain FID + report[g] (with an SE),
    selection-set FID = plain FID + select[g]. The plain keys stay (the run's own choice) and must be ignored."""
    for metrics in a.results.values():
        for g in report:
            metrics.update({f"cfg/{g}/fid": metrics["fid"] + report[g], f"cfg/{g}/fid_se": se,
                            f"cfg/{g}/select/fid": metrics["fid"] + select[g], f"cfg/{g}/is": 4.0 + float(g)})
    return a


def test_each_arm_is_reported_on_the_report_set_at_the_guidance_its_selection_set_chose(tmp_path):
    from sar_platform.driver.report import guidance_figure

    tf = arm("tf", [20.0, 23.0, 26.0], kind="tf")  # no grid: its plain keys
    # the selection set prefers g = 2; the report set would have preferred g = 1.5 (a report-set pick reports -3.0)
    sar = with_grid(arm("sar", [20.0, 23.0, 26.0]), report={"1": 0.0, "1.5": -3.0, "2": -1.0},
                    select={"1": 0.0, "1.5": 0.5, "2": -2.0})
    c = Comparison([tf, sar], "tf")
    assert c.guidance == {"sar": "2"}
    rows = {r["arm"]: r for r in c.rows()}
    assert rows["sar"]["cfg"] == "2" and rows["tf"]["cfg"] == "-"
    assert rows["sar"]["fid"] == pytest.approx(23.0 - 1.0) and rows["sar"]["is"] == pytest.approx(6.0)
    (d,) = c.differences()
    assert d["basis"] == "paired over 3 seeds" and d["fid_diff"] == pytest.approx(-1.0)  # report set at g = 2, by seed
    assert c.parent_metrics()["compare/sar/cfg"] == 2.0
    assert "| sar | 3 | 2   |" in c.render() and "2 <" in c.render()

    curves = c.guidance_curves()
    fid = {(r["cfg"], r["chosen"]): r for r in curves if r["metric"] == "fid"}
    assert set(fid) == {(1.0, False), (1.5, False), (2.0, True)} and all(r["arm"] == "sar" for r in curves)
    assert fid[1.5, False]["value"] == pytest.approx(20.0) and fid[1.5, False]["ci95"] == pytest.approx(rows["tf"]["fid_ci95"])
    assert guidance_figure(curves, tmp_path / "guidance.png").stat().st_size > 0

    # one run: its bootstrap SE at each guidance; only guidance every seed measured competes
    one = with_grid(arm("one", [20.0]), report={"1": 0.0, "3": 1.0}, select={"1": 1.0, "3": 0.0}, se=0.4)
    c1 = Comparison([one], None)
    assert c1.guidance == {"one": "3"} and c1.rows()[0]["fid_se"] == pytest.approx(0.4)
    assert all(r["se"] == 0.4 for r in c1.guidance_curves() if r["metric"] == "fid")
    del sar.results[2]["cfg/2/select/fid"]
    assert Comparison([sar], None).guidance == {"sar": "1"}  # g = 2 lacks a seed's selection FID: 1 beats 1.5


def test_fid_at_an_earlier_scale_gets_its_own_table_with_intervals_across_seeds():
    tf, sar = arm("tf", [20.0, 23.0, 26.0], kind="tf"), arm("sar", [19.0, 22.1, 24.9])
    for a, early in ((tf, [40.0, 42.0, 44.0]), (sar, [35.0, 36.0, 37.0])):
        for seed, value in enumerate(early):
            a.results[seed].update({"fid_at/s04": value, "fid_at/s04_se": 0.3})
    (table,) = [t for t in Comparison([tf, sar], "tf").tables() if t.name == "earlier scales"]
    assert table.columns == ["arm", "fid @4"]
    assert table.rows[0]["fid @4"].startswith("42.00 ± ") and table.rows[1]["fid @4"].startswith("36.00 ± ")
    assert not [t for t in Comparison([arm("tf", [20.0])], None).tables() if t.name == "earlier scales"]


def test_an_arm_with_a_grid_reports_its_fid_at_an_earlier_scale_at_the_chosen_guidance():
    sar = with_grid(arm("sar", [20.0, 23.0, 26.0]), report={"1": 0.0, "2": -1.0}, select={"1": 0.0, "2": -2.0})
    for seed, metrics in sar.results.items():
        metrics.update({"cfg/1/fid_at/s04": 50.0 + seed, "cfg/2/fid_at/s04": 40.0 + seed, "fid_at/s04": 99.0})
    c = Comparison([sar], None)
    assert c.guidance == {"sar": "2"} and c.arms[0].values("fid_at/s04") == {0: 40.0, 1: 41.0, 2: 42.0}
    assert "cfg/2/select/fid" in c.arms[0].results[0] and "select/fid" not in c.arms[0].results[0]
