"""The packages stay layered: ``panostudy`` on top, ``viewer`` over ``study``, ``study`` the ground.

Every import of every module is read with :mod:`ast` (function-level imports included, since most heavy imports
here are lazy), so a back-import cannot hide inside a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("panostudy", "generator", "viewer", "study", "analysis")

#: package → the project packages it must never import.
FORBIDDEN = {
    "study": {"generator", "viewer", "analysis", "panostudy"},
    "generator": {"viewer", "panostudy"},
    "analysis": {"viewer", "panostudy"},
    "viewer": {"generator", "analysis", "panostudy"},
    "panostudy": set(),
}
#: The viewer core knows nothing of any VR API; only its headset backend files may.
VR_APIS = {"openvr", "xr"}
VR_BACKEND_FILES = {"viewer/backends/openvr.py", "viewer/backends/openxr.py"}


def imported_top_level_names(source: str, filename: str = "<source>") -> set[str]:
    """The first component of every absolute import in ``source``, wherever it appears in the module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layering_violations(package: str, relative_path: str, source: str) -> list[str]:
    """``relative_path: imports X`` for each import that breaks the rules above."""
    imported = imported_top_level_names(source, relative_path)
    broken = sorted(imported & FORBIDDEN[package])
    if package == "viewer" and relative_path not in VR_BACKEND_FILES:
        broken += sorted(imported & VR_APIS)
    return [f"{relative_path}: imports {name}" for name in broken]


def project_modules():
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path.relative_to(ROOT).as_posix(), path


def test_every_package_exists_and_has_modules():
    found = {package for package, _, _ in project_modules()}
    assert found == set(PROJECT_PACKAGES)


def test_no_module_imports_against_the_layering():
    violations = []
    for package, relative_path, path in project_modules():
        violations += layering_violations(package, relative_path, path.read_text(encoding="utf-8"))
    assert violations == []


@pytest.mark.parametrize(
    "package, path, source, culprit",
    [
        ("study", "study/store.py", "import viewer\n", "viewer"),
        ("study", "study/store.py", "def f():\n    from analysis.mos import mos\n", "analysis"),
        ("generator", "generator/batch.py", "from panostudy.cli import app\n", "panostudy"),
        ("analysis", "analysis/figures.py", "import viewer.renderer as r\n", "viewer"),
        ("viewer", "viewer/renderer.py", "from generator import tiny\n", "generator"),
        ("viewer", "viewer/session_runner.py", "def f():\n    import openvr\n", "openvr"),
    ],
)
def test_the_check_catches_a_back_import(package, path, source, culprit):
    assert layering_violations(package, path, source) == [f"{path}: imports {culprit}"]


def test_allowed_imports_pass():
    assert layering_violations("viewer", "viewer/backends/openvr.py", "import openvr\nfrom study.errors import X\n") == []
    assert layering_violations("generator", "generator/xmp.py", "from study.errors import StimulusError\n") == []
    assert layering_violations("study", "study/store.py", "from . import models\nimport numpy\n") == []
