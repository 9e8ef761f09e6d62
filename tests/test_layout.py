"""The repository's shape: no package may shadow the standard library's `platform`, sar_core stays
free of the orchestration stack, and the platform's rooms (driver / worker) and import graph stay
as the package docstring describes them."""
import ast
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


# -- the static import graph -------------------------------------------------------------------

PLATFORM = REPO / "platform" / "sar_platform"
ORCHESTRATION = ("sar_platform", "ray", "mlflow", "boto3")


def module_name(path: Path, root: Path, package: str) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, module: str) -> list[str]:
    """Every module an import statement anywhere in the file names (module level, inside functions,
    under `if TYPE_CHECKING`), relative imports resolved; `from a import b` names both a and a.b."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def platform_graph() -> dict[str, set[str]]:
    """sar_platform module -> the sar_platform modules it imports."""
    files = {module_name(p, PLATFORM, "sar_platform"): p for p in PLATFORM.rglob("*.py")}
    return {m: {n for n in imported_names(p, m) if n in files and n != m} for m, p in files.items()}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("driver", "worker") else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_reader_sees_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "pkg" / "sub" / "mod.py"
    source.parent.mkdir(parents=True)
    source.write_text("from . import sibling\n\ndef f():\n    from ..other import thing\n    import ray.train\n")
    names = imported_names(source, "pkg.sub.mod")
    assert {"pkg.sub.sibling", "pkg.other", "pkg.other.thing", "ray.train"} <= set(names)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_worker_module_imports_a_driver_module_or_the_reverse():
    graph = platform_graph()
    assert any(room(m) == "driver" for m in graph) and any(room(m) == "worker" for m in graph)
    crossing = [(m, n) for m, deps in graph.items() for n in deps if {room(m), room(n)} == {"driver", "worker"}]
    assert crossing == []


def test_the_platform_import_graph_has_no_cycle():
    assert cycles(platform_graph()) == []


def test_sar_core_source_imports_no_platform_ray_mlflow_or_boto3():
    root = REPO / "sar_core"
    bad = [(module_name(p, root, "sar_core"), n) for p in root.rglob("*.py")
           for n in imported_names(p, module_name(p, root, "sar_core")) if n.split(".")[0] in ORCHESTRATION]
    assert bad == []


def test_job_kinds_are_dispatched_through_the_table_not_importlib():
    uses = [(str(p.relative_to(REPO)), n) for p in PLATFORM.rglob("*.py")
            for n in imported_names(p, module_name(p, PLATFORM, "sar_platform")) if n.split(".")[0] == "importlib"]
    calls = [str(p.relative_to(REPO)) for p in PLATFORM.rglob("*.py") if "__import__(" in p.read_text()]
    assert uses == [] and calls == []
