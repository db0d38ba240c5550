"""The executed notebooks as a static HTML book (``make book``): a table of contents, full-text search and
every figure, openable from the file system without a server.

Built with Sphinx, MyST-NB and the Sphinx Book Theme (the engine of Jupyter Book 1), from the notebooks
that ``make figures`` executed (``build/notebooks/*.ipynb``): nothing is executed again, so the book
shows exactly the outputs, figures and claim checks of that run. Command line::

    python -m surgery_lib.ui.book --notebooks build/notebooks --out build/book

``--out`` is replaced as a whole, so it must be missing, empty or a book this command built (it holds
the marker file ``.surgery-book``); a folder holding anything else, the notebooks' folder or a folder
above it, the current folder or one above it are refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from surgery_lib.paths import checkout_dir

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


MARKER = ".surgery-book"
"""The file every built book carries: only a folder with it (or an empty or missing one) is replaced."""


class BookError(RuntimeError):
    """The book could not be built; the message says why."""


def _is_within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or below it (both resolved)."""
    return inner == outer or outer in inner.parents


def check_out_folder(notebooks_dir: Path, out: Path) -> None:
    """Refuse (:class:`BookError`) an ``out`` that building the book there would destroy data in.

    ``out`` must be missing, an empty folder or a book this command built (it holds :data:`MARKER`);
    never the notebooks' folder or a folder above it, the current folder or one above it, the home
    folder or one above it.
    """
    target, notebooks = Path(out).resolve(), Path(notebooks_dir).resolve()
    if _is_within(notebooks, target):
        raise BookError(
            f"--out {out} contains the notebooks ({notebooks_dir}): building the book there would "
            "replace them; pick a folder of its own, e.g. build/book"
        )
    for what, folder in (("the current folder", Path.cwd()), ("your home folder", Path.home())):
        if _is_within(folder.resolve(), target):
            raise BookError(
                f"--out {out} is {what} or a folder above it: the book replaces its --out folder; "
                "pick a folder of its own, e.g. build/book"
            )
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise BookError(f"--out {out} exists and is not a folder")
        if any(target.iterdir()) and not (target / MARKER).is_file():
            raise BookError(
                f"--out {out} is not empty and is not a book built by this command (it has no {MARKER} "
                "file), so it is left alone: remove it yourself or pick another folder"
            )


def _swap_in(built: Path, out: Path, staging: Path) -> None:
    """Replace ``out`` (missing, empty or an earlier book) by the finished ``built`` folder; the earlier
    book moves into ``staging`` (beside ``out``, on the same file system), which the caller removes."""
    if not out.exists():
        built.rename(out)
        return
    previous = staging / "previous"
    out.rename(previous)
    try:
        built.rename(out)
    except OSError:
        previous.rename(out)  # put the earlier book back
        raise


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


def current_notebooks(notebooks_dir: Path, sources: Path | None) -> tuple[list[Path], list[Path]]:
    """The executed notebooks ``notebooks_dir/NN_*.ipynb`` that belong in the book, and the stale ones:
    with a ``sources`` folder (the checkout's ``notebooks/``), an executed notebook whose source
    ``NN_name.py`` is gone (an older numbering, a removed notebook) is stale and left out; without one
    (an installed package) every executed notebook belongs."""
    executed = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if sources is None or not Path(sources).is_dir():
        return executed, []
    current = [nb for nb in executed if (Path(sources) / f"{nb.stem}.py").is_file()]
    return current, [nb for nb in executed if nb not in current]


def build_book(notebooks_dir: Path, out: Path, quiet: bool = True) -> Path:
    """Build the HTML book of the executed notebooks ``notebooks_dir/NN_*.ipynb`` into ``out``.

    The book is built into a temporary folder beside ``out`` and swapped in when it is complete, so a
    failed build keeps the previous book. ``out`` must be missing, empty or an earlier book of this
    command (:func:`check_out_folder`; every book carries the marker file :data:`MARKER`).

    Returns:
        the path of ``index.html``.
    Raises:
        BookError: no executed notebooks (run ``make figures`` first), an ``out`` that is not ours to
            replace, or Sphinx failed.
    """
    from sphinx.cmd import build as sphinx_build

    checkout = checkout_dir()
    notebooks, stale = current_notebooks(notebooks_dir, checkout / "notebooks" if checkout else None)
    if stale:
        names = ", ".join(nb.name for nb in stale)
        print(f"left out of the book (no notebooks/<name>.py any more): {names}", file=sys.stderr)
    if not notebooks:
        raise BookError(f"no executed notebooks NN_*.ipynb in {notebooks_dir}: run `make figures` first")
    given = Path(out)
    check_out_folder(notebooks_dir, given)
    out = given.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    built = staging / "html"  # MyST-NB writes its jupyter_execute/ beside the output: in staging too
    try:
        with tempfile.TemporaryDirectory(prefix="surgery-book-") as tmp:
            src = Path(tmp)
            for notebook in notebooks:
                shutil.copy(notebook, src / notebook.name)
            (src / "index.md").write_text(_index(notebooks), encoding="utf-8")
            (src / "conf.py").write_text(_CONF, encoding="utf-8")
            args = ["-b", "html", "-q" if quiet else "-v", str(src), str(built)]
            if sphinx_build.build_main(args) != 0:
                raise BookError(f"sphinx-build failed for {notebooks_dir} (run with --verbose to see why)")
        if not (built / "index.html").is_file():  # pragma: no cover - sphinx reported success
            raise BookError(f"sphinx-build wrote no index.html for {notebooks_dir}")
        (built / MARKER).write_text(
            "built by python -m surgery_lib.ui.book: this folder is replaced by the next build\n",
            encoding="utf-8",
        )
        check_out_folder(notebooks_dir, out)  # still ours to replace after the build
        _swap_in(built, out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return given / "index.html"


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
