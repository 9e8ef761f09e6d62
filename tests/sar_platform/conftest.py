"""Real components for platform tests: one MLflow tracking server subprocess on a free loopback port
(the local Ray, `ray_local`, and the trained tokenizer, `tokenizer_path`, are in tests/conftest.py)."""
from __future__ import annotations

import pytest

from tests.support.servers import mlflow_server


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri
