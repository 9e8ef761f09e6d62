"""Recorded comparisons read back from MLflow: as text (`sar ui`) and as one self-contained HTML page
per comparison (`sar report`) that a researcher can attach to a message.

A comparison is a run tagged `sar.compared` (driver/compare.py) whose `headline.json` holds the
verdicts and the tables as shown. The page adds the figures of that run and of the runs under it
(embedded as data URIs), the recipe (the spec as submitted, else the run's resolved spec), the
software environment and links to every MLflow run; it loads nothing from elsewhere.

Runs in the `sar` process.
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sar_platform.driver.compare import COMPARED_TAG, HEADLINE_ARTIFACT
from sar_platform.driver.report import comparison_table
from sar_platform.services.tracking import (DESCRIPTION_TAG, ENV_TAG, PARENT_TAG, RUN_KEY_TAG, RetryingClient, ran_on,
                                             run_url)

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact read is noise here

RECIPES = ("submitted.yaml", "spec.yaml")
"""The recipe, in order of preference: the spec file as submitted, else the run's resolved spec."""
FIGURE_FOLDER = "figures"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ReportError(ValueError):
    """A run or spec that has no comparison to show; the message says why and what to do."""


@dataclass(frozen=True)
class Server:
    """The tracking server the comparisons live on."""

    uri: str
    client: RetryingClient

    def url(self, run) -> str:
        return run_url(self.uri, run.info.experiment_id, run.info.run_id)

    def text(self, run_id: str, path: str) -> str | None:
        """An artifact's text (None when the run has no such artifact)."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()
            except Exception:  # noqa: BLE001 — MLflow raises several types for a missing artifact
                return None

    def png(self, run_id: str, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_bytes()

    def children(self, run) -> list:
        return self.client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
                                       order_by=["attributes.start_time ASC"])

    def compared(self, experiment_ids: list[str]) -> list:
        """Every run that holds a comparison, newest first."""
        return self.client.search_runs(experiment_ids, f"tags.`{COMPARED_TAG}` LIKE '%'",
                                       order_by=["attributes.start_time DESC"])


def headline(server: Server, run) -> dict:
    text = server.text(run.info.run_id, HEADLINE_ARTIFACT)
    if text is None:
        raise ReportError(f"run {run.info.run_name} ({run.info.run_id}) has no {HEADLINE_ARTIFACT}: its comparison "
                          "was recorded by an older sar-platform; its description and comparison.md hold the tables")
    return json.loads(text)


def comparison_text(recorded: dict) -> str:
    """The verdicts and the tables with their notes, as `sar run` printed them."""
    text = [f"  {v}" for v in recorded["verdicts"]]
    for table in recorded["tables"]:
        text += ["", comparison_table(table["rows"], table["columns"]), *(f"  {n}" for n in table["notes"])]
    return "\n".join(text)


def runs_under(server: Server, run) -> list:
    """The run's descendants, depth first in start order (a pipeline's steps, a sweep's trials)."""
    out = []
    for child in server.children(run):
        out += [child, *runs_under(server, child)]
    return out


def measured_on(under: list, run) -> str:
    """What the compared numbers were computed on: the first run under `run` tagged by its workers
    (`sar.env.workers`), else the run's own `sar.env.*` tags."""
    computed = next((r for r in under if f"{ENV_TAG}workers" in r.data.tags), run)
    return ran_on(computed.data.tags)


def top_level(server: Server, run):
    while (parent := run.data.tags.get(PARENT_TAG)) is not None:
        run = server.client.get_run(parent)
    return run


def find_comparisons(server: Server, run) -> list:
    """The run and the runs under it that hold a comparison."""
    found = [r for r in (run, *runs_under(server, run)) if COMPARED_TAG in r.data.tags]
    if not found:
        raise ReportError(f"run {run.info.run_name} ({run.info.run_id}) holds no comparison and none of its runs "
                          "does: comparisons come from pipelines with `compare:` and sweeps across several seeds")
    return found


def _code(text: str) -> str:
    """Escaped text with its `backquoted` keys set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table_html(table: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '-')))}</td>" for c in table["columns"]) + "</tr>"
                   for row in table["rows"])
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table["notes"])
    return f"<h2>{html.escape(table['name'])}</h2><table><tr>{head}</tr>{body}</table>{notes}"


def figure_paths(server: Server, run) -> list[str]:
    """The run's figures: those directly under `figures/` and those of its last evaluation
    (`figures/step_NNNNNNN/`, the folder that sorts last)."""
    listed = server.client.list_artifacts(run.info.run_id, FIGURE_FOLDER)
    folders = sorted(a.path for a in listed if a.is_dir)
    last = server.client.list_artifacts(run.info.run_id, folders[-1]) if folders else []
    return [a.path for a in (*listed, *last) if not a.is_dir and a.path.endswith(".png")]


def _figures_html(server: Server, run) -> str:
    figures = figure_paths(server, run)
    out = []
    for path in figures:
        data = base64.b64encode(server.png(run.info.run_id, path)).decode()
        name = html.escape(path.removeprefix(f"{FIGURE_FOLDER}/"))
        out.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>')
    return "".join(out)


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
font-variant-numeric:tabular-nums}th{background:#f3f3f3}.note{color:#555;font-size:12px;margin:.2em 0}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}
li{margin:.3em 0}"""


