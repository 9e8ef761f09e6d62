"""Every flag of every `sar` subcommand reaches what it configures: changing any one flag changes the
request the command carries out (a flag that is parsed and dropped, like `sar eval --seed` once
was, fails here), and a flag its other flags make meaningless is refused with exit 2."""
import argparse
import re
import subprocess

import pytest

from sar_platform.cli import UsageError, build_parser
from tests.support.processes import SAR
from tests.support.specs import train_spec, write_spec

CHECKPOINTS = ["--generator", "g.safetensors", "--tokenizer", "t.safetensors", "--out", "out"]


@pytest.fixture
def specs(tmp_path):
    return [str(write_spec(tmp_path, train_spec("one"), "one.yaml")),
            str(write_spec(tmp_path, train_spec("two", "mlflow: {port: 5077}"), "two.yaml"))]


CLUSTER = ["--address", "http://127.0.0.1:8265"]


def base_argv(command: str, spec: str) -> list[str]:
    return {
        "validate": [spec], "schema": [], "run": [spec], "submit": [spec, *CLUSTER], "ui": [], "report": ["parent-run"],
        "jobs list": CLUSTER, "jobs status": ["sar-job-1", *CLUSTER], "jobs logs": ["sar-job-1", *CLUSTER],
        "jobs stop": ["sar-job-1", *CLUSTER],
        "sample": CHECKPOINTS, "eval": CHECKPOINTS, "data": ["fashion-mnist"],
        "import-flexvar": ["--generator", "g.pth", "--vqvae", "v.pth", "--out", "out"],
        "import-var": ["--generator", "var_d16.pth", "--vqvae", "vae.pth", "--out", "out"],
    }[command]


# Flags that only mean something beside another one (each is also refused without it, below).
PREREQUISITES = {
    ("eval", "inception_weights"): ["--feature-network", "inception"],
    ("eval", "feature_network"): ["--inception-weights", "w.pth"],
    ("eval", "dataset"): ["--data-root", "folder"],
    ("eval", "selection_seed"): ["--cfg", "0.5,1.5"],
    ("run", "wait_for_nodes"): ["--address", "127.0.0.1:6379"],
}


def subcommands(parser=None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command that runs something, by its words (`jobs logs`)."""
    sub = next(a for a in (parser or build_parser())._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, child in sub.choices.items():
        nested = any(isinstance(a, argparse._SubParsersAction) for a in child._actions)
        found.update(subcommands(child, f"{prefix}{name} ") if nested else {f"{prefix}{name}": child})
    return found


def alternative(action: argparse.Action, base: list[str], other_spec: str) -> list[str] | None:
    """argv with this action's value changed from what `base` gives it (None: it has no other value)."""
    if not action.option_strings:  # positionals: another spec file, or another choice
        if action.choices is not None:
            return None  # `sar data fashion-mnist`: the only data set there is
        if base and not any(a.endswith(".yaml") for a in base):
            return [base[0] + ".other", *base[1:]]  # a job id
        return [other_spec if a.endswith(".yaml") else a for a in base] if base else [other_spec]
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):
        return [*base, flag]
    if action.choices is not None:
        return [*base, flag, next(c for c in action.choices if c != action.default)]
    if action.type is int:
        return [*base, flag, str((action.default or 0) + 3)]
    if action.type is float:
        return [*base, flag, "0.5" if action.default != 0.5 else "0.25"]
    if flag in base:  # a required string given in the base: another value
        i = base.index(flag)
        return [*base[:i + 1], base[i + 1] + ".other", *base[i + 2:]]
    value = {"schedule": "1,2,3,5,7", "labels": "0,3", "sampling": "flexvar_eval", "cfg": "0.5"}.get(action.dest, "x-value")
    return [*base, flag, value]


def built(argv: list[str]):
    args = build_parser().parse_args(argv)
    return args.build(args)


