"""The paper's analyses as plain functions over a model and annotated images (notebooks 01–05).

Each function returns records (lists of dicts, one per measured item) that a notebook turns into a
table or a plot; nothing here draws. Masks come from :class:`~surgery_lib.data.records.AnnotatedImage`.

* :func:`map_records` — per (image, class, method): IoU, score contrast, pointing hit (notebook 01, 03).
* :func:`attention_locality` — per (block, kind, query region): attention mass kept in the query's own
  region (object or background) (notebook 02).
* :func:`contribution_records` — per block and part (attention / FFN): its share of the
  foreground-minus-background similarity (notebook 03).
* :func:`redundancy_records` — per (image, token): how much of the image-text feature products all
  classes share, and how close the empty prompt's product is to that shared part (notebook 04).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.eval.metrics import map_scores
from surgery_lib.maps.explain import configured_similarity, encode_image_tokens
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.text import empty_prompt_features, text_features
from surgery_lib.model.adapters import ViTAdapter, adapter_for
from surgery_lib.model.introspection import attention_maps, residual_contributions
from surgery_lib.model.loading import LoadedCLIP


def _batch(loaded: LoadedCLIP, item: AnnotatedImage) -> torch.Tensor:
    return loaded.reference_preprocess(item.image).unsqueeze(0)


def _scorable(mask: np.ndarray) -> bool:
    return 0 < int(mask.sum()) < mask.size


@torch.no_grad()
def maps_for(
    loaded: LoadedCLIP, item: AnnotatedImage, labels: Sequence[str], config: SurgeryConfig
) -> torch.Tensor:
    """``(H, W, T)`` min-max normalised maps of ``labels`` at the image's own size."""
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = text_features(model, tokenizer, labels)
    tokens, grid = encode_image_tokens(model, _batch(loaded, item), config)
    sim = configured_similarity(model, tokenizer, tokens, texts, config)
    return similarity_map(sim[:, 1:], (item.image.height, item.image.width), grid)[0]


def map_records(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    methods: Mapping[str, SurgeryConfig],
) -> list[dict]:
    """Explainability scores of each method's maps against each ground-truth mask.

    Maps are computed over all ``classes`` (as in the paper's protocol: the dataset's class list),
    then each class present in an image is scored (see :mod:`surgery_lib.eval.metrics`).

    Returns:
        records ``{"image", "class", "method", "iou", "score_contrast", "pointing_hit", "opposite"}``.
    """
    records = []
    for item in items:
        for method, config in methods.items():
            maps = maps_for(loaded, item, classes, config)
            for label, mask in item.masks.items():
                if label not in classes or not _scorable(mask):
                    continue
                s = map_scores(maps[:, :, list(classes).index(label)], torch.from_numpy(mask))
                records.append(
                    {
                        "image": item.name,
                        "class": label,
                        "method": method,
                        "iou": 100.0 * s.iou,
                        "score_contrast": s.score_contrast,
                        "pointing_hit": s.pointing_hit,
                        "opposite": s.score_contrast < 0,
                    }
                )
    return records