def page(server: Server, run) -> str:
    """The self-contained HTML page of the comparison held by `run`."""
    recorded, name = headline(server, run), html.escape(run.info.run_name)
    under, root = runs_under(server, run), top_level(server, run)
    recipe = next((t for f in RECIPES if (t := server.text(run.info.run_id, f)) is not None), "(no spec recorded)")
    env = json.loads(server.text(root.info.run_id, "environment.json") or "{}") or {
        "git_commit": root.data.tags.get("sar.git_commit", "unknown"), "note": "no environment.json recorded"}
    summary = html.escape(run.data.tags.get("sar.summary", ""))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{name}: comparison</title><style>{CSS}</style>",
             f"</head><body><h1>{name}: comparison</h1><p>{summary}</p>",
             f'<p>MLflow run: <a href="{html.escape(server.url(run))}">{html.escape(server.url(run))}</a></p>',
             "<h2>verdicts</h2><ul>", *(f"<li>{html.escape(v)}</li>" for v in recorded["verdicts"]), "</ul>"]
    for table in recorded["tables"]:
        parts.append(_table_html(table))
        if table["name"] == "arms":
            parts += ["<ul>", *(f"<li><b>{html.escape(a)}</b>: {html.escape(s)}</li>" for a, s in recorded["arms"].items()),
                      "</ul>"]
    parts.append(f"<p class='note'>Measured on: {html.escape(measured_on(under, run))}.</p>")
    directions = recorded["directions"]
    parts += [f"<p>{html.escape(directions[:1].upper() + directions[1:])}.</p><p>{_code(recorded['loss_note'])}</p>",
              "<h2>figures</h2>", _figures_html(server, run)]
    for child in under:
        if figures := _figures_html(server, child):
            parts += [f"<h3>{html.escape(child.info.run_name)}</h3>", figures]
    parts += ["<h2>recipe</h2><pre>", html.escape(recipe), "</pre>", "<h2>environment</h2><table>",
              *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in env.items()), "</table>",
              "<h2>MLflow runs</h2><table><tr><th>run</th><th>status</th><th>what</th><th>ran on</th><th>link</th></tr>"]
    for r in (run, *under):
        what = r.data.tags.get("sar.summary", r.data.tags.get(DESCRIPTION_TAG, "")).splitlines()[:1]
        url = html.escape(server.url(r))
        parts.append(f"<tr><td>{html.escape(r.info.run_name)}</td><td>{html.escape(r.info.status)}</td>"
                     f"<td>{html.escape(''.join(what))}</td><td>{html.escape(ran_on(r.data.tags))}</td>"
                     f"<td><a href=\"{url}\">{url}</a></td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_pages(server: Server, run, out: Path) -> list[Path]:
    """One page per comparison held by `run` or a run under it: `<out>/<run name>.html`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for compared in find_comparisons(server, run):
        path = out / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', compared.info.run_name)}.html"
        path.write_text(page(server, compared), encoding="utf-8")
        written.append(path)
    return written


def find_run(server: Server, text: str):
    """A run by id, or by name over every experiment (the name must be unique)."""
    if RUN_ID.match(text):
        try:
            return server.client.get_run(text)
        except Exception:  # noqa: BLE001 — not an id after all: try it as a name
            pass
    experiments = [e.experiment_id for e in server.client.search_experiments()]
    escaped = text.replace("'", "\\'")
    runs = server.client.search_runs(experiments, f"attributes.run_name = '{escaped}'") if experiments else []
    if not runs:
        raise ReportError(f"no run with the id or name {text!r} on {server.uri}")
    if len(runs) > 1:
        ids = ", ".join(r.info.run_id for r in runs)
        raise ReportError(f"{len(runs)} runs are named {text!r} on {server.uri} ({ids}): give the run id")
    return runs[0]


def find_spec_run(server: Server, experiment: str, run_key: str, spec: str):
    """The top-level run of a job spec: found by its run key in the spec's experiment."""
    found = server.client.get_experiment_by_name(experiment)
    escaped = run_key.replace("'", "\\'")
    runs = [] if found is None else server.client.search_runs([found.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{escaped}'")
    if not runs:
        raise ReportError(f"{spec} has no run on {server.uri} (experiment {experiment!r}): run it first with sar run {spec}")
    return runs[0]
