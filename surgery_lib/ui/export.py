"""Figure export from the explorers: unique file stems, PNG/PDF with a JSON sidecar of model, weights,
config, vocabulary and labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from surgery_lib.config import GradientConfig
from surgery_lib.model import LoadedCLIP
from surgery_lib.ui import viz
from surgery_lib.ui.explorer_base import CUSTOM, Method

# ---------------------------------------------------------------------------------------------- export
_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's SHA-256 (cached per path, size and modification time: weights files are large)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _weights(loaded: LoadedCLIP) -> dict:
    """What identifies the weights: ``{"tag": ...}`` for an open_clip pretrained tag, ``{"file": ...,
    "sha256": ...}`` for a weights file (the shipped toy weights, a checkpoint), ``{"tag": None}`` for
    random weights."""
    source = loaded.pretrained
    if source is None:
        return {"tag": None, "note": "random weights"}
    path = Path(source)
    if path.is_file():
        return {"file": str(path), "sha256": _sha256(path)}
    return {"tag": str(source)}


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("surgery_lib")
    except PackageNotFoundError:
        return "unknown"


def export_metadata(
    loaded: LoadedCLIP,
    method_name: str,
    method: Method,
    images: Sequence[str],
    labels: Sequence[str],
    vocabulary: Sequence[str],
    **extra: object,
) -> dict:
    """The JSON sidecar of an exported figure: model, weights (tag, or file and SHA-256), method and
    config (``dataclasses.asdict``), vocabulary, labels, image names and the library version."""
    return {
        "model": loaded.name,
        "weights": _weights(loaded),
        "method": method_name,
        "config": dataclasses.asdict(method),
        "method_kind": "gradient" if isinstance(method, GradientConfig) else "dense",
        "vocabulary": list(vocabulary),
        "labels": list(labels),
        "image": images[0] if len(images) == 1 else list(images),
        "images": list(images),
        "library_version": _library_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


_STEM_CHARS = 120


def _safe_part(text: str) -> str:
    """``text`` with the characters :func:`~surgery_lib.ui.viz.save_figure` keeps in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


def unique_stem(folder: Path, stem: str, suffixes: Sequence[str] = ("png", "pdf", "json")) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, … : the first for which no ``<stem>.<suffix>`` exists in
    ``folder``; its JSON file is created (empty) at once, so that two exports never pick the same.

    Names use the characters :func:`~surgery_lib.ui.viz.save_figure` keeps (others become ``_``)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _safe_part(stem)[:_STEM_CHARS]
    for n in range(1, 100_000):
        candidate = base if n == 1 else f"{base}-{n}"
        if any((folder / f"{candidate}.{s}").exists() for s in suffixes):
            continue
        try:
            with open(folder / f"{candidate}.json", "x"):
                pass
        except FileExistsError:  # taken meanwhile by another export
            continue
        return candidate
    raise FileExistsError(f"no free file name for {base!r} in {folder}")  # pragma: no cover


def _export(fig, folder: Path, stem: str, metadata: dict) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``.pdf`` (a new name, never overwriting) with a JSON sidecar
    holding ``metadata`` (and what :func:`~surgery_lib.ui.viz.save_figure` records: the files, the
    command, the ``SURGERY_*`` parameters); returns the three paths. The figure stays open."""
    chosen = unique_stem(folder, stem)
    sidecar = folder / f"{chosen}.json"
    sidecar.write_text(json.dumps(metadata, indent=2, ensure_ascii=False, default=str) + "\n")
    # save_figure merges its own record into the existing sidecar (whose keys win); keep_open: a
    # button's callback must not display the figure in the notebook
    paths = viz.save_figure(fig, chosen, folder, keep_open=True)
    return [*paths, sidecar]


def _figure_folder(figure_dir: str | os.PathLike | None) -> Path:
    return Path(figure_dir or os.environ.get(viz.FIGURES_ENV, "figures"))


def _stem(images: Sequence[str], labels: Sequence[str], method_name: str, method: Method) -> str:
    """``<images>_<labels>_<method>``; a custom config is named by a short hash of its fields."""
    if method_name == CUSTOM:
        digest = hashlib.sha1(repr(dataclasses.asdict(method)).encode()).hexdigest()[:8]
        method_name = f"{CUSTOM}-{digest}"
    parts = ["-".join(_safe_part(n) for n in images), "-".join(_safe_part(x) for x in labels), method_name]
    shown = [p[:48] for p in parts[:2]] + [parts[2]]
    return "_".join(_safe_part(p) for p in shown)
