"""The servers tests talk to, on loopback ports: the workspace's MLflow tracking server (the
product's own, services/mlflow_server.py) and moto's S3 server; and the runs an MLflow experiment holds."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sar_platform.services.mlflow_server import ensure_server, stop_server
from tests.support.processes import LOOPBACK, free_port


@contextmanager
def mlflow_server(root: Path, port: int = 0) -> Iterator[str]:
    """An MLflow server on `root` (a free port for 0); its URI, until the block ends."""
    info = ensure_server(root, port=port)
    try:
        assert info.uri.startswith(f"http://{LOOPBACK}:")
        yield info.uri
    finally:
        stop_server(root)


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free port; its endpoint URL, until the block ends."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop()


def experiment_runs(uri: str, experiment: str) -> list:
    """Every run of `experiment` on the tracking server at `uri` ([] if it does not exist)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])
