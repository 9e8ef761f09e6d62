"""Input checks that read checkpoint headers: a train job whose model family comes from `init_from`
alone (no `model` in the spec) gets the family's checks there, since the spec could not know it."""
import pytest

from sar_core.checkpoint import save_model
from sar_core.families import build_generator
from sar_core.generator import GeneratorConfig
from sar_core.tokenizer import MultiScaleVQ
from sar_platform.kinds import check_inputs
from sar_platform.services.storage import Workspace
from sar_platform.spec import SpecError, load_job, load_located_job
from tests.conftest import TINY_GENERATOR, TINY_SCHEDULE, TINY_TOKENIZER
from tests.support.specs import pipeline_spec, train_spec, train_step, write_spec

VAR_GENERATOR = GeneratorConfig(depth=2, width=64, num_heads=2, num_classes=10, vocab_size=64, codebook_dim=8,
                                family="var", scales=TINY_SCHEDULE.scales)


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tok = save_model(MultiScaleVQ(TINY_TOKENIZER), tmp_path / "tok.safetensors")
    flexvar = save_model(build_generator(TINY_GENERATOR), tmp_path / "flexvar.safetensors")
    var = save_model(build_generator(VAR_GENERATOR), tmp_path / "var.safetensors")
    return tok, flexvar, var


def input_problems(path, located=True) -> list[str]:
    job, locator = load_located_job(path)
    try:
        check_inputs(job, Workspace.of(job.storage), locator if located else None)
    except SpecError as e:
        return e.problems
    return []


@pytest.mark.parametrize("value", ["own_draws", "ground_truth_below"])
def test_residual_context_on_a_flexvar_init_from_is_refused_naming_the_field(checkpoints, tmp_path, value):
    tok, flexvar, _ = checkpoints
    path = write_spec(tmp_path, train_spec("resid", f"objective: {{kind: sar, residual_context: {value}}}",
                                           tokenizer=tok, init_from=flexvar))
    want = (f"{path}:7:24: objective.residual_context: is only read with a generator of family: var (here family: "
            f"flexvar; remove it); init_from {flexvar} holds a flexvar generator")
    assert want in input_problems(path)


def test_residual_context_on_a_var_init_from_is_read_and_a_schedule_it_cannot_run_is_refused(checkpoints, tmp_path):
    tok, _, var = checkpoints
    spec = train_spec("resid", "objective: {kind: sar, residual_context: own_draws}", tokenizer=tok, init_from=var)
    problems = input_problems(write_spec(tmp_path, spec))
    assert not any("residual_context" in p or "schedule" in p for p in problems), problems
    problems = input_problems(write_spec(tmp_path, spec.replace("[1, 2, 3, 5, 7]", "[1, 2, 4, 7]"), "other.yaml"))
    assert any("schedule: scales [1, 2, 4, 7] are not the var model's fixed schedule [1, 2, 3, 5, 7]" in p
               and f"init_from {var} holds a var generator" in p for p in problems), problems


def test_a_step_continuing_a_flexvar_step_refuses_residual_context(checkpoints, tmp_path):
    tok, _, _ = checkpoints
    path = write_spec(tmp_path, pipeline_spec("p", {
        "base": train_step(tokenizer=tok),
        "sar": train_step("objective: {kind: sar, residual_context: own_draws}", tokenizer=tok, init_from="step:base"),
    }))
    assert any(": steps.sar.objective.residual_context: is only read with a generator of family: var" in p
               for p in input_problems(path)), input_problems(path)


def test_a_job_built_without_a_file_is_refused_when_the_value_is_not_the_default(checkpoints, tmp_path):
    tok, flexvar, _ = checkpoints
    for value, refused in (("own_draws", True), ("ground_truth_below", False)):
        path = write_spec(tmp_path, train_spec("resid", f"objective: {{kind: sar, residual_context: {value}}}",
                                               tokenizer=tok, init_from=flexvar), f"{value}.yaml")
        problems = input_problems(path, located=False)
        assert any("objective.residual_context: is only read" in p for p in problems) == refused, problems
