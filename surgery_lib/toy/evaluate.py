"""Measure a model on an evaluation set of composites (or any set in the same layout).

    python -m surgery_lib.toy.evaluate --model toy-vit --set data/composites/seen_instances

Layout of a set: ``images/<n>.jpg``, ``masks/<n>.png`` (instance indices, 0 = background) and
``labels.json`` = ``{"classes": [...], "images": [{"file", "mask", "objects": [{"index", "label"}]}]}``.

Reports zero-shot top-1 (the class token's best class over all classes, prompt ensemble, counted
correct when that class is present in the image) and, for raw CLIP and CLIP Surgery, mIoU, mSC,
pointing game and the share of "opposite" maps (score contrast < 0), per class present in the image
(see :mod:`surgery_lib.metrics`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import SurgeryConfig
from ..explain import encode_image_tokens, similarity
from ..features import similarity_map
from ..images import reference_transform
from ..metrics import ExplainabilityMeter
from ..text import Tokenizer, empty_prompt_features, text_features

METHODS = {"raw": SurgeryConfig.off(), "surgery": SurgeryConfig.paper()}


@dataclass
class EvalItem:
    image: Image.Image
    masks: dict[str, np.ndarray]  # class -> (H, W) bool, union of its instances


def read_set(root: Path, limit: int | None = None) -> tuple[list[str], list[EvalItem]]:
    """Read an evaluation set (see the module doc); errors name the first bad file."""
    labels_path = root / "labels.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"not an evaluation set: {labels_path} is missing")
    meta = json.loads(labels_path.read_text())
    items = []
    for entry in meta["images"][:limit]:
        image_path, mask_path = root / "images" / entry["file"], root / "masks" / entry["mask"]
        for path in (image_path, mask_path):
            if not path.is_file():
                raise FileNotFoundError(f"evaluation set {root}: missing {path}")
        with Image.open(image_path) as im:
            image = im.convert("RGB")
        with Image.open(mask_path) as m:
            instance = np.array(m)
        if instance.shape != (image.height, image.width):
            raise ValueError(f"{mask_path}: mask {instance.shape} does not match image {image.size[::-1]}")
        masks: dict[str, np.ndarray] = {}
        for obj in entry["objects"]:
            part = instance == obj["index"]
            masks[obj["label"]] = masks.get(obj["label"], np.zeros_like(part)) | part
        items.append(EvalItem(image, {k: v for k, v in masks.items() if v.any()}))
    return list(meta["classes"]), items


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer: Tokenizer,
    classes: Sequence[str],
    items: Sequence[EvalItem],
    image_size: int,
    batch: int = 16,
) -> dict:
    """Zero-shot top-1 and explainability scores of raw CLIP and CLIP Surgery on ``items``."""
    transform = reference_transform(image_size)
    texts = text_features(model, tokenizer, classes)
    empty = empty_prompt_features(model, tokenizer)
    meters = {name: ExplainabilityMeter() for name in METHODS}
    correct = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = torch.stack([transform(it.image) for it in chunk])
        for name, config in METHODS.items():
            tokens, grid = encode_image_tokens(model, images, config)
            if name == "raw":
                top = (tokens[:, 0] @ texts.t()).argmax(dim=-1)
                correct += sum(classes[int(t)] in it.masks for t, it in zip(top, chunk, strict=True))
            sim = similarity(tokens, texts, config, empty)
            for b, item in enumerate(chunk):
                h, w = item.image.height, item.image.width
                maps = similarity_map(sim[b : b + 1, 1:], (h, w), grid)[0]
                for label, mask in item.masks.items():
                    meters[name].add(label, maps[:, :, classes.index(label)], torch.from_numpy(mask))
    result = {"images": len(items), "classes": len(classes), "zero_shot_top1": 100.0 * correct / len(items)}
    for name, meter in meters.items():
        result[name] = meter.summary()
    return result


@torch.no_grad()
def point_scores(
    model: nn.Module,
    tokenizer: Tokenizer,
    classes: Sequence[str],
    items: Sequence[EvalItem],
    image_size: int,
    min_probability: float = 0.05,
) -> dict:
    """Text -> SAM point prompts on ``items``, raw CLIP vs CLIP Surgery.

    ``point_precision``: share of positive points inside the class mask, per (image, present class)
    averaged per class then over classes. The presence gate (image-level probability of a label
    ≥ ``min_probability``) is the same for both methods, since the class token is vanilla:
    ``gate_false_positive`` = share of (image, absent class) pairs that still get points,
    ``gate_recall`` = share of (image, present class) pairs that keep their points.
    """
    from ..explain import explain
    from ..sam import text_points

    transform = reference_transform(image_size)
    hits: dict[str, dict[str, list[float]]] = {name: {} for name in METHODS}
    absent_pass = absent = present_pass = present = 0
    for item in items:
        images = transform(item.image)[None]
        size = (item.image.height, item.image.width)
        for name, config in METHODS.items():
            ex = explain(model, tokenizer, images, list(classes), config, size=size)
            for label, mask in item.masks.items():
                points, labels = text_points(ex, label)
                pos = points[labels == 1]
                if len(pos):
                    inside = mask[pos[:, 1].numpy(), pos[:, 0].numpy()]
                    hits[name].setdefault(label, []).append(float(inside.mean()))
            if name == "raw":
                for label in classes:
                    kept = len(text_points(ex, label, min_probability=min_probability)[0]) > 0
                    if label in item.masks:
                        present, present_pass = present + 1, present_pass + kept
                    else:
                        absent, absent_pass = absent + 1, absent_pass + kept
    result: dict = {"min_probability": min_probability}
    for name, per_class in hits.items():
        means = [sum(v) / len(v) for v in per_class.values()]
        result[name] = {"point_precision": 100.0 * sum(means) / len(means)}
    result["gate_false_positive"] = 100.0 * absent_pass / max(1, absent)
    result["gate_recall"] = 100.0 * present_pass / max(1, present)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from ..loading import load_clip

    parser = argparse.ArgumentParser(
        prog="python -m surgery_lib.toy.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="toy-vit")
    parser.add_argument("--pretrained", default="default")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument(
        "--set",
        type=Path,
        nargs="+",
        default=[Path("data/composites/seen_instances"), Path("data/composites/new_instances")],
    )
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--points", action="store_true", help="also measure text -> SAM point prompts")
    args = parser.parse_args(argv)
    clip = load_clip(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    results = {}
    for root in args.set:
        classes, items = read_set(root, args.limit)
        results[str(root)] = evaluate(clip.model, clip.tokenizer, classes, items, clip.image_size)
        if args.points:
            results[str(root)]["points"] = point_scores(
                clip.model, clip.tokenizer, classes, items, clip.image_size
            )
        print(f"{root}: {json.dumps(results[str(root)], indent=1)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
