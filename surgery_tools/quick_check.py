"""A fast, fixed zero-shot check of a shipped model, recorded next to its weights.

``quick_zero_shot(model, tokenizer, image_size)`` is the zero-shot top-1 (%) on the first
``QUICK_IMAGES`` images of ``data/composites/seen_instances``; ``python -m surgery_tools.quick_check
toy-vit`` records it (and the full evaluation) in ``data/models/<name>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch import nn

from surgery_lib.data.shipped import read_composite_set
from surgery_lib.eval.sets import evaluate
from surgery_lib.model.shipped import WEIGHTS_DIR
from surgery_lib.paths import data_dir

QUICK_IMAGES = 40


def quick_zero_shot(model: nn.Module, tokenizer, image_size: int, root: Path | None = None) -> float:
    root = root or data_dir() / "composites" / "seen_instances"
    classes, items = read_composite_set(root, QUICK_IMAGES)
    return float(evaluate(model, tokenizer, classes, items, image_size)["zero_shot_top1"])


def record(name: str) -> dict:
    """Measure ``name``'s shipped weights and write the figures into its metadata JSON."""
    from surgery_lib.model.loading import load_clip

    clip = load_clip(name)
    meta_path = WEIGHTS_DIR / f"{name}.json"
    meta = json.loads(meta_path.read_text())
    meta["quick_check"] = {
        "set": "seen_instances",
        "images": QUICK_IMAGES,
        "zero_shot_top1": quick_zero_shot(clip.model, clip.tokenizer, clip.image_size),
    }
    quality = {}
    for split in ("seen_instances", "new_instances"):
        classes, items = read_composite_set(data_dir() / "composites" / split)
        quality[split] = evaluate(clip.model, clip.tokenizer, classes, items, clip.image_size)
    meta["quality"] = quality
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


if __name__ == "__main__":
    for model_name in sys.argv[1:] or ["toy-vit"]:
        print(json.dumps(record(model_name)["quick_check"]))
