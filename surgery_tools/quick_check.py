"""A fast, fixed zero-shot check of a shipped model, recorded next to its weights.

``quick_zero_shot(model, tokenizer, image_size)`` is the zero-shot top-1 (%) on the first
``QUICK_IMAGES`` images of ``data/composites/seen_instances``; ``python -m surgery_tools.quick_check
toy-vit`` records it (and the full evaluation) in the metadata JSON next to the shipped weights.

Weights that are not shipped (yet), e.g. an export of ``surgery_tools.train``, are measured with::

    python -m surgery_tools.quick_check toy-vit-v2 --checkpoint build/toy-vit-v2/toy-vit-v2.safetensors

which writes the figures into the JSON next to that file (``build/toy-vit-v2/toy-vit-v2.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from surgery_lib.data.shipped import read_composite_set
from surgery_lib.eval.sets import raw_vs_surgery_scores
from surgery_lib.model.shipped import WEIGHTS_DIR
from surgery_lib.paths import data_dir

QUICK_IMAGES = 40


def quick_zero_shot(model: nn.Module, tokenizer, image_size: int, root: Path | None = None) -> float:
    root = root or data_dir() / "composites" / "seen_instances"
    classes, items = read_composite_set(root, QUICK_IMAGES)
    return float(raw_vs_surgery_scores(model, tokenizer, classes, items, image_size)["zero_shot_top1"])


def record(name: str, checkpoint: Path | None = None) -> dict:
    """Measure ``name``'s shipped weights (or the weights file ``checkpoint``) and write the figures into
    the metadata JSON next to them."""
    from surgery_lib.model.loading import load_clip

    clip = load_clip(name, checkpoint=checkpoint)
    meta_path = Path(checkpoint).with_suffix(".json") if checkpoint else WEIGHTS_DIR / f"{name}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"arch": name}
    meta["quick_check"] = {
        "set": "seen_instances",
        "images": QUICK_IMAGES,
        "zero_shot_top1": quick_zero_shot(clip.model, clip.tokenizer, clip.image_size),
    }
    quality = {}
    for split in ("seen_instances", "new_instances"):
        classes, items = read_composite_set(data_dir() / "composites" / split)
        quality[split] = raw_vs_surgery_scores(clip.model, clip.tokenizer, classes, items, clip.image_size)
    meta["quality"] = quality
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m surgery_tools.quick_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("names", nargs="*", default=["toy-vit"], help="model configs (default: toy-vit)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights file of the one model named")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and len(args.names) != 1:
        parser.error("--checkpoint needs exactly one model name")
    for model_name in args.names:
        print(json.dumps(record(model_name, args.checkpoint)["quick_check"]))


if __name__ == "__main__":
    main()
