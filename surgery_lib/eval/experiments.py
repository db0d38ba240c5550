"""Many evaluation runs as one table: methods × backbones × datasets (the notebooks' view), the offline
datasets, the per-image values a paired test uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from surgery_lib.data.datasets import DATASETS
from surgery_lib.eval.runner import _table_row, evaluate, image_records, run_folder_name
from surgery_lib.model import UnsupportedModelError, load_clip, pretrained_for
from surgery_lib.paths import data_dir

OFFLINE_DATASETS: dict[str, tuple[str, str]] = {
    "composites-seen": ("composites", "composites/seen_instances"),
    "composites-new": ("composites", "composites/new_instances"),
    "real": ("real", "real"),
}
"""The evaluation sets shipped in ``data/`` (label -> (dataset name, folder under the data folder))."""


def _offline_datasets() -> dict[str, tuple[str, Path]]:
    root = data_dir()
    return {label: (name, root / folder) for label, (name, folder) in OFFLINE_DATASETS.items()}


def dataset_specs(spec: str = "") -> dict[str, tuple[str, Path]]:
    """Datasets to evaluate, from ``"NAME=ROOT,NAME=ROOT"`` (NAME in :data:`DATASETS`; the label is
    NAME), or the shipped :data:`OFFLINE_DATASETS` when ``spec`` is empty."""
    if not spec.strip():
        return _offline_datasets()
    specs = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, root = part.partition("=")
        if not sep or name not in DATASETS:
            raise ValueError(f"bad dataset entry {part!r}: expected NAME=ROOT with NAME one of {DATASETS}")
        specs[name] = (name, Path(root).expanduser())
    return specs


def evaluation_table(
    task: str,
    backbones: Sequence[str],
    datasets: dict[str, tuple[str, Path]],
    out_dir: str | Path,
    methods: Sequence[str] = ("raw", "surgery"),
    pretrained: str = "default",
    presets: dict[str, str | None] | None = None,
    skip_unsupported: bool = False,
    **options: object,
) -> list[dict]:
    """One :func:`evaluate` per backbone × dataset × method (each resumable in its own folder under
    ``out_dir``); rows of ``{"backbone", "dataset", "method", "preset", <summary>, <metric>_low,
    <metric>_high, "s_per_image", "out"}`` (the limits of the 95 % bootstrap interval over images of
    each metric).

    Args:
        methods: names of :func:`resolve_eval_method` (dense methods, ``+fs`` / ``-fs`` variants,
            gradient explainers and nulls for ``explain``).
        presets: a ``protocol_preset`` per method name (a method missing or ``None``: the options
            alone, the common protocol); the run's folder name then ends in ``@<preset>``.
        skip_unsupported: leave out (no row) a method that has no variant for a backbone's image tower
            (:class:`~surgery_lib.model.adapters.UnsupportedModelError`) instead of raising.
    """
    device = str(options.pop("device", "auto"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    presets = dict(presets or {})
    rows = []
    for backbone in backbones:
        tag = pretrained_for(backbone, pretrained)
        loaded = load_clip(backbone, pretrained=tag, device=device)
        for label, (name, root) in datasets.items():
            for method in methods:
                preset = presets.get(method)
                folder = run_folder_name(backbone, tag, label, method) + (f"@{preset}" if preset else "")
                out = Path(out_dir) / task / folder
                extra = {"protocol_preset": preset} if preset else {}
                try:
                    result = evaluate(
                        task, name, root, out, backbone, tag, method, loaded, quiet=True, progress=True,
                        **extra, **options,
                    )  # fmt: skip
                except UnsupportedModelError:
                    if not skip_unsupported:
                        raise
                    continue
                row = {"backbone": backbone, "dataset": label, "method": method, "preset": preset}
                rows.append({**row, **_table_row(result), "images": result["images"], "out": str(out)})
    return rows


def image_values(out: str | Path, key: str = "sc", limit: int | None = None) -> dict[int, float]:
    """Per image of an ``explain`` run in ``out``, the mean of one pair score over its pairs (``"sc"``:
    score contrast ×100 as the summary's mSC; ``"iou"`` and ``"hit"`` in %): ``{image index: value}``;
    images without a scored pair are left out, and with ``limit`` the images from ``limit`` on (a folder
    a larger run shared holds more records than a table row used). The unit of a paired test between
    two methods run on the same images (:func:`surgery_lib.eval.tables.paired_test`)."""
    if key not in ("sc", "iou", "hit"):
        raise ValueError(f"key must be one of 'sc', 'iou', 'hit', got {key!r}")
    scale = 1.0 if key == "sc" else 100.0
    values = {}
    for record in image_records(out):
        if "pairs" not in record:
            raise ValueError(f"{out} is not an explain run (its records have no 'pairs')")
        if record["pairs"] and (limit is None or record["index"] < limit):
            values[record["index"]] = scale * float(np.mean([p[key] for p in record["pairs"]]))
    return values