def test_every_flag_of_every_subcommand_changes_what_the_command_builds(specs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAR_SUBMITTED_SPEC", train_spec("submitted"))  # what `sar run --submitted` reads
    commands = subcommands()
    assert set(commands) == {"validate", "schema", "run", "submit", "jobs list", "jobs status", "jobs logs", "jobs stop",
                             "ui", "report", "sample", "eval", "import-flexvar", "import-var", "data"}
    checked = []
    for command, parser in commands.items():
        base = [*command.split(), *base_argv(command, specs[0])]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            needs = PREREQUISITES.get((command, action.dest), [])
            changed = alternative(action, base[len(command.split()):] + needs, specs[1])
            if changed is None:
                continue
            try:
                reference = built(base + needs)
            except UsageError:  # the prerequisite needs this flag in turn (inception and its weights)
                reference = built(base)
            assert built([*command.split(), *changed]) != reference, f"sar {command}: {action.dest} changes nothing"
            checked.append(f"{command} {action.dest}")
    assert "eval seed" in checked and "run num_cpus" in checked and "run submitted" in checked and "ui port" in checked and "submit shared_path" in checked
    assert "jobs logs follow" in checked and "jobs stop no_wait" in checked and "report tracking_uri" in checked
    assert {"run wait_for_nodes", "submit wait_for_nodes", "validate skip_remote", "ui address"} <= set(checked)
    assert "import-var generator" in checked and "import-var vqvae" in checked and "import-var out" in checked
    assert len(checked) >= 61


def test_eval_cfg_takes_one_weight_or_a_grid():
    one = built(["eval", *CHECKPOINTS, "--cfg", "1.5"]).checkpoints.sampling
    assert one.cfg == 1.5 and one.grid is None
    grid = built(["eval", *CHECKPOINTS, "--sampling", "flexvar_eval", "--cfg", "0.5,1.5,2.5", "--selection-seed", "9"])
    assert grid.checkpoints.sampling.grid == (0.5, 1.5, 2.5) and grid.checkpoints.sampling.cfg_ramp == "flexvar"
    assert grid.metrics.selection_seed == 9


def test_the_eval_seed_seeds_the_metric_samples_and_the_sample_seed_the_generation():
    assert built(["eval", *CHECKPOINTS, "--seed", "123"]).metrics.seed == 123
    assert built(["sample", *CHECKPOINTS, "--seed", "123"]).seed == 123


@pytest.mark.parametrize("argv, message", [
    (["eval", *CHECKPOINTS, "--inception-weights", "w.pth"], "--inception-weights is only read with feature_network: inception"),
    (["eval", *CHECKPOINTS, "--feature-network", "inception"], "inception_weights must be a path or URI"),
    (["eval", *CHECKPOINTS, "--top-p", "1.5"], "top_p must be in [0, 1]"),
    (["sample", *CHECKPOINTS, "--schedule", "1,x"], "--schedule must be comma-separated"),
    (["eval", *CHECKPOINTS, "--cfg", "0.5,x"], "--cfg: '0.5,x' is not a list of numbers; give one guidance weight"),
    (["eval", *CHECKPOINTS, "--cfg", "0.5,1.5,0.5"], "--cfg: [0.5, 1.5, 0.5] repeats 0.5"),
    (["eval", *CHECKPOINTS, "--cfg", "1,"], "--cfg: '1,' is not a list of numbers"),
    (["eval", *CHECKPOINTS, "--selection-seed", "5"], "--selection-seed is only read with a guidance grid"),
    (["eval", *CHECKPOINTS, "--cfg", "1,2", "--selection-seed", "0"], "selection_seed must be a seed >= 0 other than seed"),
    (["sample", *CHECKPOINTS, "--cfg", "1,2"], "sar sample draws at one guidance weight"),
    (["ui", "SPEC", "--port", "5056"], "give SPEC or --workspace / --port, not both"),
    (["ui", "--address", "http://127.0.0.1:5000", "--stop"], "SPEC, --workspace, --port and --stop are not read with it"),
    (["run", "SPEC", "--address", "127.0.0.1:6379", "--num-cpus", "2"], "--num-cpus sizes the embedded Ray"),
    (["run", "SPEC", "--wait-for-nodes", "60"], "--wait-for-nodes waits for a cluster's nodes; it is read with --address"),
    (["submit", "SPEC", "--wait-for-nodes", "-1"], "--wait-for-nodes must be 0 or more seconds, got -1"),
    (["run", "SPEC", "--submitted"], "--submitted reads the spec from $SAR_SUBMITTED_SPEC, which is not set"),
    (["report", "SPEC", "--workspace", "ws"], "give a SPEC or --workspace / --port / --tracking-uri, not both"),
    (["report", "missing.yaml"], "missing.yaml: no such spec file"),
    (["report", "run", "--tracking-uri", "http://x", "--port", "5056"], "--workspace / --port are not read with it"),
])
def test_a_flag_that_cannot_be_used_is_refused_with_exit_2(specs, argv, message, monkeypatch):
    monkeypatch.delenv("SAR_SUBMITTED_SPEC", raising=False)
    argv = [specs[0] if a == "SPEC" else a for a in argv]
    with pytest.raises(UsageError, match=re.escape(message)):
        built(argv)
    out = subprocess.run([*SAR, *argv], capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr
