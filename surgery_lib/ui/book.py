"""The executed notebooks as a static HTML book (``make book``): a table of contents, full-text search and
every figure, openable from the file system without a server.

Built with Sphinx, MyST-NB and the Sphinx Book Theme (the engine of Jupyter Book 1), from the notebooks
that ``make figures`` executed (``build/notebooks/*.ipynb``): nothing is executed again, so the book
shows exactly the outputs, figures and claim checks of that run. Command line::

    python -m surgery_lib.ui.book --notebooks build/notebooks --out build/book
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

_CONF = """
project = "CLIP Surgery toolkit: the notebooks"
author = "the surgery_lib authors"
extensions = ["myst_nb"]
nb_execution_mode = "off"          # the notebooks were executed by `make figures`
nb_merge_streams = True
html_theme = "sphinx_book_theme"
html_title = "CLIP Surgery, step by step"
html_theme_options = {"show_toc_level": 2, "use_download_button": False}
html_static_path = []
exclude_patterns = ["_build"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
"""


class BookError(RuntimeError):
    """The book could not be built; the message says why."""


def _title(notebook: Path) -> str:
    """The first Markdown heading of an executed notebook (its file stem when it has none)."""
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", [])).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.stem


def _index(notebooks: Sequence[Path]) -> str:
    entries = "\n".join(nb.stem for nb in notebooks)
    listing = "\n".join(f"- {nb.stem[:2]}: {_title(nb)}" for nb in notebooks)
    return f"""# CLIP Surgery, step by step

The notebooks of the `surgery_lib` toolkit, executed by `make figures` on the model named in each
notebook's parameters cell. They reproduce the analyses of *A Closer Look at the Explainability of
Contrastive Language-Image Pre-training* (CLIP Surgery; arXiv 2304.05653; Pattern Recognition 2025) and
put CLIP Surgery beside the other training-free dense methods. Every "what you should see" claim is
checked on the model the notebook ran on.

{listing}

```{{toctree}}
:maxdepth: 1
:hidden:

{entries}
```
"""


def build_book(notebooks_dir: Path, out: Path, quiet: bool = True) -> Path:
    """Build the HTML book of the executed notebooks ``notebooks_dir/NN_*.ipynb`` into ``out``.

    Returns:
        the path of ``index.html``.
    Raises:
        BookError: no executed notebooks (run ``make figures`` first), or Sphinx failed.
    """
    from sphinx.cmd.build import build_main

    notebooks = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise BookError(f"no executed notebooks NN_*.ipynb in {notebooks_dir}: run `make figures` first")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="surgery-book-") as tmp:
        src = Path(tmp)
        for notebook in notebooks:
            shutil.copy(notebook, src / notebook.name)
        (src / "index.md").write_text(_index(notebooks), encoding="utf-8")
        (src / "conf.py").write_text(_CONF, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        args = ["-b", "html", "-q" if quiet else "-v", str(src), str(out)]
        if build_main(args) != 0:
            raise BookError(f"sphinx-build failed for {notebooks_dir} (run without --quiet to see why)")
    index = out / "index.html"
    if not index.is_file():  # pragma: no cover - sphinx reported success
        raise BookError(f"sphinx-build wrote no {index}")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", type=Path, default=Path("build/notebooks"))
    parser.add_argument("--out", type=Path, default=Path("build/book"))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        index = build_book(args.notebooks, args.out, quiet=not args.verbose)
    except BookError as error:
        print(f"make book: {error}", file=sys.stderr)
        return 2
    print(f"book: {index.resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
