"""sar_platform: YAML job specs -> Ray Train / Ray Tune runs tracked in MLflow; sar_core does the maths.

The package is laid out by where code runs:

    spec/       validation only: YAML -> one immutable, validated job tree (pydantic)
    driver/     the `sar` process (or a Ray Job's driver, or a Tune trial function): sessions, the
                shared Ray Train plumbing, input preparation (token shards, evaluation assets),
                input checks, one module per job kind, reports, `sar submit`, `sar sample/eval`
    worker/     inside Ray Train workers and Ray tasks: the training loop, what each kind trains
                or scores, per-step batches, evaluation, the Ray-task bodies
    services/   used by both sides: MLflow tracking and server, workspace storage, the Ray runtime
                environment, the picklable inputs a driver hands to its workers
    kinds.py    the job-kind table: each kind's driver, input check and worker entry point; the one
                module that imports both driver/ and worker/ (drivers are handed worker code)
    runner.py   `sar run`: checks, MLflow, Ray, then the job's driver through the table
    cli.py      the `sar` command

No worker module imports a driver module or the reverse, and the import graph has no cycle
(tests/test_layout.py checks both).
"""
import os as _os

# MLflow 3 sends client usage telemetry to the MLflow project, from a thread that races with the
# tracking calls of concurrent processes (a sweep trial died of it). Off unless the user turned it
# on (MLFLOW_DISABLE_TELEMETRY=false); set before anything imports mlflow, in every process that
# imports this package (the `sar` process, Ray workers, Tune trials).
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
