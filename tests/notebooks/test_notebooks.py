"""Every notebook runs end to end on the shipped toy models (offline), and the runner reports failures."""

from __future__ import annotations

import json

import nbformat
import pytest

from surgery_lib.ui.notebooks import NotebookError, main, notebook_paths, run_notebook

NOTEBOOKS = notebook_paths()
SMALL = {"SURGERY_LIMIT": "6", "HF_HUB_OFFLINE": "1"}  # few images: the same code paths, faster


def test_the_notebooks_are_numbered_in_order():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 6


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_saves_its_figures(path, tmp_path):
    env = {**SMALL, "SURGERY_EVAL_DIR": str(tmp_path / "eval")}  # no results reused from earlier runs
    out = run_notebook(path, tmp_path / "nb", tmp_path / "figures", timeout=600, env=env)
    notebook = nbformat.read(out, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert notebook.cells[0].cell_type == "markdown" and "**Reproduces.**" in notebook.cells[0].source
    sources = [c.source for c in notebook.cells]
    assert any("What you should see" in s for s in sources)
    printed = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "claims hold on this model" in printed  # the claim cell ran and printed its comparisons
    exercises = [
        i for i, c in enumerate(notebook.cells) if c.cell_type == "markdown" and "## Exercises" in c.source
    ]
    assert exercises and exercises[-1] > max(i for i, s in enumerate(sources) if "What you should see" in s)
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert pngs and all(p.with_suffix(".pdf").is_file() for p in pngs)
    assert all(p.name.startswith(path.name[:2]) for p in pngs)  # figures are named after their notebook


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("number", ["10", "11"])
def test_caption_and_sam_notebooks_run_on_the_real_photos(number, tmp_path):
    """SURGERY_IMAGES=real (the README's real-weights command) reaches every notebook that reads images."""
    (path,) = [p for p in NOTEBOOKS if p.name.startswith(number)]
    env = {**SMALL, "SURGERY_IMAGES": "real", "SURGERY_EVAL_DIR": str(tmp_path / "eval")}
    out = run_notebook(path, tmp_path / "nb", tmp_path / "figures", timeout=600, env=env)
    code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_a_failing_cell_names_the_notebook(tmp_path, capsys):
    bad = tmp_path / "07_bad.py"
    bad.write_text('# %%\nx = 1\n\n# %%\nraise RuntimeError("boom in a cell")\n')
    with pytest.raises(NotebookError, match=r"07_bad\.py: cell 2/2 raised(.|\n)*boom in a cell"):
        run_notebook(bad, tmp_path / "out", tmp_path / "figs", timeout=120)
    executed = json.loads((tmp_path / "out" / "07_bad.ipynb").read_text())
    assert executed["cells"][0]["execution_count"] == 1  # the executed copy is kept for inspection
    assert main([str(bad), "--out", str(tmp_path / "out"), "--figures", str(tmp_path / "figs")]) == 1
    assert "1 notebook(s) failed: 07_bad.py" in capsys.readouterr().err


def test_the_surgery_command_runs_the_notebooks_with_make_figures_options(tmp_path, capsys):
    """`make figures` calls `surgery figures --out ... --figures ...`: the options reach the runner."""
    from surgery_lib.cli import main as surgery

    good = tmp_path / "01_good.py"
    good.write_text("# %%\nx = 1\n")
    out, figures = tmp_path / "out", tmp_path / "figs"
    assert surgery(["figures", str(good), "--out", str(out), "--figures", str(figures)]) == 0
    assert (out / "01_good.ipynb").is_file()
    assert "executed notebooks" in capsys.readouterr().out
