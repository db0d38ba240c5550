"""The downstream tasks measured against their chance levels (notebooks 10 and 11): where a caption's
class word peaks against the object's area share, point precision against the mask's area share, and
the presence gate chosen on one half of the pairs and judged on the other."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from surgery_lib.config import SurgeryConfig
from surgery_lib.eval.metrics import bootstrap_ci
from surgery_lib.eval.nulls import area_chance
from surgery_lib.maps.explain import encode_image_tokens
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.images import image_normalisation, reference_transform
from surgery_lib.maps.multimodal import WordRedundancy, caption_tokens, word_similarity
from surgery_lib.maps.sam import choose_gate, gate_rates, split_halves
from surgery_lib.maps.text import Tokenizer, empty_prompt_features
from surgery_lib.model import patch_tokens


def _class_word_position(words: Sequence[str], label: str) -> int | None:
    """The first caption token that is a word of ``label`` (e.g. "cat" of "big cat"), or None."""
    parts = {part.lower() for part in label.split()}
    return next((k for k, word in enumerate(words) if word.strip().lower() in parts), None)


@torch.no_grad()
def word_pointing_records(
    model: nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[object],
    captions: Sequence[str],
    image_size: int,
    methods: Mapping[str, SurgeryConfig],
    redundancy: WordRedundancy = "empty_prompt",
) -> list[dict]:
    """A pointing game for caption words (this project's measure): for every image, every class in it
    that its caption names, and every method, does the peak of that word's map land on the object?

    The word's map is the patch rows of :func:`word_similarity`, upsampled bilinearly to the image's
    size (:func:`~surgery_lib.maps.features.similarity_map`); its peak is the pixel of the highest value
    (the first on ties); the word is the caption's first token that is a word of the class name.

    Args:
        items: annotated images (``.image`` a PIL image, ``.masks`` class -> ``(H, W)`` bool mask).
        captions: one caption per item.
        methods: name -> config of the image tokens.
    Returns:
        records ``{"image", "class", "word", "method", "hit", "chance"}``: ``hit`` 1.0 / 0.0; ``chance``
        = the object's share of the image, the hit rate of a uniformly random point
        (:func:`surgery_lib.eval.nulls.area_chance`).
    """

    if len(captions) != len(items):
        raise ValueError(f"{len(captions)} captions for {len(items)} images")
    transform = reference_transform(image_size, *image_normalisation(model))
    empty = empty_prompt_features(model, tokenizer)
    records = []
    for i, (item, caption) in enumerate(zip(items, captions, strict=True)):
        cap = caption_tokens(model, tokenizer, caption)
        named = {}
        for label, mask in item.masks.items():
            k = _class_word_position(cap.words, label)
            if k is not None:
                named[label] = (k, torch.as_tensor(np.asarray(mask, dtype=bool)))
        if not named:
            continue
        size = (item.image.height, item.image.width)
        images = transform(item.image)[None]
        for method, config in methods.items():
            tokens, grid = encode_image_tokens(model, images, config)
            sim = patch_tokens(word_similarity(tokens, cap, redundancy, empty)).cpu()
            maps = similarity_map(sim, size, grid)[0]  # (H, W, K)
            for label, (k, mask) in named.items():
                flat = int(maps[:, :, k].flatten().argmax())
                y, x = divmod(flat, size[1])
                records.append(
                    {
                        "image": i,
                        "class": label,
                        "word": cap.words[k],
                        "method": method,
                        "hit": float(mask[y, x]),
                        "chance": area_chance(mask),
                    }
                )
    return records


def held_out_gate(
    probabilities: torch.Tensor | np.ndarray | list[float],
    present: torch.Tensor | np.ndarray | list[bool],
    groups: Sequence[object],
    thresholds: list[float],
    seed: int = 0,
) -> dict[str, float]:
    """The presence gate chosen on one half of the pairs and judged on the other: the pairs are split by
    group (:func:`split_halves`, e.g. by image), the threshold with the best recall − false positives
    is chosen on half A (:func:`choose_gate`) and its rates measured on half B, with 95 % percentile
    bootstrap intervals over B's pairs (:func:`~surgery_lib.eval.metrics.bootstrap_ci`).

    Returns:
        ``{"threshold", "tuned_recall", "tuned_false_positive", "recall", "recall_low", "recall_high",
        "false_positive", "false_positive_low", "false_positive_high", "tuning_pairs", "held_out_pairs"}``
        (rates in %; the untagged ones are half B's).
    """
    probs = np.asarray(probabilities, dtype=float).reshape(-1)
    there = np.asarray(present, dtype=bool).reshape(-1)
    if not (len(probs) == len(there) == len(groups)):
        raise ValueError(f"{len(probs)} probabilities, {len(there)} presence flags, {len(groups)} groups")
    tune = split_halves(groups, seed)
    threshold = choose_gate(probs[tune], there[tune], thresholds)
    tuned = gate_rates(probs[tune], there[tune], [threshold])[0]
    test_p, test_t = probs[~tune], there[~tune]
    out = {
        "threshold": threshold,
        "tuned_recall": tuned["recall"],
        "tuned_false_positive": tuned["false_positive"],
        "tuning_pairs": int(tune.sum()),
        "held_out_pairs": int((~tune).sum()),
    }
    for key, passes in (
        ("recall", test_p[test_t] >= threshold),
        ("false_positive", test_p[~test_t] >= threshold),
    ):
        if passes.size:
            mean, low, high = bootstrap_ci(100.0 * passes.astype(float))
        else:
            mean = low = high = float("nan")
        out |= {key: mean, f"{key}_low": low, f"{key}_high": high}
    return out


def mask_area_shares(records: Sequence[dict], items: Sequence[object]) -> list[float]:
    """The chance level of point precision for each record ``{"image", "class", ...}`` (as
    :func:`surgery_lib.eval.sets.point_precision_records` returns): the share (%) of the image covered
    by the class mask ``items[image].masks[class]`` — a uniformly random point falls in the mask with
    that probability (:func:`surgery_lib.eval.nulls.area_chance`)."""

    return [100.0 * area_chance(items[int(r["image"])].masks[r["class"]]) for r in records]
