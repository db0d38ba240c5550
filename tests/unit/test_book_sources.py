"""The book is made of the current notebooks only."""

from __future__ import annotations


def test_the_book_leaves_out_executed_notebooks_whose_source_is_gone(tmp_path):
    """After a renumbering, build/notebooks still holds the old executed copies: not in the book."""
    from surgery_lib.ui.book import current_notebooks

    executed, sources = tmp_path / "executed", tmp_path / "notebooks"
    executed.mkdir()
    sources.mkdir()
    for name in ("00_a", "03_old", "03_new"):
        (executed / f"{name}.ipynb").write_text("{}")
    for name in ("00_a", "03_new"):
        (sources / f"{name}.py").write_text("")
    current, stale = current_notebooks(executed, sources)
    assert [p.name for p in current] == ["00_a.ipynb", "03_new.ipynb"] and [p.name for p in stale] == [
        "03_old.ipynb"
    ]
    assert len(current_notebooks(executed, None)[0]) == 3  # installed: no sources to compare with
