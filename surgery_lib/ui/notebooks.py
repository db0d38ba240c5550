"""Execute the jupytext notebooks headless: the project's main job (``make figures``) and its tests.

Each ``notebooks/NN_name.py`` (jupytext ``py:percent``) is read with jupytext, executed with nbclient
in a fresh kernel whose working directory is ``notebooks/``, and written with its outputs to
``<out>/NN_name.ipynb``; the figures the notebooks save land in ``$SURGERY_FIGURES_DIR``.

The job never fails on time alone: cells have no time limit unless one is asked for (``--timeout S``
or ``$SURGERY_CELL_TIMEOUT``). While a notebook runs, a progress line says which notebook, which cell
of how many, the elapsed time and the last progress bar the cell printed (an evaluation's tqdm bar). A
failing notebook does not stop the others: every notebook runs, a summary table lists each one's time,
result and figures written, and the exit status is non-zero when any failed. ``--resume`` skips the
notebooks that finished before and whose inputs did not change (the notebook's source, the library's
sources and package data, the shipped data's file list, the ``SURGERY_*`` settings), as recorded in
``<out>/.figures-manifest.json``.

Command line::

    python -m surgery_lib.ui.notebooks [NOTEBOOK.py ...] --out build/notebooks --figures figures \
        [--timeout S] [--resume]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from surgery_lib.paths import checkout_dir, data_dir

NOTEBOOK_DIR = (checkout_dir() or Path.cwd()) / "notebooks"
MANIFEST_NAME = ".figures-manifest.json"
TIMEOUT_ENV = "SURGERY_CELL_TIMEOUT"
_LIBRARY_DIR = Path(__file__).resolve().parents[1]


class NotebookError(RuntimeError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""


@dataclass
class NotebookRun:
    """What became of one notebook in a run of the main job."""

    name: str
    status: str  # "ok", "failed" or "skipped" (finished before, inputs unchanged: --resume)
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)  # figure files (PNG) written by this notebook
    error: str = ""


def figures_line(figures: Path, runs: Sequence[NotebookRun]) -> str:
    """Where the figures of ``runs`` are, counting only the PNG files these notebooks wrote; PNG files in
    the folder that none of them wrote (an earlier numbering, a figure since removed, another notebook)
    are named, never deleted."""
    written = {name for run in runs for name in run.figures}
    others = sorted(p.name for p in Path(figures).glob("*.png") if p.name not in written)
    line = f"figures ({len(written)} PNG + PDF written by these notebooks): {Path(figures).resolve()}/"
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        line += (
            f"\n  {len(others)} other PNG file(s) there were not written by these notebooks (earlier runs or "
            f"other notebooks; delete them if they are stale): {shown}"
        )
    return line


def notebook_paths(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks ``NN_*.py`` of ``folder``, in order."""
    paths = sorted(p for p in folder.glob("[0-9][0-9]_*.py"))
    if not paths:
        raise FileNotFoundError(f"no notebooks NN_*.py in {folder}")
    return paths


def cell_timeout(value: str | int | None = None) -> int | None:
    """The per-cell limit in seconds: ``value``, else ``$SURGERY_CELL_TIMEOUT``, else none (``None``).

    ``0`` or ``none`` mean no limit. Raises ValueError for anything that is not a whole number >= 0.
    """
    raw = os.environ.get(TIMEOUT_ENV, "") if value is None else value
    if raw is None or str(raw).strip().lower() in ("", "0", "none"):
        return None
    try:
        seconds = int(str(raw).strip())
    except ValueError:
        message = f"cell timeout must be a whole number of seconds (0 or none: no limit), got {raw!r}"
        raise ValueError(message) from None
    if seconds < 0:
        raise ValueError(f"cell timeout must be >= 0 seconds (0: no limit), got {seconds}")
    return seconds


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


Progress = Callable[[str, int, int, float, str], None]
"""``progress(notebook, cell, cells, elapsed_s, last_progress_text)``: called as cells start and end
and as a cell prints a progress bar (``cell`` counts code cells from 1)."""


def _last_progress_line(text: str) -> str:
    """The last non-empty carriage-return/newline segment of a stream chunk (a tqdm bar's state)."""
    for part in reversed(text.replace("\r", "\n").split("\n")):
        if part.strip():
            return part.strip()
    return ""


SKIP_REST_MIME = "application/vnd.surgery-lib.skip-rest+json"
"""The display type by which a notebook tells :func:`run_notebook` that its remaining cells do not apply
to the model it runs on (see :func:`skip_rest`)."""


