"""Write cluster/requirements.lock: every Python package of the cluster image, name==version, for
Linux x86_64 and Python 3.11 (Ray's image), resolved from PyPI with pip's resolver (metadata only,
nothing is installed):

    python cluster/lock.py          # needs pip >= 23 and PyPI; about two minutes

torch is resolved apart (its CUDA libraries are pinned by torch itself, some through cuda-toolkit's
exact pins) and its own pure-Python dependencies with the rest, so that a registry mirror missing
one CUDA wheel still yields the lock. The pins: pyproject.toml's dependencies, torch, Ray and
psycopg2-binary (the MLflow server's PostgreSQL driver).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "cluster" / "requirements.lock"
TORCH = "torch==2.13.0"
RAY = "ray[default,train,tune,data]==2.60.0"
EXTRA = ["psycopg2-binary", "sympy", "networkx", "jinja2", "filelock", "fsspec", "typing-extensions", "setuptools"]
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in (35, 34, 31, 28, 27, 24, 17)] + ["manylinux2014_x86_64"]


def resolve(requirements: list[str], no_deps: bool = False) -> list[dict]:
    """pip's resolution of `requirements` for the image's platform: the report's `install` list."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--report", str(report), "--target", str(Path(tmp) / "t"), "--python-version", "3.11",
                   "--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS), *(["--no-deps"] if no_deps else []),
                   *requirements]
        subprocess.run(command, check=True, env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "HOME": tmp})
        return json.loads(report.read_text())["install"]


def main() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    rest = [d for d in deps if not d.startswith(("torch", "ray"))] + [RAY, *EXTRA]
    pins = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in resolve(rest)}
    (torch,) = resolve([TORCH], no_deps=True)
    pins["torch"] = torch["metadata"]["version"]
    for requirement in torch["metadata"].get("requires_dist", []):
        if "extra ==" not in requirement and (m := re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^;\s]+)", requirement)):
            pins[m.group(1).lower()] = m.group(3)
    header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")] if LOCK.exists() else []
    LOCK.write_text("\n".join([*header, *(f"{name}=={version}" for name, version in sorted(pins.items()))]) + "\n")
    print(f"{LOCK}: {len(pins)} packages")


if __name__ == "__main__":
    main()
