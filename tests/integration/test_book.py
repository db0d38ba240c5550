"""make book: the executed notebooks become a static HTML book with every page and figure."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from conftest import REPO

from surgery_lib.ui.book import MARKER, BookError, build_book, main
from surgery_lib.ui.notebooks import run_notebook

pytestmark = pytest.mark.slow
NOTEBOOKS = ("00_quickstart.py", "02_attention_qk_vs_vv.py")


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    """Two notebooks executed as `make figures` does (few images)."""
    out = tmp_path_factory.mktemp("executed")
    env = {"SURGERY_LIMIT": "2", "HF_HUB_OFFLINE": "1"}
    for name in NOTEBOOKS:
        run_notebook(REPO / "notebooks" / name, out, out / "figures", timeout=600, env=env)
    return out


def _png_outputs(notebook: Path) -> list[bytes]:
    cells = json.loads(notebook.read_text())["cells"]
    return [
        base64.b64decode(o["data"]["image/png"])
        for c in cells
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]


def test_every_notebook_page_and_figure_is_in_the_book(executed: Path, tmp_path: Path) -> None:
    index = build_book(executed, tmp_path / "book")
    html = index.read_text()
    for name in NOTEBOOKS:
        stem = Path(name).stem
        assert (tmp_path / "book" / f"{stem}.html").is_file()
        assert f'href="{stem}.html"' in html  # in the table of contents
    assert (tmp_path / "book" / "searchindex.js").is_file() and (tmp_path / "book" / "search.html").is_file()
    shipped = {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "book" / "_images").glob("*.png")
    }
    for name in NOTEBOOKS:
        figures = _png_outputs(executed / f"{Path(name).stem}.ipynb")
        assert figures, f"{name} shows no figure"
        assert {hashlib.sha256(f).hexdigest() for f in figures} <= shipped


def test_a_book_without_executed_notebooks_says_what_to_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(BookError, match="make figures"):
        build_book(tmp_path, tmp_path / "book")
    assert main(["--notebooks", str(tmp_path), "--out", str(tmp_path / "book")]) == 2
    assert "make figures" in capsys.readouterr().err


def test_a_rebuild_replaces_the_previous_book_and_nothing_else(executed: Path, tmp_path: Path) -> None:
    out = tmp_path / "build" / "book"
    (tmp_path / "build" / "eval").mkdir(parents=True)
    (tmp_path / "build" / "eval" / "results.json").write_text("{}")
    build_book(executed, out)
    assert (out / MARKER).is_file()
    (out / "stale.html").write_text("a page of an earlier build")
    index = build_book(executed, out)
    assert index.is_file() and (out / MARKER).is_file() and not (out / "stale.html").exists()
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["book", "eval"]  # no temporary folder
    assert (tmp_path / "build" / "eval" / "results.json").read_text() == "{}"
    with pytest.raises(BookError, match="not a book built by this command"):
        build_book(executed, tmp_path / "build" / "eval")
    assert (tmp_path / "build" / "eval" / "results.json").is_file()
