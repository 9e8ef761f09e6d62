"""The job-kind table: every kind a spec can name has exactly one entry, and the table is what runs
and checks jobs."""
import typing

from sar_platform.kinds import ENTRIES, KINDS
from sar_platform.spec.jobs import Job


def spec_kinds() -> set[str]:
    union = typing.get_args(Job)[0]
    return {kind for member in typing.get_args(union) for kind in typing.get_args(member.model_fields["kind"].annotation)}


def test_the_table_covers_exactly_the_kinds_of_the_spec():
    assert set(KINDS) == spec_kinds() == {"tokenizer", "train", "eval", "sweep", "pipeline"}


def test_every_kind_that_runs_workers_hands_its_entry_to_the_drivers():
    assert set(ENTRIES.workers) == {kind for kind, k in KINDS.items() if k.worker is not None}
    assert all(callable(k.driver) for k in KINDS.values())
    # what pipeline steps take from a finished step names the file its worker's checkpoints hold
    assert {e.output: e.checkpoint_file for e in ENTRIES.workers.values() if e.output} == {
        "tokenizer": "tokenizer.safetensors", "generator": "generator.safetensors"}


def test_no_driver_imports_another_kinds_driver():
    from tests.test_layout import platform_graph

    drivers = {k.driver.__module__ for k in KINDS.values()}
    graph = platform_graph()
    assert len(drivers) == len(KINDS) and drivers <= set(graph)
    assert [(d, n) for d in drivers for n in graph[d] if n in drivers] == []
