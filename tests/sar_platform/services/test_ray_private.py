"""The private Ray APIs of services/ray_private.py hold in the installed Ray: the release they were
read against, the names and shapes the platform relies on. An upgrade fails here first, naming
what to recheck."""
import importlib
import inspect

import ray

from sar_platform.services import ray_private

RECHECK = "recheck every function of platform/sar_platform/services/ray_private.py against it, then update TESTED_RAY_VERSION"


def test_the_installed_ray_is_the_release_the_private_apis_were_read_against():
    assert ray.__version__ == ray_private.TESTED_RAY_VERSION, f"Ray is {ray.__version__} now: {RECHECK}"


def test_the_cluster_switch_is_the_constant_ray_reads_from_its_environment_variable():
    import ray._private.ray_constants as ray_constants

    source = inspect.getsource(ray_constants)
    assert "ENABLE_RAY_CLUSTER" in source and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in source, RECHECK
    before = ray_constants.ENABLE_RAY_CLUSTER
    try:
        ray_private.disable_multi_node()
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def test_the_driver_node_lists_its_processes_as_popen_handles():
    import ray._private.node as ray_node
    import ray._private.services as ray_services
    import ray._private.worker as ray_worker

    assert hasattr(ray_worker, "_global_node"), RECHECK
    assert "self.all_processes" in inspect.getsource(ray_node.Node), RECHECK
    assert "process" in ray_services.ProcessInfo._fields, RECHECK
    if not ray.is_initialized():
        assert ray_private.driver_node_pids() == []


def test_the_checkpoint_snapshot_schema_has_the_fields_the_repair_rewrites():
    schema = importlib.import_module(ray_private.CHECKPOINT_STATE_MODULE)._CheckpointManagerState
    assert set(schema.model_fields) == {
        "ray_version", "checkpoint_results", "checkpoint_report_indices", "latest_checkpoint_result",
        "current_report_index", "pending_training_results", "pending_validation_specs",
        "validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
        "failed_validation_checkpoint_dir_names"}, RECHECK
    empty = {"ray_version": ray.__version__, "checkpoint_results": [], "checkpoint_report_indices": [],
             "latest_checkpoint_result": None, "current_report_index": 0, "pending_training_results": [],
             "pending_validation_specs": [], "validated_checkpoint_dir_names": [],
             "timed_out_validation_checkpoint_dir_names": [], "failed_validation_checkpoint_dir_names": []}
    text = ray_private.checkpoint_manager_state_json(empty)
    assert '"checkpoint_results":[]' in text.replace(" ", "")
