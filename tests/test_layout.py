"""The repository's shape: no package may shadow the standard library's `platform`, and sar_core
stays free of the orchestration stack."""
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()

PROBE = (
    "import platform, sys, json; "
    "print(json.dumps({'file': platform.__file__, 'system': platform.system()}))"
)


def test_there_is_no_package_named_platform():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert (REPO / "platform" / "sar_platform" / "__init__.py").exists()


def test_import_platform_from_the_repository_root_is_the_standard_library():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    import json

    info = json.loads(out.stdout)
    assert Path(info["file"]).resolve().parent == STDLIB and info["system"] == "Linux"


def test_importing_sar_core_pulls_in_no_ray_mlflow_or_boto3():
    code = (
        "import sys, pkgutil, importlib, sar_core\n"
        "for m in pkgutil.walk_packages(sar_core.__path__, 'sar_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'mlflow', 'boto3', 'sar_platform'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.ray
def test_inside_a_ray_worker_with_the_repository_as_working_dir_platform_is_the_standard_library(ray_local):
    import ray

    @ray.remote
    def probe():
        import os
        import platform

        import sar_platform

        return platform.__file__, platform.system(), os.getcwd(), sar_platform.__name__

    file, system, cwd, name = ray.get(probe.remote())
    assert Path(file).resolve().parent == STDLIB and system == "Linux"
    assert (Path(cwd) / "platform" / "sar_platform").is_dir()  # the worker really runs in the uploaded repo
    assert name == "sar_platform"