def skip_rest(reason: str) -> None:
    """Say, in a notebook, that the cells below do not apply to this model, and why.

    It shows ``reason``; :func:`run_notebook` (``make figures``, the notebook tests) then leaves the
    remaining cells unexecuted and counts the notebook as run. Run by hand in Jupyter, the cells below still
    run (and fail where they need what the model lacks): the message says so.
    """
    from IPython.display import display

    text = f"**The rest of this notebook is skipped on this model.** {reason}"
    display({"text/markdown": text, "text/plain": text, SKIP_REST_MIME: {"reason": reason}}, raw=True)


def run_notebook(
    path: Path,
    out_dir: Path,
    figures_dir: Path,
    timeout: int | None = None,
    env: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Execute one jupytext notebook; returns the path of the executed ``.ipynb``.

    ``timeout`` is a per-cell limit in seconds (``None``: no limit). ``env`` adds environment
    variables for the kernel (e.g. ``SURGERY_MODEL``). ``progress`` is told of each cell (see
    ``Progress``).

    Raises:
        NotebookError: a cell raised or ran out of time (the executed notebook is still written, with
            the traceback).
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

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
        # OpenMP threads that spin while they wait make torch 4-25x slower when another job holds a
        # core (measured: notebook 04 took 557 s instead of 22 s beside one busy process; 33 s with
        # PASSIVE); passive waiting costs up to ~1.5x on an idle machine. OMP_WAIT_POLICY=ACTIVE in the
        # caller's environment keeps the spinning.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    changes.update(env or {})
    code_cells = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    number = {index: n for n, index in enumerate(code_cells, start=1)}
    start = time.perf_counter()
    state: dict[str, object] = {"cell": 0, "skip": None}

    def tell(text: str = "") -> None:
        if progress is not None:
            progress(path.name, state["cell"], len(code_cells), time.perf_counter() - start, text)

    def on_cell_start(cell, cell_index: int) -> None:
        state["cell"] = number.get(cell_index, state["cell"])
        tell()

    class _Client(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            if msg.get("msg_type") == "stream":
                line = _last_progress_line(content.get("text", ""))
                if line:
                    tell(line)
            if SKIP_REST_MIME in content.get("data", {}):
                state["skip"] = content["data"][SKIP_REST_MIME].get("reason", "")
                tell(f"the rest is skipped: {state['skip']}")
            return super().output(outs, msg, display_id, cell_index)

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            if state.get("skip") is not None:  # skip_rest() ran: the remaining cells do not apply
                return cell
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)

    client = _Client(
        notebook,
        timeout=timeout,
        startup_timeout=600,  # a kernel on a loaded machine can take minutes to start
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=on_cell_start,
    )
    try:
        with _environment(changes):
            client.execute()
    except CellTimeoutError as error:
        raise NotebookError(
            f"{path.name}: cell {state['cell']}/{len(code_cells)} ran past the {timeout} s limit "
            f"(--timeout / ${TIMEOUT_ENV}; 0 means no limit); executed copy: {target}\n{error}"
        ) from error
    except CellExecutionError as error:
        raise NotebookError(
            f"{path.name}: cell {state['cell']}/{len(code_cells)} raised (executed copy: {target})\n{error}"
        ) from error
    finally:
        nbformat.write(notebook, target)
    return target


def _figure_state(folder: Path) -> dict[str, int]:
    """``{file name: mtime_ns}`` of the figure files (PNG/PDF/JSON) in ``folder``."""
    if not folder.is_dir():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix in (".png", ".pdf", ".json")}


