"""The README's method × tower matrix is the one the code computes (``surgery towers``), and the matrix
itself says what the refusals say."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from surgery_lib.analysis import markdown_matrix, method_tower_matrix, project_towers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def matrix() -> dict[str, dict[str, str]]:
    return method_tower_matrix({name: build() for name, build in project_towers().items()})


def test_readme_shows_the_computed_matrix(matrix) -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- tower-matrix:start -->\n(.*?)\n<!-- tower-matrix:end -->", readme, re.S)
    assert block, "README.md lost its tower-matrix markers"
    assert block.group(1).strip() == markdown_matrix(matrix), (
        "README.md's method × tower matrix is stale: paste the output of `surgery towers` between its markers"
    )


def test_the_matrix_records_runs_and_refusals(matrix) -> None:
    """Known cells: every tower runs raw CLIP, CLIP Surgery and Grad-CAM; SigLIP has no class-token row
    for Chefer but runs LeGrad; a ModifiedResNet has no ViT-only preset."""
    for tower in next(iter(matrix.values())):
        assert matrix["raw"][tower] == matrix["surgery"][tower] == matrix["gradcam"][tower] == "✓", tower
    assert matrix["chefer"]["SigLIP (timm)"] == "✗ needs a class token"
    assert matrix["legrad"]["SigLIP (timm)"] == "✓" == matrix["legrad"]["HF SiglipModel"]
    assert matrix["naclip"]["ModifiedResNet (toy-rn)"] == "✗ ViT only"
    assert matrix["chefer"]["EVA02 (timm)"] == "✓" == matrix["chefer"]["HF CLIPModel"]
