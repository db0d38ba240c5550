"""The explorers as a classroom web app without code cells (``make app``): Voilà serves a generated
notebook that shows the :class:`~surgery_lib.ui.widgets.Explorer` and the
:class:`~surgery_lib.ui.widgets.AttentionExplorer` on the shipped composites, on localhost.

    python -m surgery_lib.ui.app --port 8866            # then open http://127.0.0.1:8866/
    SURGERY_MODEL=ViT-B-16 SURGERY_PRETRAINED=openai python -m surgery_lib.ui.app

Students see the controls and the maps only; the code runs in the server's kernel.

The server listens on 127.0.0.1 only and asks for no token: anyone with an account on this machine can
open it and use the explorers (their kernels run as the user who started the app); nobody from another
machine can. Run it on a machine of your own, or put an authenticating proxy in front of it.
"export figure" writes into ``<folder>/figures`` (``build/app/figures``) and stops once that folder
holds :data:`MAX_EXPORTS` figures. SIGTERM or Ctrl-C stops the server and its kernels with the app.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_INTRO = """# Where does CLIP look? Raw CLIP vs CLIP Surgery

Pick a method, tick or untick each modification of CLIP Surgery and watch the similarity maps change.
The second panel shows where one image token sends its attention under each kind of attention (q-k is
CLIP's own; v-v is the surgery's). The model is the one named below the maps; the images are held-out
composites with known object masks. When several models are on this machine, the tower picker at the
top switches between them (README, "Towers")."""

_CODE = """import os
from surgery_lib import DEFAULT_MODEL, tower_spec
from surgery_lib.figures import TowerApp

MODEL = os.environ.get("SURGERY_MODEL", DEFAULT_MODEL)
TowerApp(
    tower_spec(MODEL, os.environ.get("SURGERY_PRETRAINED", "default")),
    figure_dir=FIGURES,
    max_exports=int(os.environ.get("SURGERY_APP_MAX_EXPORTS") or MAX_EXPORTS),
    images=os.environ.get("SURGERY_IMAGES") or None,
)"""

MAX_EXPORTS = 50
"""How many exported figures the app's figure folder may hold (``$SURGERY_APP_MAX_EXPORTS``): every
visitor can press "export figure", and each press writes files on the server."""


def write_app_notebook(folder: Path) -> Path:
    """Write the app's notebook (``explorer.ipynb``) into ``folder`` and return its path."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    folder.mkdir(parents=True, exist_ok=True)
    figures = (folder / "figures").resolve()
    settings = f"FIGURES = {str(figures)!r}\nMAX_EXPORTS = {MAX_EXPORTS}\n"
    notebook.cells = [
        nbformat.v4.new_markdown_cell(_INTRO),
        nbformat.v4.new_code_cell(settings + _CODE),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "explorer.ipynb"
    nbformat.write(notebook, path)
    return path


def voila_command(notebook: Path, port: int) -> list[str]:
    """The Voilà command that serves ``notebook`` on ``127.0.0.1:port`` without opening a browser."""
    voila = shutil.which("voila", path=str(Path(sys.executable).parent)) or shutil.which("voila")
    if voila is None:
        raise FileNotFoundError("voila is not installed: pip install -r requirements-book.txt")
    command = [voila, str(notebook), f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")
    return command


def _descendants(pid: int) -> list:
    """The processes below ``pid`` (``psutil.Process`` objects, which check a pid was not reused before
    signalling it); empty without psutil (a dependency of the Jupyter kernel the app needs)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - ipykernel depends on psutil
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _end(processes: list, grace: float) -> None:
    """Terminate the ``processes`` still running, then kill those alive after ``grace`` seconds."""
    import psutil

    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
            alive.append(process)
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def serve(command: Sequence[str], grace: float = 10.0) -> int:
    """Run the server ``command`` in a process group of its own and stop it with this process.

    SIGTERM, SIGINT and SIGHUP sent to this process are passed on to the server's group as SIGTERM
    (Voilà then shuts its kernels down); a server still running ``grace`` seconds later, or when a
    second signal arrives, is killed. Processes the server started in groups of their own (Jupyter
    kernels) that outlive it are ended too. Returns the server's exit status (0 after a signal).
    """
    if os.name != "posix":  # pragma: no cover - no process groups: the console stops the child
        try:
            return subprocess.call(list(command))
        except KeyboardInterrupt:
            return 0
    server = subprocess.Popen(list(command), start_new_session=True)
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    stopping: list[float] = []  # the time of the first signal
    leftovers: list = []

    def forward(signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            leftovers.extend(_descendants(server.pid))  # kernels run in process groups of their own
            _signal_group(server.pid, signal.SIGTERM)
        else:
            _signal_group(server.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        while True:
            try:
                code = server.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - stopping[0] > grace:
                    _signal_group(server.pid, signal.SIGKILL)
    finally:
        if server.poll() is None:  # this process is ending for another reason
            leftovers.extend(_descendants(server.pid))
            _signal_group(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(server.pid, signal.SIGKILL)
                server.wait()
        _signal_group(server.pid, signal.SIGKILL)  # whatever is left of the server's group
        if leftovers:
            _end(leftovers, grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--folder", type=Path, default=Path("build/app"))
    args = parser.parse_args(argv)
    notebook = write_app_notebook(args.folder)
    print(f"serving the explorer on http://127.0.0.1:{args.port}/ (Ctrl-C to stop)", flush=True)
    return serve(voila_command(notebook, args.port))


if __name__ == "__main__":
    raise SystemExit(main())
