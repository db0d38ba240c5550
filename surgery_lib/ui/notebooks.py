"""Execute the jupytext notebooks headless: the project's main job (``make figures``) and its tests.

Each ``notebooks/NN_name.py`` (jupytext ``py:percent``) is read with jupytext, executed with nbclient
in a fresh kernel whose working directory is ``notebooks/``, and written with its outputs to
``<out>/NN_name.ipynb``; the figures the notebooks save land in ``$SURGERY_FIGURES_DIR``. A cell that
raises stops that notebook with an error naming the notebook and the cell.

Command line::

    python -m surgery_lib.ui.notebooks [NOTEBOOK.py ...] --out build/notebooks --figures figures
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from surgery_lib.paths import checkout_dir

NOTEBOOK_DIR = (checkout_dir() or Path.cwd()) / "notebooks"


class NotebookError(RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""


def notebook_paths(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks ``NN_*.py`` of ``folder``, in order."""
    paths = sorted(p for p in folder.glob("[0-9][0-9]_*.py"))
    if not paths:
        raise FileNotFoundError(f"no notebooks NN_*.py in {folder}")
    return paths


@contextmanager
def _environment(changes: dict[str, str]):
    old = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_notebook(
    path: Path,
    out_dir: Path,
    figures_dir: Path,
    timeout: int = 900,
    env: dict[str, str] | None = None,
) -> Path:
    """Execute one jupytext notebook; returns the path of the executed ``.ipynb``.

    ``env`` adds environment variables for the kernel (e.g. ``SURGERY_MODEL``).

    Raises:
        NotebookError: a cell raised (the executed notebook is still written, with the traceback).
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    notebook = jupytext.read(path)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}.ipynb"
    changes = {
        "SURGERY_FIGURES_DIR": str(figures_dir.resolve()),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "SURGERY_NOTEBOOK": f"notebooks/{path.name}",  # recorded in every figure's sidecar
    }
    changes.update(env or {})
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        with _environment(changes):
            client.execute()
    except CellExecutionError as error:
        raise NotebookError(f"{path.name}: a cell raised (executed copy: {target})\n{error}") from error
    finally:
        nbformat.write(notebook, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="jupytext .py notebooks (default: all)")
    parser.add_argument("--out", type=Path, default=Path("build/notebooks"))
    parser.add_argument("--figures", type=Path, default=Path("figures"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or notebook_paths()
    failed = []
    for path in paths:
        start = time.perf_counter()
        try:
            target = run_notebook(path, args.out, args.figures, args.timeout)
            print(f"ok     {path.name:<40} {time.perf_counter() - start:6.1f} s -> {target}")
        except NotebookError as error:
            failed.append(path.name)
            print(f"FAILED {path.name}\n{error}", file=sys.stderr)
    figures = sorted(args.figures.glob("*.png"))
    print(f"\nexecuted notebooks: {args.out.resolve()}/")
    print(f"figures ({len(figures)} PNG + PDF): {args.figures.resolve()}/")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
