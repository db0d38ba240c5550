"""The paper's analyses as plain functions over a model and annotated images (notebooks 00–09).

Each function returns records (lists of dicts, one per measured item) that a notebook turns into a
table or a plot; nothing here draws. Masks come from :class:`~surgery_lib.data.records.AnnotatedImage`.

* :func:`map_records` — per (image, class, method): IoU, score contrast, pointing hit (notebooks 00, 01, 05);
  :func:`null_records` — the same for a map with no information (random, centre prior): the null row.
* :func:`attention_locality` — per (block, kind, query region): attention mass kept in the query's own
  region (object or background) (notebook 02).
* :func:`contribution_records` — per block and part (attention / FFN): its share of the
  foreground-minus-background similarity (notebook 04).
* :func:`redundancy_records` — per (image, token): how much of the image-text feature products all
  classes share, and how close the empty prompt's product is to that shared part, next to controls
  (notebook 05).
* :func:`redundancy_subtraction_records`, :func:`redundancy_controls` — map scores after subtracting
  the empty prompt's features or a control direction from every class (notebook 05).
* :func:`vocabulary_sweep_records` — feature surgery's effect as the class list grows (notebook 05).
* :func:`config_summary` — map scores next to zero-shot top-1 per config (ablations, notebook 06).
* :func:`~surgery_lib.model.dual_path_decomposition` (in the model layer) — the new path
  as a sum of v-v outputs, checked numerically (notebook 03).
* :func:`token_grid`, :func:`paired_difference`, :func:`pointing_chance`, :func:`compare_interval` — the
  grid a random-map null is drawn on, method A vs B paired per image (bootstrap interval and sign-flip
  test), the pointing game's chance level, and words for an interval against a reference (00, 01, 05).
* :func:`shared_fraction`, :func:`random_text_shared_fraction`, :func:`unrelated_text_controls` — the
  shared fraction of the products and its chance over random words; texts that name nothing, the
  decisive control for subtracting the empty prompt (05).
* :func:`token_norms_and_empty_map` — token norms per position beside the empty prompt's map (the CAM
  bridge and the register-token question, 05).
* :func:`multilabel_variants` — multi-label mAP for each scoring rule × normalisation (notebook 09).

Measures that are this project's own, not the paper's: the pointing game, the share of "opposite"
maps (SC < 0), the own-region attention mass, each part's contrast; the paper's are mIoU and mSC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.datasets import Dataset
from surgery_lib.data.records import AnnotatedImage, size_groups
from surgery_lib.eval.metrics import (
    ExplainabilityMeter,
    MapScores,
    bootstrap_statistic,
    map_scores,
    mean_average_precision,
)
from surgery_lib.eval.nulls import null_scores
from surgery_lib.maps.explain import configured_similarity, encode_image_tokens, similarity
from surgery_lib.maps.features import cosine_similarity, similarity_map
from surgery_lib.maps.images import image_normalisation, reference_transform
from surgery_lib.maps.text import empty_prompt_features, text_features
from surgery_lib.methods import METHODS
from surgery_lib.model import (
    LoadedCLIP,
    attention_maps,
    dense_forward,
    patch_tokens,
    residual_contributions,
    tower_info,
)


def _batch(loaded: LoadedCLIP, item: AnnotatedImage, image_size: int | None = None) -> torch.Tensor:
    transform = (
        loaded.reference_preprocess
        if image_size is None
        else reference_transform(image_size, *image_normalisation(loaded.model))
    )
    return transform(item.image).unsqueeze(0)


def _with_vocabulary(labels: Sequence[str], vocabulary: Sequence[str] | None) -> list[str]:
    """``labels`` first, then the other names of ``vocabulary`` (each once)."""
    labels = list(labels)
    if vocabulary is None:
        return labels
    return [*labels, *(v for v in dict.fromkeys(vocabulary) if v not in labels)]


def _scorable(mask: np.ndarray) -> bool:
    return 0 < int(mask.sum()) < mask.size


@torch.no_grad()
def maps_for(
    loaded: LoadedCLIP,
    item: AnnotatedImage,
    labels: Sequence[str],
    config: SurgeryConfig,
    vocabulary: Sequence[str] | None = None,
    image_size: int | None = None,
) -> torch.Tensor:
    """``(H, W, T)`` min-max normalised maps of ``labels`` at the image's own size.

    Args:
        vocabulary: the class list feature surgery runs over (``labels`` added where missing); only
            the labels' maps are returned. Without it the labels are the class list, and feature
            surgery subtracts their own mean: with two labels the maps are complements.
        image_size: the model's input side (``Resize((n, n))``); the native size by default.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = text_features(model, tokenizer, _with_vocabulary(labels, vocabulary))
    tokens, grid = encode_image_tokens(model, _batch(loaded, item, image_size), config, texts=texts)
    sim = configured_similarity(model, tokenizer, tokens, texts, config)[..., : len(labels)]
    return similarity_map(patch_tokens(sim), (item.image.height, item.image.width), grid)[0]