def summarise(records: Sequence[dict], by: Sequence[str] = ("method",)) -> list[dict]:
    """Per group: mIoU, mSC and pointing game averaged per class then over classes, and the fraction
    of (image, class) pairs whose map is opposite (SC < 0), all in percent except mSC (×100 units)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    rows = []
    for key, rs in groups.items():
        per_class: dict[str, list[dict]] = {}
        for r in rs:
            per_class.setdefault(r["class"], []).append(r)

        def over_classes(field: str, per_class: dict[str, list[dict]] = per_class) -> float:
            return float(np.mean([np.mean([r[field] for r in v]) for v in per_class.values()]))

        row = dict(zip(by, key, strict=True))
        row.update(
            mIoU=over_classes("iou"),
            mSC=over_classes("score_contrast"),
            pointing_game=100.0 * over_classes("pointing_hit"),
            opposite_rate=100.0 * float(np.mean([r["opposite"] for r in rs])),
            pairs=len(rs),
        )
        rows.append(row)
    return rows


def _cell_regions(item: AnnotatedImage, grid: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    """Per token cell the index of the class covering most of it (0 = background), ``(h·w,)``."""
    h, w = grid
    names = list(item.masks)
    stack = torch.zeros(1, len(names) + 1, item.image.height, item.image.width)
    for i, name in enumerate(names):
        stack[0, i + 1] = torch.from_numpy(item.masks[name]).float()
    stack[0, 0] = (stack[0, 1:].sum(0) == 0).float()
    cover = F.adaptive_avg_pool2d(stack, (h, w))[0]  # (1 + classes, h, w) area fractions
    return cover.argmax(0).flatten(), ["background", *names]


@torch.no_grad()
def attention_locality(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    blocks: Sequence[int],
    kinds: Sequence[str] = ("qk", "qq", "kk", "vv"),
    queries_per_region: int = 8,
) -> list[dict]:
    """How much attention stays in the query token's own region, per block and attention kind.

    For each image, up to ``queries_per_region`` query patches are taken evenly from each region
    (each object class, and the background; a patch belongs to the region covering most of it). The
    measure is the attention mass (heads averaged, class token excluded and the rest renormalised)
    on patches of the same region, and the same region's share of all patches (the chance level).

    Returns:
        records ``{"image", "block", "kind", "region" ("object"/"background"), "own_mass", "chance"}``.
    """
    records = []
    for item in items:
        batch = _batch(loaded, item)
        for block in blocks:
            weights, grid = attention_maps(loaded.model, batch, block, None, kinds)
            region_of, _ = _cell_regions(item, grid)
            for label, cells in _query_cells(region_of, queries_per_region):
                for cell in cells:
                    own = region_of == region_of[cell]
                    for kind, a in weights.items():
                        patch = a[0, :, 1 + cell, 1:].mean(dim=0)
                        patch = patch / patch.sum()
                        records.append(
                            {
                                "image": item.name,
                                "block": block,
                                "kind": kind,
                                "region": label,
                                "own_mass": float(patch[own].sum()),
                                "chance": float(own.float().mean()),
                            }
                        )
    return records


def _query_cells(region_of: torch.Tensor, per_region: int) -> list[tuple[str, list[int]]]:
    """Up to ``per_region`` cells spread evenly over each region that does not cover the image."""
    sets = []
    for region in torch.unique(region_of).tolist():
        cells = torch.nonzero(region_of == region).flatten()
        if len(cells) == len(region_of):
            continue
        picks = cells[torch.linspace(0, len(cells) - 1, min(per_region, len(cells))).round().long()]
        sets.append(("background" if region == 0 else "object", picks.tolist()))
    return sets


@torch.no_grad()
def contribution_records(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    config: SurgeryConfig | None = None,
) -> list[dict]:
    """Each block's attention and FFN share of the foreground-minus-background similarity (ViT).

    For an (image, class present): the patch tokens' cosine similarity with the class text splits
    exactly into parts (:func:`~surgery_lib.model.introspection.residual_contributions`); a part's
    *contrast* is its mean over foreground patches minus its mean over background patches (a patch
    is foreground when the class covers most of it). All parts' contrasts add up to the map's.
    Positive: the part points the map at the object; negative: at the background.

    Returns:
        records ``{"image", "class", "block", "part", "contrast", "magnitude"}`` (magnitude: mean
        absolute share over all patches); parts ``"attention"`` and ``"ffn"`` per block, and
        ``"embedding"`` and ``"bias"`` (``ln_post``'s bias) with ``block = -1``.
    """
    if not isinstance(adapter_for(loaded.model), ViTAdapter):
        raise TypeError("contribution analysis needs a ViT tower (a ModifiedResNet has no residual stream)")
    config = config or SurgeryConfig.off()
    texts = text_features(loaded.model, loaded.tokenizer, classes)
    records = []
    for item in items:
        parts = residual_contributions(loaded.model, _batch(loaded, item), config)
        shares = parts.similarity_parts(texts)
        region_of, names = _cell_regions(item, parts.grid)
        for label in item.masks:
            if label not in classes:
                continue
            fg = region_of == names.index(label)
            if not 0 < int(fg.sum()) < len(fg):
                continue
            j = list(classes).index(label)

            def contrast(share: torch.Tensor, fg: torch.Tensor = fg, j: int = j) -> tuple[float, float]:
                s = share[0, 1:, j]
                return float(s[fg].mean() - s[~fg].mean()), float(s.abs().mean())

            base = {"image": item.name, "class": label}
            for part in ("embedding", "bias"):
                c, m = contrast(shares[part])
                records.append({**base, "block": -1, "part": part, "contrast": c, "magnitude": m})
            for part in ("attention", "ffn"):
                for block, share in enumerate(shares[part]):
                    c, m = contrast(share)
                    records.append({**base, "block": block, "part": part, "contrast": c, "magnitude": m})
    return records


@torch.no_grad()
def redundancy_records(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    config: SurgeryConfig | None = None,
) -> list[dict]:
    """How much of the image-text feature products all classes share, per image token.

    For a token ``f`` and the T class features ``t_j``, the element-wise products ``p_j = f ⊙ t_j``
    (``(T, D)``; their sums are the cosine similarities). Their class mean ``m`` is the part shared by
    every class (the paper's redundant feature). Per token:

    * ``shared_fraction`` = ``‖m‖² / mean_j ‖p_j‖²`` (1: every class has the same product);
    * ``empty_cosine``: cosine between ``m`` and the empty prompt's product ``f ⊙ e``;
    * ``shared_similarity``: ``sum(m)``, the similarity every class gets for free.

    Returns:
        records ``{"image", "token" (0 = class token), "region", "shared_fraction", "empty_cosine",
        "shared_similarity"}``.
    """
    config = config or SurgeryConfig.paper().replace(feature_surgery=False)
    texts = text_features(loaded.model, loaded.tokenizer, classes).float()
    empty = empty_prompt_features(loaded.model, loaded.tokenizer).float().reshape(-1)
    records = []
    for item in items:
        tokens, grid = encode_image_tokens(loaded.model, _batch(loaded, item), config)
        f = tokens[0]  # (1+N, D)
        products = f[:, None, :] * texts[None]  # (1+N, T, D)
        mean = products.mean(dim=1)  # (1+N, D)
        shared = mean.pow(2).sum(-1) / products.pow(2).sum(-1).mean(-1)
        empty_cos = F.cosine_similarity(mean, f * empty[None], dim=-1)
        region_of, _ = _cell_regions(item, grid) if item.masks else (torch.zeros(len(f) - 1), None)
        for n in range(len(f)):
            region = "class token" if n == 0 else ("object" if int(region_of[n - 1]) > 0 else "background")
            records.append(
                {
                    "image": item.name,
                    "token": n,
                    "region": region,
                    "shared_fraction": float(shared[n]),
                    "empty_cosine": float(empty_cos[n]),
                    "shared_similarity": float(mean[n].sum()),
                }
            )
    return records
