"""The public API: notebooks (and the app's notebook) import from surgery_lib, surgery_lib.analysis and
surgery_lib.figures only; every name those export exists; benchmarks use the model layer's interface."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PUBLIC = {"surgery_lib", "surgery_lib.analysis", "surgery_lib.figures"}
MODEL_INTERNALS = {
    f"surgery_lib.model.{name}"
    for name in ("adapters", "attention", "engine", "gradients", "introspection", "surgery")
}


def _imports(source: str) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("surgery_lib"):
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules += [a.name for a in node.names if a.name.startswith("surgery_lib")]
    return modules


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.py")), ids=lambda p: p.stem)
def test_notebooks_import_only_the_public_api(path):
    outside = sorted(set(_imports(path.read_text())) - PUBLIC)
    assert not outside, (
        f"{path.name} imports {outside}: use surgery_lib, surgery_lib.analysis or surgery_lib.figures"
    )


def test_the_apps_notebook_imports_only_the_public_api():
    from surgery_lib.ui import app

    assert set(_imports(app._CODE)) <= PUBLIC


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_exists(module):
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing and len(mod.__all__) == len(set(mod.__all__))


def test_the_public_api_offers_the_method_registry_and_towers():
    import surgery_lib

    for name in (
        "METHODS",
        "GRADIENT_METHODS",
        "REGISTRY",
        "GradientConfig",
        "tower_info",
        "load_clip",
        "explain",
    ):
        assert name in surgery_lib.__all__


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.stem)
def test_benchmarks_use_the_model_layers_interface(path):
    assert not set(_imports(path.read_text())) & MODEL_INTERNALS
