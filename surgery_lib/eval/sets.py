"""Measure a model on an evaluation set of composites (or any set in the same layout).

    python -m surgery_lib.eval.sets --model toy-vit --set data/composites/seen_instances

Layout of a set: ``images/<n>.jpg``, ``masks/<n>.png`` (instance indices, 0 = background) and
``labels.json`` = ``{"classes": [...], "images": [{"file", "mask", "objects": [{"index", "label"}]}]}``.

Reports zero-shot top-1 (the class token's best class over all classes, prompt ensemble, counted
correct when that class is present in the image) and, for raw CLIP and CLIP Surgery, mIoU, mSC,
pointing game and the share of "opposite" maps (score contrast < 0), per class present in the image
(see :mod:`surgery_lib.eval.metrics`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from surgery_lib.data.records import AnnotatedImage, size_groups
from surgery_lib.data.shipped import read_composite_set
from surgery_lib.eval.metrics import ExplainabilityMeter
from surgery_lib.maps.explain import encode_image_tokens, similarity
from surgery_lib.maps.features import similarity_map, zero_shot_probabilities
from surgery_lib.maps.images import image_normalisation, reference_transform
from surgery_lib.maps.text import Tokenizer, empty_prompt_features, text_features
from surgery_lib.methods import RAW_VS_SURGERY
from surgery_lib.model import DEFAULT_MODEL, class_token


@torch.no_grad()
def raw_vs_surgery_scores(
    model: nn.Module,
    tokenizer: Tokenizer,
    classes: Sequence[str],
    items: Sequence[AnnotatedImage],
    image_size: int,
    batch: int = 16,
) -> dict:
    """Zero-shot top-1 and explainability scores of raw CLIP and CLIP Surgery on ``items``."""
    transform = reference_transform(image_size, *image_normalisation(model))
    texts = text_features(model, tokenizer, classes)
    empty = empty_prompt_features(model, tokenizer)
    meters = {name: ExplainabilityMeter() for name in RAW_VS_SURGERY}
    correct = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = torch.stack([transform(it.image) for it in chunk])
        for name, config in RAW_VS_SURGERY.items():
            tokens, grid = encode_image_tokens(model, images, config)
            if name == "raw":
                top = (class_token(tokens) @ texts.t()).argmax(dim=-1)
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
    items: Sequence[AnnotatedImage],
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
    from surgery_lib.maps.explain import explain
    from surgery_lib.maps.sam import text_points

    transform = reference_transform(image_size, *image_normalisation(model))
    hits: dict[str, dict[str, list[float]]] = {name: {} for name in RAW_VS_SURGERY}
    absent_pass = absent = present_pass = present = 0
    for item in items:
        images = transform(item.image)[None]
        size = (item.image.height, item.image.width)
        for name, config in RAW_VS_SURGERY.items():
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


def _is_class_word(word: str, labels: Sequence[str]) -> bool:
    """Whether a caption token is (a word of) one of ``labels``, e.g. "cat" of "big cat"."""
    return word.strip().lower() in {part.lower() for label in labels for part in label.split()}


@torch.no_grad()
def caption_word_records(
    model: nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[AnnotatedImage],
    captions: Sequence[str],
    image_size: int,
    redundancies: Sequence[str] = ("empty_prompt", "word_mean"),
    special_tokens: bool = False,
) -> list[dict]:
    """Which caption word each method finds most important, and whether it names a class in the image.

    ``special_tokens``: rank the start and end tokens too (``"[start]"``, ``"[end]"``; never a hit), as
    the reference's multimodal visualization does; False: the content tokens only.

    For every image, method (raw CLIP, CLIP Surgery; :data:`RAW_VS_SURGERY`) and redundancy option of
    :func:`~surgery_lib.maps.multimodal.word_similarity`, two importances of the ``(K,)`` words:
    ``"class token"`` (:func:`~surgery_lib.maps.multimodal.word_importance`: the class token's score;
    the same for both methods when the class token is vanilla, and for every redundancy, which
    shifts all words equally) and ``"patch peak"`` (each word's highest patch similarity, i.e. the
    peak of its map).

    Returns:
        records ``{"image", "method", "redundancy", "importance", "word", "hit", "chance", "tokens"}``:
        ``hit`` = the top word is a word of a class present in the image (``items[i].masks``);
        ``chance`` = the share of such words in the caption (the hit rate of a random word); ``tokens``
        = the number of tokens ranked.
    """
    from surgery_lib.maps.multimodal import caption_tokens, word_importance, word_similarity

    if len(captions) != len(items):
        raise ValueError(f"{len(captions)} captions for {len(items)} images")
    transform = reference_transform(image_size, *image_normalisation(model))
    empty = empty_prompt_features(model, tokenizer)
    records = []
    for i, (item, caption) in enumerate(zip(items, captions, strict=True)):
        cap = caption_tokens(model, tokenizer, caption, special_tokens=special_tokens)
        is_class = [_is_class_word(word, list(item.masks)) for word in cap.words]
        images = transform(item.image)[None]
        for method, config in RAW_VS_SURGERY.items():
            tokens, _ = encode_image_tokens(model, images, config)
            for redundancy in redundancies:
                sim = word_similarity(tokens, cap, redundancy, empty)
                scores = {"class token": word_importance(sim)[0], "patch peak": sim[0, 1:].amax(dim=0)}
                for importance, score in scores.items():
                    top = int(score.argmax())
                    records.append(
                        {
                            "image": i,
                            "method": method,
                            "redundancy": redundancy,
                            "importance": importance,
                            "word": cap.words[top],
                            "hit": is_class[top],
                            "chance": sum(is_class) / len(is_class),
                            "tokens": len(cap.words),
                        }
                    )
    return records


@torch.no_grad()
def point_precision_records(
    model: nn.Module,
    tokenizer: Tokenizer,
    classes: Sequence[str],
    items: Sequence[AnnotatedImage],
    image_size: int,
    threshold: float = 0.8,
    batch: int = 16,
) -> list[dict]:
    """Text -> SAM point precision of raw CLIP and CLIP Surgery, per (image, present class, method).

    Similarities are computed over all ``classes`` (as :func:`~surgery_lib.maps.explain.explain` does) and
    turned into points at each image's own size (:func:`~surgery_lib.maps.sam.text_points` for one label);
    only the classes present in an image that are among ``classes`` are scored (so a model can be
    measured on the classes it knows).

    Returns:
        records ``{"image", "class", "method", "precision", "positives"}``; ``precision`` (%) = share
        of the positive points inside the class mask (:func:`~surgery_lib.maps.sam.point_precision`),
        None when there are no positives.
    """
    from surgery_lib.maps.features import similarity_to_points
    from surgery_lib.maps.sam import point_precision

    transform = reference_transform(image_size, *image_normalisation(model))
    texts = text_features(model, tokenizer, classes)
    empty = empty_prompt_features(model, tokenizer)
    records = []
    for group in size_groups(items, batch):
        images = torch.stack([transform(items[i].image) for i in group])
        size = (items[group[0]].image.height, items[group[0]].image.width)
        for method, config in RAW_VS_SURGERY.items():
            tokens, grid = encode_image_tokens(model, images, config)
            sim = similarity(tokens, texts, config, empty)  # as explain(); no maps needed for points
            for b, i in enumerate(group):
                for label, mask in items[i].masks.items():
                    if label not in classes:
                        continue
                    j = list(classes).index(label)
                    points, labels = similarity_to_points(sim[b, 1:, j], size, grid=grid, threshold=threshold)
                    precision = point_precision(points, labels, mask)
                    records.append(
                        {
                            "image": i,
                            "class": label,
                            "method": method,
                            "precision": None if precision is None else 100.0 * precision,
                            "positives": int((labels == 1).sum()),
                        }
                    )
    return records


@torch.no_grad()
def combined_point_records(
    model: nn.Module,
    tokenizer: Tokenizer,
    classes: Sequence[str],
    items: Sequence[AnnotatedImage],
    image_size: int,
    combines: Sequence[str] = ("reference", "mean"),
) -> list[dict]:
    """Point precision of combined targets ``"a+b"`` (the first two classes of each image with two or
    more known classes) under CLIP Surgery, for each ``combine`` rule of
    :func:`~surgery_lib.maps.sam.text_points`.

    Returns:
        records ``{"image", "target", "combine", "precision", "positives", "negatives_inside"}``:
        ``precision`` (%) = share of the positive points inside the union of the two masks;
        ``negatives_inside`` (%) = share of the negative points inside it (lower is better).
    """
    from surgery_lib.maps.explain import explain
    from surgery_lib.maps.sam import point_precision, text_points

    transform = reference_transform(image_size, *image_normalisation(model))
    records = []
    for i, item in enumerate(items):
        known = [label for label in item.masks if label in classes]
        if len(known) < 2:
            continue
        target = "+".join(known[:2])
        size = (item.image.height, item.image.width)
        surgery = RAW_VS_SURGERY["surgery"]
        ex = explain(model, tokenizer, transform(item.image)[None], list(classes), surgery, size)
        mask = item.target_mask(target)
        for combine in combines:
            points, labels = text_points(ex, target, combine=combine)
            precision = point_precision(points, labels, mask)
            inside = point_precision(points, 1 - labels, mask)
            records.append(
                {
                    "image": i,
                    "target": target,
                    "combine": combine,
                    "precision": None if precision is None else 100.0 * precision,
                    "positives": int((labels == 1).sum()),
                    "negatives_inside": None if inside is None else 100.0 * inside,
                }
            )
    return records


@torch.no_grad()
def presence_records(
    model: nn.Module,
    tokenizer: Tokenizer,
    classes: Sequence[str],
    items: Sequence[AnnotatedImage],
    image_size: int,
    batch: int = 16,
) -> list[dict]:
    """The image-level probability of every (image, class) pair, and whether the class is present.

    The probability is :attr:`~surgery_lib.maps.explain.Explanation.image_scores` (softmax over
    ``classes`` of 100 × the class token's cosine similarity), what the presence gate of
    :func:`~surgery_lib.maps.sam.text_points` thresholds; feed the records to
    :func:`~surgery_lib.maps.sam.gate_rates`.

    Returns:
        records ``{"image", "class", "probability", "present"}``, ``len(items) × len(classes)``.
    """
    transform = reference_transform(image_size, *image_normalisation(model))
    texts = text_features(model, tokenizer, classes)
    records = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        tokens, _ = encode_image_tokens(
            model, torch.stack([transform(it.image) for it in chunk]), RAW_VS_SURGERY["raw"]
        )
        probs = zero_shot_probabilities(class_token(tokens), texts)
        for b, item in enumerate(chunk):
            for j, label in enumerate(classes):
                records.append(
                    {
                        "image": start + b,
                        "class": label,
                        "probability": float(probs[b, j]),
                        "present": label in item.masks,
                    }
                )
    return records


def main(argv: Sequence[str] | None = None) -> int:
    from surgery_lib.model import load_clip

    parser = argparse.ArgumentParser(
        prog="python -m surgery_lib.eval.sets", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
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
        classes, items = read_composite_set(root, args.limit)
        scores = raw_vs_surgery_scores(clip.model, clip.tokenizer, classes, items, clip.image_size)
        results[str(root)] = scores
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
