"""The mechanism of CLIP Surgery's architecture surgery, separated into its components (notebook 03).

Which component turns raw CLIP's "opposite" maps around: the v-v attention, skipping the FFN, or the
dual path? Each function here works over a loaded model and annotated images and returns plain
records; nothing draws. Feature surgery is off everywhere, so that only the architecture is compared.

* :func:`factorial` — attention {q-k, v-v, identity} × FFN {kept, skipped} × path {single, dual} ×
  depth (relative to the tower's block count, :func:`mechanism_depths`), each cell scored with mIoU,
  mSC and zero-shot top-1, each with a 95 % bootstrap interval over images. Cells that coincide by
  construction (:func:`coinciding_cell`) are computed once and marked.
* :func:`paired_difference` — one cell against another on the same images: the difference of the
  summaries with a paired bootstrap interval and a sign-flip test over per-image means.
* :func:`patched_tokens`, :func:`block_patching` — v-v attention in ONE block at a time (single path,
  or a dual path running from block 0), mSC per block with intervals.
* :func:`locality_contrast`, :func:`bootstrap_correlation` — per image, how much more the v-v attention
  keeps in the query's region than q-k (query's patch and 3 × 3 neighbourhood excluded) next to how much
  the v-v cell's score contrast exceeds the q-k cell's; their correlation over images with an interval.
* :func:`collapse_records` — the single path's "collapse" measured: per block, the class token's
  cosine to vanilla CLIP's class token and the token norms, single vs dual path.

mIoU and mSC are the paper's measures; the per-image locality, the correlation and the drift are this
project's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.records import AnnotatedImage, size_groups
from surgery_lib.eval.analysis import _batch, _pair_records
from surgery_lib.eval.metrics import bootstrap_ci
from surgery_lib.eval.nulls import sign_flip_test
from surgery_lib.maps.features import cosine_similarity, similarity_map
from surgery_lib.maps.text import text_features
from surgery_lib.model import LoadedCLIP, Trace, class_token, dense_forward, patch_tokens, tower_info

MECHANISM_ATTENTIONS: tuple[str, ...] = ("qk", "vv", "identity")
"""The attention kinds of the factorial: CLIP's own, the paper's, and none (each token its value)."""


def mechanism_depths(n_blocks: int) -> list[int]:
    """The depths of the factorial, relative to the tower: 1 block, a quarter, half and all blocks
    (``[1, 2, 4, 8]`` for 8 blocks, ``[1, 3, 6, 12]`` for 12; the paper's 6 of 12 is the half).

    Raises:
        ValueError: ``n_blocks < 1``.
    """
    if int(n_blocks) < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks!r}")
    n = int(n_blocks)
    return sorted({1, n // 4, n // 2, n} - {0})


@dataclass(frozen=True)
class Cell:
    """One cell of the factorial (feature surgery always off).

    ``depth=0`` is raw CLIP (the other fields then mean nothing: use :data:`RAW`).
    """

    attention: str
    skip_ffn: bool
    dual_path: bool
    depth: int

    @property
    def config(self) -> SurgeryConfig:
        """The :class:`SurgeryConfig` of this cell (feature surgery off)."""
        if self.depth == 0:
            return SurgeryConfig.off()
        return SurgeryConfig(
            attention=self.attention,  # type: ignore[arg-type]
            skip_ffn=self.skip_ffn,
            dual_path=self.dual_path,
            depth=self.depth,
            feature_surgery=False,
        )

    @property
    def label(self) -> str:
        if self.depth == 0:
            return "raw CLIP"
        attention = {"qk": "q-k", "vv": "v-v"}.get(self.attention, self.attention)
        return (
            f"{attention}, FFN {'skipped' if self.skip_ffn else 'kept'}, "
            f"{'dual' if self.dual_path else 'single'} path, depth {self.depth}"
        )


RAW = Cell("qk", False, False, 0)
"""Raw CLIP as a cell (depth 0)."""


def factorial_cells(
    n_blocks: int,
    depths: Sequence[int] | None = None,
    attentions: Sequence[str] = MECHANISM_ATTENTIONS,
    resnet: bool = False,
) -> list[Cell]:
    """Every cell of attention × FFN {kept, skipped} × path {single, dual} × depth, raw CLIP first.

    On a ModifiedResNet (``resnet``) the only attention is the attention pool: FFN, path and depth do
    not apply, so the cells are raw CLIP and one cell per attention kind at depth 1.
    """
    if resnet:
        return [RAW, *(Cell(a, False, False, 1) for a in attentions)]
    depths = mechanism_depths(n_blocks) if depths is None else list(depths)
    bad = [d for d in depths if not 1 <= int(d) <= n_blocks]
    if bad:
        raise ValueError(f"depths {bad} outside 1..{n_blocks}")
    return [RAW] + [
        Cell(a, s, p, int(d))
        for a in attentions
        for s in (False, True)
        for p in (False, True)
        for d in depths
    ]


def coinciding_cell(cell: Cell, resnet: bool = False) -> tuple[Cell, Cell]:
    """The cells whose forward gives, by construction, the same (patch tokens, class token) as ``cell``.

    Rules (exact in real arithmetic; :func:`factorial` computes each distinct forward once):

    * depth 0 is raw CLIP;
    * q-k attention with the FFN kept is raw CLIP on either path (the new path then repeats the
      original path: ``y = x`` after every block);
    * a dual path of depth 1 has the patch tokens of the single path of depth 1 (the new path differs
      from the single path in its class token only);
    * the dual path's class token is raw CLIP's (read from the original path);
    * on a ModifiedResNet, FFN and path do not apply; q-k in the attention pool is raw CLIP.

    Returns:
        ``(cell giving the same patch tokens, cell giving the same class token)``, each in its
        canonical form (:data:`RAW` for raw CLIP).
    """
    if cell.depth == 0:
        return RAW, RAW
    if resnet:
        same = RAW if cell.attention == "qk" else Cell(cell.attention, False, False, 1)
        return same, same
    if cell.attention == "qk" and not cell.skip_ffn:
        return RAW, RAW
    patch = Cell(cell.attention, cell.skip_ffn, False, 1) if cell.dual_path and cell.depth == 1 else cell
    return patch, (RAW if cell.dual_path else cell)


def _is_resnet(loaded: LoadedCLIP) -> bool:
    return not tower_info(loaded.model).residual_stream


def _n_blocks(loaded: LoadedCLIP) -> int:
    return tower_info(loaded.model).num_blocks


def _unit(tokens: torch.Tensor) -> torch.Tensor:
    tokens = tokens.float()
    return tokens / tokens.norm(dim=-1, keepdim=True)


@torch.no_grad()
def _tokens_per_item(loaded: LoadedCLIP, items: Sequence[AnnotatedImage], forward) -> list[torch.Tensor]:
    """``forward(batch) -> (tokens, grid)`` run on batches of equal-size images; per item the normalised
    ``(1, 1+N, D)`` tokens (on the CPU)."""
    device = next(loaded.model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(items)
    for group in size_groups(items):
        batch = torch.cat([_batch(loaded, items[i]) for i in group]).to(device)
        tokens, _ = forward(batch)
        for b, i in enumerate(group):
            out[i] = _unit(tokens[b : b + 1]).cpu()
    return out  # type: ignore[return-value]


def _grid(n_patches: int) -> tuple[int, int]:
    side = round(n_patches**0.5)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patch tokens do not form a square grid")
    return side, side


def _score(
    items: Sequence[AnnotatedImage], tokens: Sequence[torch.Tensor], texts: torch.Tensor, classes, name: str
) -> list[dict]:
    """Map records (:func:`~surgery_lib.eval.analysis.map_records`' fields) of plain cosine maps."""
    records = []
    for item, t in zip(items, tokens, strict=True):
        sim = cosine_similarity(t, texts)
        maps = similarity_map(
            patch_tokens(sim), (item.image.height, item.image.width), _grid(t.shape[1] - 1)
        )[0]
        records += _pair_records(item, maps, classes, name)
    return records


def _top1(items: Sequence[AnnotatedImage], tokens: Sequence[torch.Tensor], texts: torch.Tensor, classes):
    """Per image: (hit = best class present in the image, index of the best class)."""
    hits, tops = [], []
    for item, t in zip(items, tokens, strict=True):
        top = int((t[0, 0] @ texts.t()).argmax())
        tops.append(top)
        hits.append(classes[top] in item.masks)
    return np.asarray(hits, dtype=float), np.asarray(tops)


def _weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n_images)`` bootstrap counts (how often each image is drawn), deterministic."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    counts = np.zeros((resamples, n_images))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts


def _class_mean(
    records: Sequence[dict], metric: str, images: Sequence[str], counts: np.ndarray | None
) -> np.ndarray:
    """The summary of :func:`summarise` (mean per class, then over classes) of ``metric``; with
    ``counts`` ``(R, n_images)`` one value per bootstrap resample, else one value ``(1,)``."""
    position = {name: i for i, name in enumerate(images)}
    labels = sorted({r["class"] for r in records})
    column = {c: j for j, c in enumerate(labels)}
    img = np.array([position[r["image"]] for r in records])
    cls = np.array([column[r["class"]] for r in records])
    value = np.array([float(r[metric]) for r in records])
    onehot = np.zeros((len(records), len(labels)))
    onehot[np.arange(len(records)), cls] = 1.0
    w = np.ones((1, len(images))) if counts is None else counts
    per_record = w[:, img]  # (R, records)
    sums = (per_record * value) @ onehot
    weight = per_record @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(weight > 0, sums / np.where(weight > 0, weight, 1.0), np.nan)
    return np.nanmean(per_class, axis=1)


_METRICS = {"mSC": ("score_contrast", 1.0), "mIoU": ("iou", 1.0)}


def pair_bootstrap(
    records: Sequence[dict],
    metric: str = "mSC",
    images: Sequence[str] | None = None,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(value, low, high)``: ``metric`` (``"mSC"`` or ``"mIoU"``) of map records as :func:`summarise`
    computes it (per class, then over classes), with a percentile bootstrap interval over images
    (vectorised: images drawn with replacement, every pair of a drawn image counted as often as it is
    drawn). ``images``: the image names resampled (default: those in the records).

    Raises:
        ValueError: no records or an unknown metric.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {tuple(_METRICS)}, got {metric!r}")
    if not records:
        raise ValueError("pair_bootstrap needs records")
    images = list(dict.fromkeys(r["image"] for r in records)) if images is None else list(images)
    key = _METRICS[metric][0]
    value = float(_class_mean(records, key, images, None)[0])
    draws = _class_mean(records, key, images, _weights(len(images), resamples, seed))
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(draws, [tail, 1.0 - tail])
    return value, float(low), float(high)


def per_image_mean(records: Sequence[dict], metric: str = "score_contrast") -> dict[str, float]:
    """Image name -> mean of ``metric`` over that image's (class) records."""
    out: dict[str, list[float]] = {}
    for r in records:
        out.setdefault(r["image"], []).append(float(r[metric]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def paired_difference(
    records_a: Sequence[dict],
    records_b: Sequence[dict],
    metric: str = "mSC",
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """``metric`` of ``records_a`` minus that of ``records_b`` (two methods scored on the same images):
    the difference of the summaries, a paired bootstrap interval (the same images drawn for both) and
    the p-value of a sign-flip test over per-image means (:func:`~surgery_lib.eval.nulls.sign_flip_test`).

    Returns:
        ``{"a", "b", "difference", "low", "high", "p"}``.
    Raises:
        ValueError: the two record sets do not cover the same images.
    """
    images = list(dict.fromkeys(r["image"] for r in records_a))
    if set(images) != {r["image"] for r in records_b}:
        raise ValueError("paired_difference needs records of the same images")
    key = _METRICS[metric][0] if metric in _METRICS else metric
    counts = _weights(len(images), resamples, seed)
    a = _class_mean(records_a, key, images, None)[0]
    b = _class_mean(records_b, key, images, None)[0]
    draws = _class_mean(records_a, key, images, counts) - _class_mean(records_b, key, images, counts)
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(draws, [tail, 1.0 - tail])
    ma, mb = per_image_mean(records_a, key), per_image_mean(records_b, key)
    _, p = sign_flip_test([ma[i] for i in images], [mb[i] for i in images], seed=seed)
    return {
        "a": float(a),
        "b": float(b),
        "difference": float(a - b),
        "low": float(low),
        "high": float(high),
        "p": p,
    }


@dataclass
class Factorial:
    """What :func:`factorial` returns.

    Attributes:
        rows: one dict per cell: ``attention``, ``skip_ffn``, ``dual_path``, ``depth``, ``label``,
            ``mIoU``/``mSC``/``zero_shot_top1`` each with ``_low``/``_high`` (95 % bootstrap over images),
            ``same_top1`` (% of images whose best class is raw CLIP's), ``maps_as`` / ``class_token_as``
            (label of the cell it coincides with by construction, ``""`` if none other), ``pairs``,
            ``images``.
        records: cell -> its map records (:func:`~surgery_lib.eval.analysis.map_records`' fields).
        hits: cell -> ``(images,)`` zero-shot hits (1.0 when the best class is in the image).
        images: the image names, in order.
        forwards: the number of distinct forwards computed.
    """

    rows: list[dict]
    records: dict[Cell, list[dict]]
    hits: dict[Cell, np.ndarray]
    images: list[str]
    forwards: int = 0
    tokens: dict[Cell, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def row(self, cell: Cell) -> dict:
        """The row of one cell."""
        for r in self.rows:
            if r["label"] == cell.label:
                return r
        raise KeyError(f"no cell {cell.label!r} in this factorial")


@torch.no_grad()
def factorial(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    cells: Sequence[Cell] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> Factorial:
    """Score every cell of the mechanism factorial (feature surgery off in every cell).

    Maps over all ``classes`` and each class present in an image scored against its mask (as
    :func:`~surgery_lib.eval.analysis.map_records`); zero-shot top-1 as
    :func:`~surgery_lib.eval.analysis.config_summary` (the class token against the class features;
    a hit when the best class is in the image). Forwards that coincide by construction
    (:func:`coinciding_cell`) are computed once.

    Args:
        cells: default :func:`factorial_cells` for this tower (raw CLIP is always added).
    Raises:
        ValueError: no image with masks.
    """
    items = [it for it in items if it.masks]
    if not items:
        raise ValueError("no image with masks to score")
    resnet = _is_resnet(loaded)
    cells = list(cells) if cells is not None else factorial_cells(_n_blocks(loaded), resnet=resnet)
    if RAW not in cells:
        cells = [RAW, *cells]
    model = loaded.model
    texts = text_features(model, loaded.tokenizer, list(classes)).float().cpu()
    needed = list(dict.fromkeys(c for cell in cells for c in coinciding_cell(cell, resnet)))
    if resnet:
        forwards = {
            c: _tokens_per_item(loaded, items, lambda b, c=c: dense_forward(model, b, c.config))
            for c in needed
        }
    else:
        n = _n_blocks(loaded)
        computed = _spec_tokens(loaded, items, [_cell_spec(c, n) for c in needed])
        forwards = {c: computed[_cell_spec(c, n)] for c in needed}

    def tokens_of(cell: Cell) -> list[torch.Tensor]:
        return forwards[cell]

    images = [it.name for it in items]
    _, raw_top = _top1(items, tokens_of(RAW), texts, classes)
    rows, records, hits = [], {}, {}
    scored: dict[Cell, list[dict]] = {}
    for cell in cells:
        patch_as, class_as = coinciding_cell(cell, resnet)
        if patch_as not in scored:
            scored[patch_as] = _score(items, tokens_of(patch_as), texts, classes, patch_as.label)
        recs = [{**r, "method": cell.label} for r in scored[patch_as]]
        hit, top = _top1(items, tokens_of(class_as), texts, classes)
        records[cell], hits[cell] = recs, hit
        row = {
            "attention": cell.attention,
            "skip_ffn": cell.skip_ffn,
            "dual_path": cell.dual_path,
            "depth": cell.depth,
            "label": cell.label,
            "maps_as": "" if patch_as == cell else patch_as.label,
            "class_token_as": "" if class_as == cell else class_as.label,
        }
        for metric in ("mIoU", "mSC"):
            if recs:
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = pair_bootstrap(
                    recs, metric, images, resamples=resamples, seed=seed
                )
            else:
                row[metric] = row[f"{metric}_low"] = row[f"{metric}_high"] = float("nan")
        mean, low, high = bootstrap_ci(100.0 * hit, resamples=resamples, seed=seed)
        row.update(zero_shot_top1=mean, zero_shot_top1_low=low, zero_shot_top1_high=high)
        row.update(same_top1=100.0 * float(np.mean(top == raw_top)), pairs=len(recs), images=len(items))
        rows.append(row)
    return Factorial(rows, records, hits, images, len(forwards), forwards)


def _vit(loaded_or_model) -> torch.nn.Module:
    """The model, after checking that its tower has blocks to patch."""
    model = getattr(loaded_or_model, "model", loaded_or_model)
    if not tower_info(model).residual_stream:
        raise TypeError("per-block patching needs a ViT tower (a ModifiedResNet has one attention layer)")
    return model


@torch.no_grad()
def patched_tokens(
    model: torch.nn.Module,
    images: torch.Tensor,
    kinds: Sequence[str | None],
    dual_path: bool = False,
    skip_ffn: bool = False,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All output tokens of a ViT with the attention of chosen blocks replaced (block-wise patching).

    ``kinds[i]``: the attention kind of block ``i``, or ``None`` for the block as vanilla CLIP runs it.

    * single path (``dual_path=False``): block ``i`` with ``kinds[i]`` runs that attention on the one
      stream, and skips its FFN when ``skip_ffn``; the other blocks are vanilla.
    * dual path: the new path starts at the first block with a kind as a copy of the stream; from there
      on, each block adds to it its kind's attention output (``None`` there means ``"qk"``) computed
      from the *original* stream's ``LN1(x_i)`` and, unless ``skip_ffn``, its FFN applied to the new
      path; the original path runs vanilla and gives the class token (CLIP Surgery's dual path).

    ``kinds = [None] * (L - d) + ["vv"] * d`` is exactly :class:`SurgeryConfig` ``(depth=d)``.

    Args:
        images: preprocessed ``(B, 3, H, W)``.
    Returns:
        projected tokens ``(B, 1 + h·w, D)`` (not normalised) and the grid ``(h, w)``.
    Raises:
        TypeError: not a ViT tower. ValueError: ``kinds`` not one entry per block.
    """
    model = _vit(model)
    n = tower_info(model).num_blocks
    if len(kinds) != n:
        raise ValueError(f"kinds needs one entry per block ({n}), got {len(kinds)}")
    config = SurgeryConfig(dual_path=dual_path, skip_ffn=skip_ffn, feature_surgery=False, depth=0)
    images = images.to(next(model.parameters()).device)
    return dense_forward(model, images, config, block_kinds=list(kinds))


Spec = tuple[tuple[str | None, ...], bool, bool]
"""A patched forward: (kind per block, dual_path, skip_ffn), as :func:`patched_tokens` takes it."""


def _cell_spec(cell: Cell, n_blocks: int) -> Spec:
    kinds = (None,) * (n_blocks - cell.depth) + (cell.attention,) * cell.depth
    return kinds, cell.dual_path, cell.skip_ffn


@torch.no_grad()
def _spec_tokens(
    loaded: LoadedCLIP, items: Sequence[AnnotatedImage], specs: Sequence[Spec]
) -> dict[Spec, list[torch.Tensor]]:
    """Per spec, the normalised ``(1, 1+N, D)`` tokens of each item (CPU), the vanilla stream of each
    batch of equal-size images computed once for all specs."""
    _vit(loaded)
    device = next(loaded.model.parameters()).device
    out: dict[Spec, list] = {spec: [None] * len(items) for spec in specs}
    for group in size_groups(items):
        images = torch.cat([_batch(loaded, items[i]) for i in group]).to(device)
        for spec in specs:
            tokens = _unit(patched_tokens(loaded.model, images, *spec)[0]).cpu()
            for b, i in enumerate(group):
                out[spec][i] = tokens[b : b + 1]
    return out


PATCHING_VARIANTS: dict[str, tuple[bool, bool, str | None]] = {
    "single path, FFN kept": (False, False, None),
    "single path, FFN skipped": (False, True, None),
    "dual path, FFN kept": (True, False, "qk"),
    "dual path, FFN skipped": (True, True, "qk"),
}
"""Per-block patching variants: name -> (dual_path, skip_ffn, kind of the other blocks). The dual
path runs from block 0 (the other blocks add their q-k output on the new path), so that one block's v-v
output is the only change: with the FFN kept its baseline is raw CLIP, with it skipped the factorial's
cell "q-k, FFN skipped, dual path, all blocks"."""


@torch.no_grad()
def block_patching(
    loaded: LoadedCLIP,
    items: Sequence[AnnotatedImage],
    classes: Sequence[str],
    variants: Sequence[str] = tuple(PATCHING_VARIANTS),
    attention: str = "vv",
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[list[dict], dict[tuple[str, int], list[dict]]]:
    """``attention`` (v-v) in ONE block at a time, under each variant of :data:`PATCHING_VARIANTS`.

    Returns:
        rows ``{"variant", "block" (-1: no block patched, the baseline), "mSC", "mSC_low", "mSC_high",
        "mIoU", "mIoU_low", "mIoU_high"}`` and the map records per ``(variant, block)``.
    Raises:
        TypeError: not a ViT tower. ValueError: an unknown variant.
    """
    n = tower_info(_vit(loaded)).num_blocks
    unknown = [v for v in variants if v not in PATCHING_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {tuple(PATCHING_VARIANTS)}")
    items = [it for it in items if it.masks]
    images = [it.name for it in items]
    texts = text_features(loaded.model, loaded.tokenizer, list(classes)).float().cpu()
    plan = {}
    for variant in variants:
        dual, skip, other = PATCHING_VARIANTS[variant]
        for block in range(-1, n):
            kinds = [other] * n
            if block >= 0:
                kinds[block] = attention
            plan[(variant, block)] = (tuple(kinds), dual, skip)
    computed = _spec_tokens(loaded, items, list(dict.fromkeys(plan.values())))
    scored: dict[Spec, list[dict]] = {}
    rows, records = [], {}
    for (variant, block), spec in plan.items():
        if spec not in scored:
            scored[spec] = _score(items, computed[spec], texts, classes, variant)
        recs = [{**r, "method": variant} for r in scored[spec]]
        records[(variant, block)] = recs
        row = {"variant": variant, "block": block}
        for metric in ("mSC", "mIoU"):
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = pair_bootstrap(
                recs, metric, images, resamples=resamples, seed=seed
            )
        rows.append(row)
    return rows, records


def locality_contrast(
    locality: Sequence[dict],
    records_a: Sequence[dict],
    records_b: Sequence[dict],
    kind_a: str = "vv",
    kind_b: str = "qk",
    region: str = "object",
    blocks: Sequence[int] | None = None,
) -> list[dict]:
    """Per image: the attention-locality gain of ``kind_a`` over ``kind_b`` next to the score-contrast
    gain of the cell using ``kind_a`` over the cell using ``kind_b``.

    Args:
        locality: records of :func:`~surgery_lib.eval.analysis.attention_locality` (``own_mass`` per
            image, block, kind, region), e.g. with ``exclude="3x3"``.
        records_a, records_b: map records of two cells on the same images (e.g. v-v and q-k on the dual
            path with the FFN skipped).
        blocks: the blocks averaged (default: all in ``locality``).
    Returns:
        records ``{"image", "locality_gain", "contrast_gain", "locality_a", "locality_b", "chance"}``
        for the images that have both (the contrast gain: per-image mean SC of a minus b).
    """
    sums: dict[tuple[str, str], list[float]] = {}
    chance: dict[str, list[float]] = {}
    for r in locality:
        if r["region"] != region or (blocks is not None and r["block"] not in blocks):
            continue
        sums.setdefault((r["image"], r["kind"]), []).append(float(r["own_mass"]))
        if r["kind"] == kind_a:
            chance.setdefault(r["image"], []).append(float(r["chance"]))
    sc_a, sc_b = per_image_mean(records_a), per_image_mean(records_b)
    out = []
    for image in sc_a:
        if image not in sc_b or (image, kind_a) not in sums or (image, kind_b) not in sums:
            continue
        la, lb = float(np.mean(sums[(image, kind_a)])), float(np.mean(sums[(image, kind_b)]))
        out.append(
            {
                "image": image,
                "locality_gain": la - lb,
                "contrast_gain": sc_a[image] - sc_b[image],
                "locality_a": la,
                "locality_b": lb,
                "chance": float(np.mean(chance[image])),
            }
        )
    return out


def bootstrap_correlation(
    x: Sequence[float], y: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Pearson correlation of paired values with a percentile bootstrap interval (pairs resampled) and a
    two-sided permutation p-value (``y`` shuffled ``resamples`` times; p counts the observed one).

    Returns:
        ``{"r", "low", "high", "p", "n"}``; ``r`` is NaN when either variable is constant.
    Raises:
        ValueError: fewer than 3 pairs or unequal lengths.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 3:
        raise ValueError(f"need two equally long lists of >= 3 values, got {a.shape} and {b.shape}")

    def corr(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        u = u - u.mean(axis=-1, keepdims=True)
        v = v - v.mean(axis=-1, keepdims=True)
        den = np.sqrt((u * u).sum(-1) * (v * v).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (u * v).sum(-1) / np.where(den > 0, den, 1.0), np.nan)

    r = float(corr(a, b))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    draws = corr(a[idx], b[idx])
    tail = (1.0 - level) / 2.0
    finite = draws[np.isfinite(draws)]
    low, high = np.quantile(finite, [tail, 1.0 - tail]) if finite.size else (np.nan, np.nan)
    perm = np.argsort(rng.random((resamples, a.size)), axis=1)
    null = corr(np.broadcast_to(a, (resamples, a.size)), b[perm])
    p = (int((np.abs(null) >= abs(r) - 1e-12).sum()) + 1) / (resamples + 1) if np.isfinite(r) else 1.0
    return {"r": r, "low": float(low), "high": float(high), "p": float(p), "n": int(a.size)}


@torch.no_grad()
def collapse_records(
    loaded: LoadedCLIP,
    images: torch.Tensor,
    depth: int,
    skip_ffn: bool = True,
    attention: str = "vv",
) -> list[dict]:
    """The single path's "collapse" measured against the dual path, per block (ViT).

    For vanilla CLIP, the single path and the dual path (``attention`` over the last ``depth`` blocks,
    no feature surgery) the stream entering each block and the final stream are recorded. Per block
    and path: the class token's cosine to vanilla CLIP's class token at the same point, the class token's
    norm and the mean patch-token norm (of the path whose patch tokens are read: the new path in dual
    surgery blocks). ``block = L`` is the final stream (before ``ln_post``) and ``block = L + 1`` the
    projected output (its class token's cosine is the one zero-shot reads; no patch norm).

    Args:
        images: preprocessed ``(B, 3, H, W)``.
    Returns:
        records ``{"path" ("vanilla"/"single"/"dual"), "block", "class_cosine", "class_norm",
        "patch_norm"}`` (means over the images).
    """
    n = tower_info(_vit(loaded)).num_blocks
    if not 1 <= depth <= n:
        raise ValueError(f"depth must be in 1..{n}, got {depth}")
    base = SurgeryConfig(attention=attention, skip_ffn=skip_ffn, depth=depth, feature_surgery=False)  # type: ignore[arg-type]
    configs = {"vanilla": SurgeryConfig.off(), "single": base.replace(dual_path=False), "dual": base}
    images = images.to(next(loaded.model.parameters()).device)
    streams, outputs = {}, {}
    for path, config in configs.items():
        trace = Trace()
        tokens, _ = dense_forward(loaded.model, images, config, trace)
        per_block = []
        for i in range(n):
            x = trace.values[f"blocks.{i}.input"]
            y = trace.values.get(f"new_path.{i}.input")
            per_block.append((class_token(x), patch_tokens(x if y is None else y)))
        final = trace.values["final"]
        per_block.append((class_token(final), patch_tokens(final)))
        streams[path], outputs[path] = per_block, class_token(tokens)
    records = []
    for path in configs:
        for i, (cls, patches) in enumerate(streams[path]):
            reference = streams["vanilla"][i][0]
            records.append(
                {
                    "path": path,
                    "block": i,
                    "class_cosine": float(F.cosine_similarity(cls.float(), reference.float(), dim=-1).mean()),
                    "class_norm": float(cls.float().norm(dim=-1).mean()),
                    "patch_norm": float(patches.float().norm(dim=-1).mean()),
                }
            )
        records.append(
            {
                "path": path,
                "block": n + 1,
                "class_cosine": float(
                    F.cosine_similarity(outputs[path].float(), outputs["vanilla"].float(), dim=-1).mean()
                ),
                "class_norm": float(outputs[path].float().norm(dim=-1).mean()),
                "patch_norm": float("nan"),
            }
        )
    return records


def _state(low: float, high: float) -> str:
    """How an interval sits against 0."""
    if low > 0:
        return "above 0"
    if high < 0:
        return "below 0"
    return "not distinguishable from 0"


def comparisons_at(depth: int, resnet: bool = False) -> dict[str, tuple[Cell, Cell]]:
    """The comparisons that separate the components at one depth (dual path; on a ModifiedResNet the
    attention pool's kinds against raw CLIP): name -> (cell, the cell it is compared with)."""
    if resnet:
        vv, identity = Cell("vv", False, False, 1), Cell("identity", False, False, 1)
        return {
            "v-v attention pool vs raw": (vv, RAW),
            "identity attention pool vs raw": (identity, RAW),
            "v-v vs identity attention pool": (vv, identity),
        }
    vv_kept, qk_skip = Cell("vv", False, True, depth), Cell("qk", True, True, depth)
    vv_skip, id_skip = Cell("vv", True, True, depth), Cell("identity", True, True, depth)
    return {
        "v-v attention alone (FFN kept) vs raw": (vv_kept, RAW),
        "FFN skipped alone (q-k attention) vs raw": (qk_skip, RAW),
        "both (v-v, FFN skipped) vs raw": (vv_skip, RAW),
        "v-v vs q-k attention, FFN skipped": (vv_skip, qk_skip),
        "FFN skipped vs kept, v-v attention": (vv_skip, vv_kept),
        "v-v vs identity attention, FFN skipped": (vv_skip, id_skip),
    }


def component_effects(
    result: Factorial, depth: int, metric: str = "mSC", resamples: int = 1000, seed: int = 0
) -> list[dict]:
    """The comparisons of :func:`comparisons_at` as paired differences (:func:`paired_difference`) of
    ``metric`` on the factorial's records.

    Returns:
        rows ``{"comparison", "depth", "cell", "baseline", "a", "b", "difference", "low", "high", "p"}``.
    """
    resnet = all(c.depth <= 1 and not c.dual_path for c in result.records)
    rows = []
    for name, (a, b) in comparisons_at(depth, resnet).items():
        if a not in result.records or b not in result.records:
            continue
        d = paired_difference(result.records[a], result.records[b], metric, resamples=resamples, seed=seed)
        rows.append({"comparison": name, "depth": depth, "cell": a.label, "baseline": b.label, **d})
    return rows


def verdict(result: Factorial, depth: int, n_blocks: int, model: str = "this model") -> str:
    """Which component turns the maps around at ``depth``, in words computed from the factorial's mSC
    intervals: a component "turns the maps around on its own" when its cell's interval lies above 0
    while raw CLIP's lies below 0 (a ModifiedResNet: its attention-pool kinds)."""
    raw = result.row(RAW)

    def say(cell: Cell) -> str:
        r = result.row(cell)
        low, high = r["mSC_low"], r["mSC_high"]
        return f"mSC {r['mSC']:+.1f} [{low:+.1f}, {high:+.1f}] ({_state(low, high)})"

    opening = f"On {model}, raw CLIP: {say(RAW)}."
    raw_below = raw["mSC_high"] < 0
    resnet = all(c.depth <= 1 and not c.dual_path for c in result.records)
    if resnet:
        kinds = {
            "v-v attention pool": Cell("vv", False, False, 1),
            "identity attention pool": Cell("identity", False, False, 1),
        }
        parts = [f"{name}: {say(cell)}" for name, cell in kinds.items() if cell in result.records]
        above = [n for n, c in kinds.items() if c in result.records and result.row(c)["mSC_low"] > 0]
        if raw_below:
            tail = f"Turns the maps around: {', '.join(above) or 'none'}."
        else:
            tail = (
                "Raw CLIP's maps are not opposite here (its interval is not below 0), so nothing is turned "
                f"around; mSC above 0 with: {', '.join(above) or 'none'}."
            )
        return (
            f"{opening} {'; '.join(parts)}. The only attention of a ModifiedResNet is its attention pool "
            f"(no FFN or dual path to separate). {tail}"
        )
    alone = {
        "skipping the FFN (q-k attention kept)": Cell("qk", True, True, depth),
        "v-v attention (FFN kept)": Cell("vv", False, True, depth),
    }
    both = Cell("vv", True, True, depth)
    parts = [f"{name}: {say(cell)}" for name, cell in alone.items()]
    turning = [n for n, c in alone.items() if raw_below and result.row(c)["mSC_low"] > 0]
    if turning:
        conclusion = f"on its own, {' and '.join(turning)} turns the maps around"
    elif raw_below and result.row(both)["mSC_low"] > 0:
        conclusion = "neither component turns the maps around on its own; both together do"
    elif not raw_below:
        conclusion = (
            "raw CLIP's maps are not opposite here (its interval is not below 0), so there is nothing to turn"
        )
    else:
        conclusion = "no arm turns the maps around at this depth (no interval above 0)"
    return (
        f"{opening} Dual path over the last {depth} of {n_blocks} blocks ({100 * depth / n_blocks:.0f} % of "
        f"the tower; the paper: 6 of 12, 50 %): {'; '.join(parts)}; both: {say(both)}. So {conclusion}."
    )
