"""MLflow leads with the answer: experiments open on the model-training pages, a run's params are the
settings it computes with and its generator's architecture (infrastructure is tags), a comparison's
parent run states its verdicts, tables and headline numbers with their direction, `sar ui` prints
the comparisons, and `sar report` writes a self-contained page per comparison that a browser renders."""
import html
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sar_core import save_model
from sar_core.objectives.metrics import scale_key
from sar_platform.driver.compare import Arm, Comparison
from sar_platform.driver.report import gap_figure
from sar_platform.driver.session import Session
from sar_platform.services.mlflow_server import ensure_server, stop_server
from sar_platform.services.storage import Workspace
from sar_platform.services.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, Tracker, environment_tags
from sar_platform.spec import load_job
from sar_platform.worker.loop import tag_environment
from tests.support.specs import write_spec

SAR = [sys.executable, "-m", "sar_platform.cli"]
CHROMIUM = "/usr/bin/chromium"
INFRASTRUCTURE = ("resources.", "storage.", "mlflow.", "max_failures", "checkpoint.", "log.", "tokenizer", "init_from",
                  "name", "description")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace with its own embedded MLflow server (what `sar ui` / `sar report --workspace` find)."""
    root = tmp_path_factory.mktemp("views") / "ws"
    info = ensure_server(Workspace(str(root)).mlflow_root(), port=0)
    yield root, info.uri
    stop_server(Workspace(str(root)).mlflow_root())


def with_gaps(results: dict, shift: float) -> dict:
    """Final metrics with the probe's per-scale losses (the gap figure's input)."""
    losses = {f"diag/{c}/loss/{scale_key(s)}": 2.0 + shift * (c != "tf") + 0.1 * s for c in ("tf", "sf", "ar") for s in (2, 3, 5)}
    return {**results, **losses}


@pytest.fixture(scope="module")
def compared(workspace):
    """A parent run holding a comparison of two single-run arms, with one child run that has a figure."""
    root, uri = workspace
    tracker = Tracker(uri, "views")
    parent, _ = tracker.open(f"{root}/study", "study", params={"kind": "pipeline"},
                             tags={"sar.summary": "pipeline of 2 steps"})
    child, _ = tracker.open(f"{root}/study.sar", "study.sar", parent=parent)
    tag_environment(child, workers=2)  # as rank 0 of the workers that train it does
    figure = root.parent / "samples.png"
    gap_figure([{"arm": "sar", "context": "sf", "scale": 2, "gap": 0.1, "ci95": float("nan"), "n": 1}], figure)
    child.log_artifact(figure, "figures/step_0000002")  # an earlier evaluation's: not shown
    child.log_artifact(figure, "figures/step_0000004")
    child.finish()
    tf = Arm("tf", "tf; 4 steps", {"objective.kind": "tf"}, {0: with_gaps({"fid": 30.0, "fid_se": 0.4}, 0.5)}, "ckpt")
    sar = Arm("sar", "sar γ=0.5; 4 steps", {"objective.kind": "sar"}, {0: with_gaps({"fid": 25.1234, "fid_se": 0.5}, 0.2)},
              "ckpt")
    comparison = Comparison([tf, sar], "tf")
    comparison.log(parent)
    parent.finish()
    return MlflowClient(uri).get_run(parent.run_id), comparison, uri


def test_an_experiment_opens_on_the_model_training_pages(workspace):
    _, uri = workspace
    client = MlflowClient(uri)
    made_by_hand = client.create_experiment("by-hand")
    Tracker(uri, "fresh"), Tracker(uri, "by-hand")
    assert client.get_experiment_by_name("fresh").tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING == "custom_model_development"
    assert client.get_experiment(made_by_hand).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING


def test_run_params_are_the_settings_and_the_architecture_and_infrastructure_is_tags(workspace, tmp_path, generator_model):
    root, uri = workspace
    checkpoint = save_model(generator_model, tmp_path / "generator.safetensors")
    path = write_spec(tmp_path, f"""
        kind: train
        name: post
        tokenizer: {tmp_path}/tokenizer.safetensors
        init_from: {checkpoint}
        schedule: {{scales: [1, 2, 3, 5, 7]}}
        optim: {{steps: 4, batch_size: 8}}
        resources: {{num_workers: 2}}
        storage: {{path: {root}}}
        mlflow: {{tracking_uri: "{uri}", experiment: params}}
        max_failures: 3
    """)
    job = load_job(path)
    session = Session(Workspace.of(job.storage), Tracker(uri, "params"), resume=False, entries=None,
                      spec_text=path.read_text())
    handle = session.open_run("post", job, parent=None)
    run = MlflowClient(uri).get_run(handle.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["model.depth"] == "2" and params["model.width"] == "64" and params["objective.kind"] == "tf"
    assert params["optim.steps"] == "4" and params["schedule.scales"] == "[1, 2, 3, 5, 7]"
    assert not [k for k in params if k.startswith(INFRASTRUCTURE)], sorted(params)
    assert tags["sar.infra.resources.num_workers"] == "2" and tags["sar.infra.max_failures"] == "3"
    assert tags["sar.infra.mlflow.experiment"] == "params" and tags["sar.input.init_from"] == str(checkpoint)
    assert "lower is better: fid" in tags["sar.better"] and "higher is better: is" in tags["sar.better"]
    assert {f"sar.env.{k}" for k in ("torch", "ray", "mlflow", "cuda", "device", "devices_per_node", "cpu", "cpu_threads",
                                     "torch_threads")} <= set(tags)  # what it ran on, as tags every run has
    environment = MlflowClient(uri).download_artifacts(handle.run_id, "environment.json", str(tmp_path))
    assert {"python", "torch", "ray", "mlflow", "git_commit"} <= set(json.loads(open(environment).read()))


def test_a_comparison_parent_states_its_verdicts_tables_and_headline_numbers(compared):
    run, comparison, _ = compared
    description = run.data.tags["mlflow.note.content"]
    (verdict,) = comparison.verdicts()
    answer, note, summary = [line for line in description.split("\n") if line][:3]
    assert answer.startswith("- sar - tf: FID -4.88 ± 1.26, **sar better** (Holm-adjusted p = ")  # the answer first
    assert "lower FID is better" in note and summary == "pipeline of 2 steps" and f"- {verdict}" in description
    assert "| arm | n | fid" in description and "| sar - tf" in description
    assert "Lower is better: fid" in description and "`loss/tf_nll`" in description
    metrics = run.data.metrics
    assert metrics["headline/sar-tf/fid_diff"] == -4.88 and metrics["diff/sar-tf/fid_diff"] == pytest.approx(-4.8766)
    assert metrics["headline/sar-tf/fid_ci95"] == 1.26 and 0 <= metrics["headline/sar-tf/fid_p_holm"] < 0.05
    assert run.data.tags["sar.compared"] == "tf, sar"


def test_sar_ui_prints_each_comparison_with_the_link_to_its_run(compared, workspace):
    run, comparison, uri = compared
    root, _ = workspace
    out = subprocess.run([*SAR, "ui", "--workspace", str(root)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"study: {uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in out.stdout
    assert comparison.verdicts()[0] in out.stdout and "| arm | n | fid" in out.stdout and "| sar - tf" in out.stdout
    assert f"measured on: 2 worker(s) on {environment_tags()['sar.env.device']}" in out.stdout  # the workers' node


@pytest.fixture(scope="module")
def report_page(compared, workspace, tmp_path_factory):
    run, _, uri = compared
    out_dir = tmp_path_factory.mktemp("reports")
    out = subprocess.run([*SAR, "report", "study", "--workspace", str(workspace[0]), "--out", str(out_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (page,) = out_dir.glob("*.html")
    assert out.stdout.strip() == str(page)
    return page


def test_sar_report_writes_one_self_contained_page_with_the_tables_and_figures(report_page, compared):
    run, comparison, uri = compared
    text = report_page.read_text()
    assert html.escape(comparison.verdicts()[0]) in text
    assert "<th>difference</th>" in text and "25.12 (SE 0.50)" in text and "-4.88 ± 1.26 *" in text
    assert text.count("data:image/png;base64,") == 2  # the parent's gap figure and the child's last evaluation's
    assert 'src="http' not in text and "<script" not in text and "<link" not in text  # nothing loaded from elsewhere
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in text
    assert "<h2>recipe</h2>" in text and "<h2>environment</h2>" in text
    assert "Measured on: 2 worker(s) on " in text and "<th>ran on</th>" in text


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)")
def test_the_report_page_renders_in_headless_chromium(report_page, tmp_path):
    from PIL import Image

    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--hide-scrollbars", "--window-size=1200,3000", f"--screenshot={shot}", report_page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--dump-dom", report_page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<table>") >= 3 and dom.count("<img ") == 2
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = int((np.abs(rgb - (31, 119, 180)) < 12).all(axis=-1).sum())
    assert blue > 50, "no pixel of the figures' first colour: the embedded images did not render"


def test_sar_report_refuses_what_holds_no_comparison_with_exit_2(compared, workspace, tmp_path):
    root = str(workspace[0])
    for target, message in (("study.sar", "holds no comparison"), ("no-such-run", "no run with the id or name")):
        out = subprocess.run([*SAR, "report", target, "--workspace", root, "--out", str(tmp_path)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not list(tmp_path.glob("*.html"))
