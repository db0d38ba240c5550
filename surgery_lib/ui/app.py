"""The explorers as a classroom web app without code cells (``make app``): Voilà serves a generated
notebook that shows the :class:`~surgery_lib.ui.widgets.Explorer` and the
:class:`~surgery_lib.ui.widgets.AttentionExplorer` on the shipped composites, on localhost.

    python -m surgery_lib.ui.app --port 8866            # then open http://127.0.0.1:8866/
    SURGERY_MODEL=ViT-B-16 SURGERY_PRETRAINED=openai python -m surgery_lib.ui.app

Students see the controls and the maps only; the code runs in the server's kernel.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_INTRO = """# Where does CLIP look? Raw CLIP vs CLIP Surgery

Pick a method, tick or untick each modification of CLIP Surgery and watch the similarity maps change.
The second panel shows where one image token sends its attention under each kind of attention (q-k is
CLIP's own; v-v is the surgery's). The model is the one named below the maps; the images are held-out
composites with known object masks."""

_CODE = """import os
from surgery_lib.data.shipped import default_source, example_images
from surgery_lib.model.loading import load_clip
from surgery_lib.model.shipped import DEFAULT_MODEL
from surgery_lib.ui.widgets import AttentionExplorer, Explorer

MODEL = os.environ.get("SURGERY_MODEL", DEFAULT_MODEL)
loaded = load_clip(MODEL, pretrained=os.environ.get("SURGERY_PRETRAINED", "default"))
classes, items = example_images(os.environ.get("SURGERY_IMAGES") or default_source(MODEL), limit=12)
labels = list(dict.fromkeys(label for item in items[:3] for label in item.labels))[:3] or classes[:3]
Explorer(loaded, items, labels, selected=[item.name for item in items[:3]])"""

_ATTENTION = "AttentionExplorer(loaded, items[0].image, block=-1)"


def write_app_notebook(folder: Path) -> Path:
    """Write the app's notebook (``explorer.ipynb``) into ``folder`` and return its path."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell(_INTRO),
        nbformat.v4.new_code_cell(_CODE),
        nbformat.v4.new_markdown_cell("## Attention of one token"),
        nbformat.v4.new_code_cell(_ATTENTION),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--folder", type=Path, default=Path("build/app"))
    args = parser.parse_args(argv)
    notebook = write_app_notebook(args.folder)
    print(f"serving the explorer on http://127.0.0.1:{args.port}/ (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(voila_command(notebook, args.port))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
