"""Tiny job specs as YAML text, built from the tests' tiny configs (tests/conftest.py `TINY_*`), and
the one way tests write and load them.

Builders return text, so a test can still `.replace` one value to make the spec it needs; every
field is on its own line in a fixed order (kind, name, `head`, tokenizer, model or init_from,
schedule, optim, `extra`), so errors keep their line numbers."""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from sar_platform.spec import SpecError, load_job
from tests.conftest import TINY_GENERATOR, TINY_SCHEDULE, TINY_TOKENIZER


def flow_yaml(value) -> str:
    """One-line (flow style) YAML of plain values; tuples become lists."""
    return yaml.safe_dump(_plain(value), default_flow_style=True, sort_keys=False, width=10**6).strip()


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def written_fields(config) -> dict:
    """The fields of a config dataclass that differ from its defaults: what a spec writes for it."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}


GENERATOR_MODEL = flow_yaml(written_fields(TINY_GENERATOR))
TOKENIZER_MODEL = flow_yaml(written_fields(TINY_TOKENIZER))
SCALES = flow_yaml(TINY_SCHEDULE.scales)
SCHEDULE = f"{{scales: {SCALES}}}"
OPTIM = "{steps: 10, batch_size: 8}"


def eval_spec(num_samples: int = 100) -> str:
    """The tests' evaluation section (flow-style YAML): unguided, nucleus sampling, a small sample."""
    return f"{{sampling: {{cfg: 1.0, top_k: 0, top_p: 0.95}}, metrics: {{num_samples: {num_samples}, batch_size: 50, is_splits: 2}}}}"


EVAL = eval_spec()


def lines(*fields: str) -> str:
    return "".join(f"{field}\n" for field in fields)


def train_body(*extra: str, tokenizer="tok.safetensors", init_from: str | None = None, model: str = GENERATOR_MODEL,
               optim: str = OPTIM, schedule: str = SCHEDULE) -> str:
    """The fields of a tiny train job (unindented): the tiny generator, or `init_from` in its place."""
    start = f"init_from: {init_from}" if init_from else f"model: {model}"
    return lines(f"tokenizer: {tokenizer}", start, f"schedule: {schedule}", f"optim: {optim}", *extra)


def train_spec(name: str = "tiny", *extra: str, head: tuple[str, ...] = (), **body) -> str:
    """A tiny train job: `head` lines after its name, then `train_body(*extra, **body)`."""
    return lines("kind: train", f"name: {name}", *head) + train_body(*extra, **body)


def sweep_spec(name: str, train: str, space: tuple[str, ...] = (), *extra: str, head: tuple[str, ...] = ()) -> str:
    """A sweep of `train` (a `train_body`) over the `space` lines (`path: {grid: [...]}`), then `extra`."""
    searched = ("space:", *(f"  {line}" for line in space)) if space else ()
    return lines("kind: sweep", f"name: {name}", *head, "train:") + textwrap.indent(train, "  ") + lines(*searched, *extra)


def train_step(*extra: str, **body) -> str:
    """A pipeline step: a tiny train job without its name."""
    return "kind: train\n" + train_body(*extra, **body)


def pipeline_spec(name: str, steps: dict[str, str], *extra: str, head: tuple[str, ...] = ()) -> str:
    """A pipeline of named steps (each a job's fields without its name, e.g. `train_step()`), then `extra`."""
    body = "".join(f"  {step}:\n" + textwrap.indent(text, "    ") for step, text in steps.items())
    return lines("kind: pipeline", f"name: {name}", *head, "steps:") + body + lines(*extra)


def local_run(folder: Path, mlflow_uri: str, experiment: str) -> tuple[str, str]:
    """`head` lines of a job that runs here: its workspace in `folder`, its runs in `experiment`."""
    return f"storage: {{path: {folder}/ws}}", f'mlflow: {{tracking_uri: "{mlflow_uri}", experiment: {experiment}}}'


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    """`text` (dedented) as `folder/name`."""
    path = Path(folder) / name
    path.write_text(textwrap.dedent(text))
    return path


def spec_problems(folder: Path, text: str) -> list[str]:
    """The located problems `text` is refused with (it must be refused)."""
    with pytest.raises(SpecError) as refused:
        load_job(write_spec(folder, text))
    return refused.value.problems