@torch.no_grad()
def empty_prompt_map(loaded: LoadedCLIP, item: AnnotatedImage, config: SurgeryConfig) -> torch.Tensor:
    """``(H, W)`` min-max normalised map of the empty prompt ``""`` itself (its cosine similarity with
    each patch token under ``config``'s tower), at the image's own size."""
    model, tokenizer = loaded.model, loaded.tokenizer
    tokens, grid = encode_image_tokens(model, _batch(loaded, item), config)
    sim = cosine_similarity(tokens, empty_prompt_features(model, tokenizer))
    return similarity_map(patch_tokens(sim), (item.image.height, item.image.width), grid)[0, :, :, 0]


def _pair_records(
    item: AnnotatedImage, maps: torch.Tensor, classes: Sequence[str], method: str
) -> list[dict]:
    """Map scores of each class present in ``item`` (maps ``(H, W, T)`` over ``classes``)."""
    records = []
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


def map_records(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    methods: Mapping[str, SurgeryConfig],
    image_size: int | None = None,
) -> list[dict]:
    """Explainability scores of each method's maps against each ground-truth mask.

    Maps are computed over all ``classes`` (the dataset's class list: this project's protocol, the
    paper does not publish its own), then each class present in an image is scored (see
    :mod:`surgery_lib.eval.metrics`). ``image_size``: the model's input side (native by default).

    Returns:
        records ``{"image", "class", "method", "iou", "score_contrast", "pointing_hit", "opposite"}``.
    """
    records = []
    for item in items:
        for method, config in methods.items():
            maps = maps_for(loaded, item, classes, config, image_size=image_size)
            records += _pair_records(item, maps, classes, method)
    return records


def null_records(
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    kind: str = "random",
    samples: int = 50,
    grid: tuple[int, int] | None = (14, 14),
    seed: int = 0,
) -> list[dict]:
    """The records :func:`map_records` would give for a map with no information (this project's null,
    see :mod:`surgery_lib.eval.nulls`): method ``"null:random"`` (``samples`` draws per pair of noise on
    the token ``grid``, upsampled as CLIP's maps are) or ``"null:centre"`` (a centred Gaussian). Added to
    a method's records, :func:`summarise` gives the null row of its table, intervals included.
    """
    records = []
    position = 0
    for item in items:
        for label, mask in item.masks.items():
            if label not in classes or not _scorable(mask):
                continue
            for s in null_scores(mask, kind, samples, grid, seed + position):
                records.append(
                    {
                        "image": item.name,
                        "class": label,
                        "method": f"null:{kind}",
                        "iou": 100.0 * s.iou,
                        "score_contrast": s.score_contrast,
                        "pointing_hit": s.pointing_hit,
                        "opposite": s.score_contrast < 0,
                    }
                )
            position += 1
    return records


def _pairs_meter(records: Sequence[dict]) -> ExplainabilityMeter:
    """The scores of map records (IoU in %, as :func:`map_records` gives it) in one meter."""
    meter = ExplainabilityMeter()
    for r in records:
        meter.add_scores(r["class"], MapScores(r["iou"] / 100.0, r["score_contrast"], r["pointing_hit"]))
    return meter


_SUMMARY_KEYS = ("mIoU", "mSC", "pointing_game", "opposite_rate")


