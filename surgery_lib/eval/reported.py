"""The numbers the papers report (open-vocabulary segmentation mIoU %, CLIP ViT-B/16, OpenAI weights), read
from a data file with their sources — never typed into code: ``surgery_lib/eval/data/reported_miou.csv``
(from ``../shared/METHODS.md`` §10; a blank cell is a number the source does not give).

The eight benchmarks, in the papers' order, under this project's dataset names: :data:`BENCHMARKS`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS: tuple[str, ...] = (
    "voc",
    "context",
    "coco_object",
    "voc20",
    "context59",
    "coco_stuff",
    "cityscapes",
    "ade20k",
)
"""VOC21, Context60, COCO-Object, VOC20, Context59, COCO-Stuff171, Cityscapes, ADE20K (the papers' table
order), as :mod:`surgery_lib.data.datasets` names them."""

REPORTED_FILE = Path(__file__).resolve().parent / "data" / "reported_miou.csv"


@dataclass(frozen=True)
class Reported:
    """One reported row: a method's numbers under one protocol, with where they come from.

    Attributes:
        method: the registry name of the method the row reports.
        row: the row's label (the method and the table it was read from).
        miou: benchmark name (:data:`BENCHMARKS`) -> mIoU %, only where the source gives one.
        avg8: the source's mean over the eight benchmarks (``None``: not given).
        protocol: whose inference protocol the numbers were measured under.
        source: the publication / README and table.
    """

    method: str
    row: str
    miou: dict[str, float]
    avg8: float | None
    protocol: str
    source: str


def reported_rows(path: Path = REPORTED_FILE) -> list[Reported]:
    """Every row of the reported-numbers file, in its order.

    Raises:
        ValueError: a row without a method, row label or source, or a cell that is not a number.
    """
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line, record in enumerate(csv.DictReader(handle), start=2):
            if not (record.get("method") and record.get("row") and record.get("source")):
                raise ValueError(f"{path}:{line}: a reported row needs a method, a row label and a source")
            try:
                miou = {b: float(record[b]) for b in BENCHMARKS if record.get(b, "").strip()}
                avg8 = float(record["avg8"]) if record.get("avg8", "").strip() else None
            except ValueError as error:
                raise ValueError(f"{path}:{line}: {error}") from None
            rows.append(
                Reported(record["method"], record["row"], miou, avg8, record["protocol"], record["source"])
            )
    return rows


def reported_for(method: str, path: Path = REPORTED_FILE) -> list[Reported]:
    """The reported rows of ``method`` (a registry name; several protocols may each have a row)."""
    return [r for r in reported_rows(path) if r.method == method]