def _written(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """The PNG figures that are new or rewritten between two ``_figure_state`` snapshots."""
    return sorted(n for n, t in after.items() if n.endswith(".png") and before.get(n) != t)


def inputs_fingerprint(path: Path, env: dict[str, str] | None = None) -> str:
    """sha256 over what a notebook's results depend on: its source, the library's files (sources and
    package data: configs, weights), the shipped data's file names, sizes and mtimes, and the
    ``SURGERY_*`` settings in force (this process's, updated by ``env``)."""
    digest = hashlib.sha256()
    digest.update(b"notebook\0" + Path(path).read_bytes())
    for file in sorted(p for p in _LIBRARY_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"\0lib\0{file.relative_to(_LIBRARY_DIR)}\0".encode() + file.read_bytes())
    root = data_dir()
    if root.is_dir():
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"\0data\0{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    settings = {k: v for k, v in os.environ.items() if k.startswith("SURGERY_") and k != TIMEOUT_ENV}
    settings.update(env or {})
    digest.update(json.dumps(sorted(settings.items())).encode())
    return digest.hexdigest()


def _read_manifest(out_dir: Path) -> dict:
    try:
        manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _finished_before(path: Path, out_dir: Path, figures_dir: Path, manifest: dict, fingerprint: str) -> bool:
    entry = manifest.get(path.name)
    if not isinstance(entry, dict) or entry.get("inputs") != fingerprint:
        return False
    figures = entry.get("figures", [])
    return (out_dir / f"{path.stem}.ipynb").is_file() and all((figures_dir / f).is_file() for f in figures)


class _ProgressLine:
    """One status line on a terminal (rewritten in place); on a pipe, a line per cell that took long."""

    def __init__(self, stream=sys.stderr, every_s: float = 30.0) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, notebook: str, cell: int, cells: int, elapsed: float, text: str) -> None:
        line = f"  {notebook}: cell {cell}/{cells}, {elapsed:6.0f} s" + (f"  {text[:60]}" if text else "")
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif elapsed - self._last >= self.every_s:
            self._last = elapsed
            print(line, file=self.stream, flush=True)

    def done(self) -> None:
        self._last = 0.0
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def run_notebooks(
    paths: Sequence[Path],
    out_dir: Path,
    figures_dir: Path,
    timeout: int | None = None,
    resume: bool = False,
    env: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> list[NotebookRun]:
    """Execute every notebook of ``paths`` in order, whatever the others do; one ``NotebookRun`` each.

    With ``resume``, a notebook recorded in ``<out_dir>/.figures-manifest.json`` as finished with the
    same ``inputs_fingerprint``, whose executed copy and figures still exist, is skipped. The manifest
    is rewritten after each notebook, so an interrupted run resumes from where it stopped.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out_dir)
    runs = []
    for path in paths:
        path = Path(path)
        fingerprint = inputs_fingerprint(path, env)
        if resume and _finished_before(path, out_dir, figures_dir, manifest, fingerprint):
            entry = manifest[path.name]
            runs.append(
                NotebookRun(path.name, "skipped", entry.get("seconds", 0.0), entry.get("figures", []))
            )
            continue
        manifest.pop(path.name, None)
        before, start = _figure_state(figures_dir), time.perf_counter()
        try:
            run_notebook(path, out_dir, figures_dir, timeout, env, progress)
            status, error = "ok", ""
        except NotebookError as failure:
            status, error = "failed", str(failure)
        seconds = time.perf_counter() - start
        figures = _written(before, _figure_state(figures_dir))
        runs.append(NotebookRun(path.name, status, seconds, figures, error))
        if status == "ok":
            manifest[path.name] = {"inputs": fingerprint, "figures": figures, "seconds": round(seconds, 1)}
        (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if isinstance(progress, _ProgressLine):
            progress.done()
        mark = {"ok": "ok    ", "failed": "FAILED"}[status]
        print(f"{mark} {path.name:<40} {seconds:7.1f} s  {len(figures):3d} figures", flush=True)
        if error:
            print(error, file=sys.stderr, flush=True)
    return runs


def summary_table(runs: Sequence[NotebookRun]) -> str:
    """The per-notebook summary: notebook, time, result (✓ ok, ✗ failed, = skipped), figures written."""
    mark = {"ok": "✓", "failed": "✗", "skipped": "= (unchanged, --resume)"}
    width = max([len("notebook")] + [len(r.name) for r in runs])
    lines = [f"{'notebook':<{width}}  {'time':>9}  {'figures':>7}  result"]
    for r in runs:
        lines.append(f"{r.name:<{width}}  {r.seconds:7.1f} s  {len(r.figures):7d}  {mark[r.status]}")
    total = sum(r.seconds for r in runs if r.status != "skipped")
    failed = sum(r.status == "failed" for r in runs)
    lines.append(f"{'all':<{width}}  {total:7.1f} s  {sum(len(r.figures) for r in runs):7d}  {failed} failed")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="jupytext .py notebooks (default: all)")
    parser.add_argument("--out", type=Path, default=Path("build/notebooks"))
    parser.add_argument("--figures", type=Path, default=Path("figures"))
    parser.add_argument(
        "--timeout",
        default=None,
        help=f"seconds a cell may run (default: ${TIMEOUT_ENV}, else no limit; 0: no limit)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip notebooks that finished before with the same inputs"
    )
    args = parser.parse_args(argv)
    try:
        timeout = cell_timeout(args.timeout)
        paths = args.notebooks or notebook_paths()
    except (ValueError, FileNotFoundError) as error:
        print(f"surgery figures: {error}", file=sys.stderr)
        return 2
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        print(f"surgery figures: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    runs = run_notebooks(paths, args.out, args.figures, timeout, args.resume, progress=_ProgressLine())
    print(f"\n{summary_table(runs)}")
    print(f"\nexecuted notebooks: {args.out.resolve()}/")
    print(figures_line(args.figures, runs))
    failed = [r.name for r in runs if r.status == "failed"]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