def summarise(
    records: Sequence[dict],
    by: Sequence[str] = ("method",),
    intervals: bool = False,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Per group: mIoU, mSC and pointing game averaged per class then over classes, and the fraction
    of (image, class) pairs whose map is opposite (SC < 0), all in percent except mSC (×100 units);
    the definitions of :class:`~surgery_lib.eval.metrics.ExplainabilityMeter`, as the evaluation runner
    uses them.

    Args:
        intervals: add ``<metric>_low`` / ``<metric>_high``, the limits of a percentile bootstrap
            interval over images (``level``; the records' ``"image"`` names are resampled with
            replacement ``resamples`` times and each summary recomputed; deterministic for ``seed``).
    Raises:
        KeyError: ``intervals`` with records that have no ``"image"``.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    rows = []
    for key, rs in groups.items():
        summary = _pairs_meter(rs).summary()
        row = dict(zip(by, key, strict=True))
        row.update({k: summary[k] for k in _SUMMARY_KEYS}, pairs=len(rs))
        if intervals:
            if any("image" not in r for r in rs):
                raise KeyError("intervals over images need an 'image' name in every record")
            by_image: dict[str, list[dict]] = {}
            for r in rs:
                by_image.setdefault(r["image"], []).append(r)
            images = list(by_image.values())

            def statistic(idx: np.ndarray, images: list[list[dict]] = images) -> dict[str, float]:
                drawn = _pairs_meter([r for i in idx for r in images[i]]).summary()
                return {k: drawn[k] for k in _SUMMARY_KEYS}

            for metric, (low, high) in bootstrap_statistic(
                len(images), statistic, level, resamples, seed
            ).items():
                row[f"{metric}_low"], row[f"{metric}_high"] = low, high
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


LOCALITY_EXCLUDE = ("self", "3x3", "none")


@torch.no_grad()
def attention_locality(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    blocks: Sequence[int],
    kinds: Sequence[str] = ("qk", "qq", "kk", "vv"),
    queries_per_region: int = 8,
    exclude: str = "self",
) -> list[dict]:
    """How much attention stays in the query token's own region, per block and attention kind.

    For each image, up to ``queries_per_region`` query patches are taken evenly from each region
    (each object class, and the background; a patch belongs to the region covering most of it). The
    measure is the attention mass (heads averaged, class token excluded) on patches of the same region,
    over the patches left after ``exclude``, renormalised; ``chance`` is the same region's share of the
    patches left (what attention spread evenly would score).

    ``exclude``: ``"self"`` (default) leaves the query's own patch out — self-self attention (v-v, q-q,
    k-k) peaks on the diagonal, so counting the query itself makes any such kind look local by
    construction (identity attention would score 1); ``"3x3"`` leaves its 3 × 3 neighbourhood out too
    (neighbours share the query's content); ``"none"`` counts every patch (the earlier measure).
    Attention with (almost) nothing left after the exclusion (identity) scores chance; a query with
    nothing of its region left (an object of one patch, or inside the 3 × 3) is skipped.

    Returns:
        records ``{"image", "block", "kind", "region" ("object"/"background"), "own_mass", "chance",
        "self_mass"}``; ``self_mass`` is the share of the query's patch attention on itself.
    """
    if exclude not in LOCALITY_EXCLUDE:
        raise ValueError(f"exclude must be one of {LOCALITY_EXCLUDE}, got {exclude!r}")
    radius = {"self": 0, "3x3": 1, "none": -1}[exclude]
    records = []
    for item in items:
        batch = _batch(loaded, item)
        for block in blocks:
            weights, grid = attention_maps(loaded.model, batch, block, None, kinds)
            region_of, _ = _cell_regions(item, grid)
            rows = torch.arange(grid[0]).repeat_interleave(grid[1])
            cols = torch.arange(grid[1]).repeat(grid[0])
            for label, cells in _query_cells(region_of, queries_per_region):
                for cell in cells:
                    near = ((rows - rows[cell]).abs() <= radius) & ((cols - cols[cell]).abs() <= radius)
                    kept = ~near
                    own = (region_of == region_of[cell]) & kept
                    if not own.any():
                        continue  # nothing of its region is left (a one-patch object): undefined
                    chance = float(own.sum()) / float(kept.sum())
                    for kind, a in weights.items():
                        patch = a[0, :, 1 + cell, 1:].mean(dim=0)
                        patch = patch / patch.sum()
                        left = patch * kept
                        total = float(left.sum())
                        own_mass = float(left[own].sum()) / total if total > 1e-6 else chance
                        records.append(
                            {
                                "image": item.name,
                                "block": block,
                                "kind": kind,
                                "region": label,
                                "own_mass": own_mass,
                                "chance": chance,
                                "self_mass": float(patch[cell]),
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
    if not tower_info(loaded.model).residual_stream:
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

    Controls for ``empty_cosine``, which is high largely by construction (both products are ``f``
    times a text feature, so the channels where ``f`` is large dominate both):

    * ``random_cosine``: the same cosine with the product ``f ⊙ u`` of a random unit direction ``u``
      (one per call, seeded) instead of the empty prompt's;
    * ``heldout_cosine``: a class's own product ``f ⊙ t_k`` against the mean product of the *other*
      classes, averaged over k (what any text gets).

    Returns:
        records ``{"image", "token" (0 = class token), "region", "shared_fraction", "empty_cosine",
        "random_cosine", "heldout_cosine", "shared_similarity"}``.
    """
    config = config or SurgeryConfig.paper().replace(feature_surgery=False)
    texts = text_features(loaded.model, loaded.tokenizer, classes).float()
    empty = empty_prompt_features(loaded.model, loaded.tokenizer).float().reshape(-1)
    generator = torch.Generator().manual_seed(0)
    random = F.normalize(torch.randn(empty.shape[0], generator=generator), dim=0).to(empty)
    t = len(classes)
    records = []
    for item in items:
        tokens, grid = encode_image_tokens(loaded.model, _batch(loaded, item), config)
        f = tokens[0]  # (1+N, D)
        products = f[:, None, :] * texts[None]  # (1+N, T, D)
        mean = products.mean(dim=1)  # (1+N, D)
        shared = mean.pow(2).sum(-1) / products.pow(2).sum(-1).mean(-1)
        empty_cos = F.cosine_similarity(mean, f * empty[None], dim=-1)
        random_cos = F.cosine_similarity(mean, f * random[None], dim=-1)
        others = (t * mean[:, None] - products) / max(t - 1, 1)  # (1+N, T, D) mean of the other classes
        heldout_cos = F.cosine_similarity(others, products, dim=-1).mean(dim=1)
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
                    "random_cosine": float(random_cos[n]),
                    "heldout_cosine": float(heldout_cos[n]),
                    "shared_similarity": float(mean[n].sum()),
                }
            )
    return records


@torch.no_grad()
def redundancy_controls(loaded: LoadedCLIP, classes: Sequence[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """Directions to subtract from every class feature (each ``(1, D)``), for
    :func:`redundancy_subtraction_records`: ``"empty prompt"`` (the paper's single-text redundancy),
    ``"class mean"`` (the unweighted mean of the class features: the multi-class form without its
    class weights) and ``"random direction"`` (a seeded random unit vector, a control that is built
    from neither the image nor the texts; the empty prompt's features are unit vectors too)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = text_features(model, tokenizer, classes).float()
    empty = empty_prompt_features(model, tokenizer).float()
    generator = torch.Generator().manual_seed(seed)
    random = F.normalize(torch.randn(1, texts.shape[1], generator=generator), dim=-1).to(texts)
    return {"empty prompt": empty, "class mean": texts.mean(dim=0, keepdim=True), "random direction": random}


@torch.no_grad()
def redundancy_subtraction_records(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    redundants: Mapping[str, torch.Tensor | None],
    config: SurgeryConfig | None = None,
) -> list[dict]:
    """Map scores when one direction ``r`` is subtracted from every class feature, ``S = f·(t_j − r)``.

    Subtracting ``r`` moves every class's map by the same spatial pattern ``−f·r``: a direction that
    holds the redundant features removes the part all classes share; a control direction should not
    help. ``None`` means nothing subtracted (plain cosine). Tokens from ``config``'s tower
    (architecture surgery without feature surgery by default).

    Returns:
        :func:`map_records`-style records, ``"method"`` = the name in ``redundants``.
    """
    config = config or SurgeryConfig.paper().replace(feature_surgery=False)
    texts = text_features(loaded.model, loaded.tokenizer, classes).float()
    records = []
    for item in items:
        tokens, grid = encode_image_tokens(loaded.model, _batch(loaded, item), config)
        size = (item.image.height, item.image.width)
        for name, r in redundants.items():
            shifted = texts if r is None else texts - r.reshape(1, -1).to(texts)
            maps = similarity_map(patch_tokens(cosine_similarity(tokens, shifted)), size, grid)[0]
            records += _pair_records(item, maps, classes, name)
    return records


@torch.no_grad()
def vocabulary_sweep_records(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    sizes: Sequence[int | None] = (1, 2, 5, None),
    config: SurgeryConfig | None = None,
    seed: int = 0,
) -> list[dict]:
    """Feature surgery's effect on a class's map as the class list it runs over grows.

    For each class present in an image, the vocabulary is that class plus ``k − 1`` other classes of
    ``classes`` (a seeded random draw per image, nested: the 5 include the 2), or all of ``classes``
    for ``None``. ``k = 1`` is the single-text form (the empty prompt as redundancy); with ``k = 2``
    the two maps are exact complements (``S₂ = −S₁``), so the class's map is "where the other class is
    not". Tokens from ``config``'s tower (the paper preset by default; it needs feature surgery on).

    Returns:
        :func:`map_records`-style records with ``"vocabulary"`` (the class-list size) and
        ``"method"`` = ``"<k> classes"``.
    """
    config = config or SurgeryConfig.paper()
    if not config.feature_surgery:
        raise ValueError(
            "the vocabulary sweep measures feature surgery: pass a config with feature_surgery=True"
        )
    model, tokenizer = loaded.model, loaded.tokenizer
    classes = list(classes)
    records = []
    for i, item in enumerate(items):
        tokens, grid = encode_image_tokens(model, _batch(loaded, item), config)
        size = (item.image.height, item.image.width)
        order = np.random.default_rng(seed + i).permutation(len(classes)).tolist()
        for label in item.masks:
            if label not in classes or not _scorable(item.masks[label]):
                continue
            others = [classes[o] for o in order if classes[o] != label]
            for k in sizes:
                vocabulary = [label, *(others if k is None else others[: max(k, 1) - 1])]
                sim = configured_similarity(
                    model, tokenizer, tokens, text_features(model, tokenizer, vocabulary), config
                )
                maps = similarity_map(patch_tokens(sim)[..., :1], size, grid)[0]
                for r in _pair_records(item, maps, [label], f"{len(vocabulary)} classes"):
                    records.append({**r, "vocabulary": len(vocabulary)})
    return records


@torch.no_grad()
def config_summary(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    configs: Mapping[str, SurgeryConfig],
    fields: Sequence[str] = (),
) -> list[dict]:
    """Per config: the map scores of :func:`summarise` next to the image-level prediction.

    Maps over all ``classes`` (as :func:`map_records`). ``zero_shot_top1``: % of the images with masks
    whose best class (the class token under that config against the prompt-ensemble class features)
    is present; ``same_top1``: % of the images whose best class is vanilla CLIP's. Under the dual
    path the class token is vanilla CLIP's, so both stay put; without it they can collapse.

    Args:
        fields: :class:`SurgeryConfig` fields copied into each row (e.g. ``("dual_path", "depth")``).
    Returns:
        rows ``{"method", <fields>, "mIoU", "mSC", "pointing_game", "opposite_rate", "pairs",
        "zero_shot_top1", "same_top1", "images"}``.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    texts = text_features(model, tokenizer, classes)
    items = [it for it in items if it.masks]
    if not items:
        raise ValueError("no image with masks to score")
    groups = size_groups(items)

    def run(config: SurgeryConfig) -> list[tuple[AnnotatedImage, torch.Tensor, tuple[int, int]]]:
        out = []
        for group in groups:
            batch = torch.cat([_batch(loaded, items[i]) for i in group])
            tokens, grid = encode_image_tokens(model, batch, config)
            out += [(items[i], tokens[b : b + 1], grid) for b, i in enumerate(group)]
        return out

    vanilla = [int((tokens[0, 0] @ texts.t()).argmax()) for _, tokens, _ in run(SurgeryConfig.off())]
    rows = []
    for name, config in configs.items():
        records, hits, same = [], [], []
        for (item, tokens, grid), first in zip(run(config), vanilla, strict=True):
            top = int((tokens[0, 0] @ texts.t()).argmax())
            hits.append(classes[top] in item.masks)
            same.append(top == first)
            sim = configured_similarity(model, tokenizer, tokens, texts, config)
            maps = similarity_map(patch_tokens(sim), (item.image.height, item.image.width), grid)[0]
            records += _pair_records(item, maps, classes, name)
        (summary,) = summarise(records) if records else [{"method": name}]
        rows.append(
            {
                "method": name,
                **{f: getattr(config, f) for f in fields},
                **{k: v for k, v in summary.items() if k != "method"},
                "zero_shot_top1": 100.0 * float(np.mean(hits)),
                "same_top1": 100.0 * float(np.mean(same)),
                "images": len(items),
            }
        )
    return rows


MULTILABEL_SCORES: tuple[str, ...] = ("cosine", "feature surgery")
"""The class-token scores of :func:`multilabel_variants`."""


@torch.no_grad()
def multilabel_variants(loaded: LoadedCLIP, dataset: Dataset, limit: int | None = None) -> list[dict]:
    """Multi-label mAP under each scoring rule, to separate what the score and its normalisation do.

    The runner (:mod:`surgery_lib.eval.runner`, task ``multilabel``) compares two rules that differ in
    two ways at once: ``raw`` = softmax over the image's candidate classes of 100 × the class token's
    cosine similarity; ``surgery`` = the class token's feature-surgery similarity, not normalised. Here
    every combination of tokens (those of the ``raw`` and the ``surgery`` preset: the same class token
    on a ViT's dual path, different on a ModifiedResNet) × score (:data:`MULTILABEL_SCORES`) ×
    normalisation (none, or the softmax of 100 × score over the candidates) is scored on the first
    ``limit`` images, positives and candidates as the runner takes them.

    Returns:
        rows ``{"tokens", "score", "softmax", "mAP", "classes_evaluated", "runner"}``; ``runner`` names
        the runner's method the row reproduces (``"raw"``, ``"surgery"`` or ``""``).
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    fg = list(dataset.foreground)
    position = {c: j for j, c in enumerate(fg)}
    texts = text_features(model, tokenizer, [dataset.prompts[c] for c in fg])
    empty = empty_prompt_features(model, tokenizer)
    transform = reference_transform(loaded.image_size, *image_normalisation(model))
    count = len(dataset) if limit is None else min(limit, len(dataset))
    k = len(dataset.class_names)
    keys = [(t, sc, sm) for t in ("raw", "surgery") for sc in MULTILABEL_SCORES for sm in (False, True)]
    scores = {key: torch.zeros(count, k) for key in keys}
    targets = torch.full((count, k), -1, dtype=torch.int64)
    for i in range(count):
        sample = dataset[i]
        cands = fg if sample.vocabulary is None else [c for c in fg if c in sample.vocabulary]
        cand_texts = texts[[position[c] for c in cands]]
        if sample.tags is not None:
            present = {int(c) for c in np.nonzero(sample.tags)[0]}
        else:
            present = {int(c) for c in np.unique(sample.label)}
        targets[i, cands] = torch.tensor([int(c in present) for c in cands])
        image = transform(sample.image)[None]
        for name in ("raw", "surgery"):
            tokens, _ = encode_image_tokens(model, image, METHODS[name])
            rows = {
                "cosine": cosine_similarity(tokens, cand_texts)[0, 0],
                "feature surgery": similarity(tokens, cand_texts, METHODS["surgery"], empty)[0, 0],
            }
            for score, row in rows.items():
                for soft in (False, True):
                    value = torch.softmax(100.0 * row, dim=-1) if soft else row
                    scores[(name, score, soft)][i, cands] = value.float().cpu()
    runner = {("raw", "cosine", True): "raw", ("surgery", "feature surgery", False): "surgery"}
    out = []
    for key in keys:
        value, excluded = mean_average_precision(scores[key], targets)
        tokens, score, soft = key
        out.append(
            {
                "tokens": tokens,
                "score": score,
                "softmax": soft,
                "mAP": value,
                "classes_evaluated": k - len(excluded),
                "runner": runner.get(key, ""),
            }
        )
    return out


# --- nulls and paired comparisons for the notebooks' claims (issue 23) --------------------------------


@torch.no_grad()
def token_grid(loaded: LoadedCLIP, image_size: int | None = None) -> tuple[int, int]:
    """The ``(h, w)`` token grid of ``loaded``'s image tower at ``image_size`` (native by default):
    the grid a random-map null is drawn on (:func:`null_records` ``grid``)."""
    side = image_size or loaded.image_size
    _, grid = dense_forward(loaded.model, torch.zeros(1, 3, side, side), SurgeryConfig.off())
    return tuple(int(g) for g in grid)


def per_unit_means(
    records: Sequence[dict], method: str, metric: str = "score_contrast", unit: str = "image"
) -> dict[str, float]:
    """``{unit: mean of metric}`` over the records of ``method`` (e.g. one method's mean SC per image)."""
    sums: dict[str, list[float]] = {}
    for r in records:
        if r["method"] == method:
            sums.setdefault(r[unit], []).append(float(r[metric]))
    return {k: float(np.mean(v)) for k, v in sums.items()}


def paired_difference(
    records: Sequence[dict],
    a: str,
    b: str,
    metric: str = "score_contrast",
    unit: str = "image",
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Method ``a`` against method ``b`` on the same units (images): per unit the mean of ``metric``
    over its records (pairs) for each method, then the mean difference ``a − b`` with a percentile
    bootstrap interval over units and a paired sign-flip test (this project's test; the paper reports
    means only). Units scored by one method only are left out.

    Returns:
        ``{"a", "b"`` (means over units), ``"difference", "low", "high", "p", "units"}``.
    Raises:
        ValueError: no unit scored by both methods.
    """
    from surgery_lib.eval.metrics import bootstrap_ci
    from surgery_lib.eval.nulls import sign_flip_test

    mean_a, mean_b = per_unit_means(records, a, metric, unit), per_unit_means(records, b, metric, unit)
    units = [u for u in mean_a if u in mean_b]
    if not units:
        raise ValueError(f"no {unit} was scored by both {a!r} and {b!r}")
    x, y = np.array([mean_a[u] for u in units]), np.array([mean_b[u] for u in units])
    difference, low, high = bootstrap_ci(x - y, level, resamples, seed)
    _, p = sign_flip_test(x, y, resamples=resamples, seed=seed)
    return {
        "a": float(x.mean()),
        "b": float(y.mean()),
        "difference": difference,
        "low": low,
        "high": high,
        "p": p,
        "units": float(len(units)),
    }


def pointing_chance(
    items: Sequence[AnnotatedImage], classes: Sequence[str], grid: tuple[int, int] | None = None
) -> float:
    """The pointing game's chance level (%) on the pairs :func:`map_records` scores, averaged per class
    then over classes as the pointing game is: per pair the object's share of the image
    (:func:`~surgery_lib.eval.nulls.area_chance`), or with ``grid`` the share of token-cell centres in
    the mask (:func:`~surgery_lib.eval.nulls.cell_centre_chance`, a token-grid map's chance).

    Raises:
        ValueError: no scorable (class, mask) pair.
    """
    from surgery_lib.eval.nulls import area_chance, cell_centre_chance

    per_class: dict[str, list[float]] = {}
    for item in items:
        for label, mask in item.masks.items():
            if label in classes and _scorable(mask):
                chance = area_chance(mask) if grid is None else cell_centre_chance(mask, grid)
                per_class.setdefault(label, []).append(chance)
    if not per_class:
        raise ValueError("pointing_chance got no scorable (class, mask) pair")
    return 100.0 * float(np.mean([np.mean(v) for v in per_class.values()]))


def shared_fraction(tokens: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """The share of the feature products all texts have in common, per token:
    ``‖mean_j p_j‖² / mean_j ‖p_j‖²`` with ``p_j = f ⊙ t_j`` (as in :func:`redundancy_records`).

    Args:
        tokens: ``(N, D)`` image tokens; texts: ``(T, D)`` text features.
    Returns:
        ``(N,)`` in ``[0, 1]``: 1 when every text has the same product, ``1/T`` when the products are
        mutually orthogonal with equal norms (e.g. texts along different axes), larger when the texts
        lie in a narrow cone.
    Raises:
        ValueError: bad shapes.
    """
    if tokens.ndim != 2 or texts.ndim != 2 or tokens.shape[1] != texts.shape[1] or len(texts) == 0:
        raise ValueError(
            f"tokens (N, D) and texts (T, D) must share D, got {tuple(tokens.shape)}, {tuple(texts.shape)}"
        )
    products = tokens.float()[:, None, :] * texts.float()[None]  # (N, T, D)
    return products.mean(dim=1).pow(2).sum(-1) / products.pow(2).sum(-1).mean(-1).clamp_min(1e-30)


UNRELATED_WORDS: tuple[str, ...] = (
    "chair", "window", "bottle", "cloud", "road", "table", "shoe", "door", "book", "lamp",
    "river", "bridge", "clock", "pencil", "cup", "mountain", "shirt", "bed", "phone", "spoon",
    "wall", "rope", "kite", "ladder", "bench", "paper", "hat", "boat", "key", "fence",
)  # fmt: skip
"""Everyday nouns that name none of the shipped sources' classes: the texts of the random-word null
(:func:`random_text_shared_fraction`) and the unrelated-text control (:func:`unrelated_text_controls`)."""


@torch.no_grad()
def random_text_shared_fraction(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    words: Sequence[str] = UNRELATED_WORDS,
    draws: int = 10,
    config: SurgeryConfig | None = None,
    seed: int = 0,
) -> list[dict]:
    """The shared fraction of the class texts' products next to its null: the same fraction over
    ``T = len(classes)`` texts drawn from ``words`` (words that name no class; drawn with
    replacement when there are fewer than T), ``draws`` seeded draws. "1/T" would be the chance only if
    the products were orthogonal; CLIP's text features lie in a narrow cone, so any T texts share a
    large part — this null measures how large, on this model. Patch tokens only (the class token left
    out), from ``config``'s tower (architecture surgery without feature surgery by default).

    Returns:
        per image: one record ``{"image", "texts": "classes", "draw": -1, "shared_fraction"}`` (mean over
        the patch tokens) and one per draw with ``"texts": "random words"``.
    """
    config = config or SurgeryConfig.paper().replace(feature_surgery=False)
    words = [w for w in dict.fromkeys(words) if w not in set(classes)]
    if not words:
        raise ValueError("random_text_shared_fraction needs words that are not class names")
    if not (isinstance(draws, int) and draws >= 1):
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    model, tokenizer = loaded.model, loaded.tokenizer
    t = len(classes)
    rng = np.random.default_rng(seed)
    drawn = [[words[i] for i in rng.choice(len(words), size=t, replace=t > len(words))] for _ in range(draws)]
    class_texts = text_features(model, tokenizer, classes).float()
    word_texts = {w: text_features(model, tokenizer, [w]).float()[0] for w in words}
    records = []
    for item in items:
        tokens, _ = encode_image_tokens(model, _batch(loaded, item), config)
        patches = tokens[0, 1:]
        records.append(
            {
                "image": item.name,
                "texts": "classes",
                "draw": -1,
                "shared_fraction": float(shared_fraction(patches, class_texts).mean()),
            }
        )
        for d, names in enumerate(drawn):
            texts = torch.stack([word_texts[w] for w in names])
            records.append(
                {
                    "image": item.name,
                    "texts": "random words",
                    "draw": d,
                    "shared_fraction": float(shared_fraction(patches, texts).mean()),
                }
            )
    return records


@torch.no_grad()
def unrelated_text_controls(
    loaded: LoadedCLIP, classes: Sequence[str], words: Sequence[str] = UNRELATED_WORDS, count: int = 5
) -> dict[str, torch.Tensor]:
    """The decisive control for subtracting the empty prompt: texts that name nothing in the images,
    each ``(1, D)`` (its prompt ensemble), keyed ``"unrelated text: <word>"``, for
    :func:`redundancy_subtraction_records`. Like the empty prompt they are CLIP text features (in
    the same narrow cone), unlike it they name something: if subtracting any text helps as much, the
    gain is the cone's common component, not the empty prompt's. The first ``count`` words of ``words``
    that are not class names."""
    chosen = [w for w in dict.fromkeys(words) if w not in set(classes)][:count]
    if not chosen:
        raise ValueError("unrelated_text_controls needs words that are not class names")
    texts = text_features(loaded.model, loaded.tokenizer, chosen).float()
    return {f"unrelated text: {w}": texts[i : i + 1] for i, w in enumerate(chosen)}


@torch.no_grad()
def token_norms_and_empty_map(
    loaded: LoadedCLIP, items: Sequence[AnnotatedImage], config: SurgeryConfig | None = None
) -> dict[str, torch.Tensor | tuple[int, int]]:
    """Per image and token position: the norm of the image tower's output token (before the
    normalisation the similarity applies) and the empty prompt's similarity with that token (its map at
    token resolution), under ``config``'s tower (raw CLIP by default). High-norm "artifact" tokens
    (Darcet et al., *Vision Transformers Need Registers*, ICLR 2024) would show as large norms; if the
    empty prompt's map — the fixed-position noise the paper shows — sits on them, the two correlate
    across positions (test: :func:`~surgery_lib.eval.nulls.position_permutation_test`).

    Returns:
        ``{"norms": (n, N), "empty": (n, N), "grid": (h, w)}`` for n images and N = h·w patch tokens
        (class token left out), float32.
    Raises:
        ValueError: no items, or images giving different grids.
    """
    if not items:
        raise ValueError("token_norms_and_empty_map needs at least one image")
    config = config or SurgeryConfig.off()
    model = loaded.model
    empty = empty_prompt_features(model, loaded.tokenizer).float().reshape(-1)
    norms, sims, grids = [], [], set()
    for item in items:
        tokens, grid = dense_forward(model, _batch(loaded, item), config)
        patches = tokens[0, 1:].float()
        norms.append(patches.norm(dim=-1))
        sims.append(F.normalize(patches, dim=-1) @ empty.to(patches))
        grids.add(tuple(int(g) for g in grid))
    if len(grids) != 1:
        raise ValueError(f"the images gave different token grids {sorted(grids)}")
    return {"norms": torch.stack(norms), "empty": torch.stack(sims), "grid": grids.pop()}


def compare_interval(low: float, high: float, reference: float) -> str:
    """Words for an interval ``[low, high]`` against a reference value (a null, chance, a baseline):
    ``"above"``, ``"below"`` or ``"not distinguishable from"``, for prose printed from the numbers."""
    if not low <= high:
        raise ValueError(f"low must not exceed high, got [{low}, {high}]")
    if low > reference:
        return "above"
    if high < reference:
        return "below"
    return "not distinguishable from"
