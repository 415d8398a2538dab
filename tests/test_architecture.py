"""The house plan, enforced: which way the imports point."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deliberate"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def python_files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", ["analysis", "polis_io"])
def test_pure_packages_import_only_numpy_and_the_standard_library(folder):
    allowed = set(sys.stdlib_module_names) | {"numpy"}
    for path in python_files(folder):
        for module in imported_modules(path):
            assert module.split(".")[0] in allowed, f"{path.name} imports {module}"


def test_services_never_read_the_request():
    for path in python_files("services"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in {"flask", "flask_login"}:
                imported = {alias.name for alias in node.names}
                assert not imported & {"request", "current_user", "session", "g"}, (
                    f"{path.name} imports {imported & {'request', 'current_user', 'session', 'g'}}"
                )


def test_lower_layers_do_not_import_the_web_layer():
    for folder in ("services", "models", "analysis", "polis_io"):
        for path in python_files(folder):
            for module in imported_modules(path):
                assert not module.startswith("deliberate.web"), f"{path} imports {module}"
            source = path.read_text()
            assert "from ..web" not in source and "from .web" not in source, path
