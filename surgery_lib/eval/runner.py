"""Evaluate raw CLIP or CLIP Surgery on a dataset: explainability, segmentation or multi-label mAP.

    python -m surgery_lib.eval.runner --task segment --dataset voc --root data/VOCdevkit \\
        --model toy-vit --pretrained default --method surgery --out runs/voc-surgery

Tasks (datasets: :mod:`surgery_lib.data.datasets`):

* ``explain``: per (image, class present) the similarity map at the label's size against the class
  mask, ignore pixels left out (:func:`surgery_lib.eval.metrics.masked_map_scores`): mIoU, mSC, pointing
  game, share of "opposite" maps. Besides the dense methods it scores the gradient explainers (one
  backward pass per class present) and the nulls of :data:`NULL_METHODS`; any dense method takes the
  feature-surgery switch ``<name>+fs`` / ``<name>-fs`` (:func:`resolve_eval_method`), and
  :func:`explain_protocol` says which part of a method's ``--protocol-preset`` applies to this task.
* ``segment``: open-vocabulary segmentation (:mod:`surgery_lib.eval.segmentation`, ``--protocol paper``,
  ``sliding`` (alias ``common``) or ``official``: SCLIP's, NACLIP's or ClearCLIP's own segmentor, exact),
  mIoU from the summed confusion matrix.
* ``multilabel``: image-level scores per class, mAP (:func:`surgery_lib.eval.metrics.mean_average_precision`);
  ``raw``: vanilla CLIP, softmax over the classes of 100 × the class token's cosine similarity;
  ``surgery``: the class token's feature-surgery similarity (the paper's multi-class form). On
  segmentation datasets a class is a positive of an image when any of its pixels is labelled.

Outputs in ``--out``: ``results.json`` (summary, per-class scores, settings, timing), ``results.csv``
(per-class table), ``run.json`` (the settings a resumed run must match, with a sha256 of the model's
weights: retrained weights under the same name never reuse old records) and ``parts/rank<r>.jsonl``
(one record per finished image, appended after every batch). A rerun with the same settings reads the
records and computes only the images that have none, so an interrupted run resumes where it stopped.

The record store never changes a result silently. Each record line carries a ``sha256`` over the
canonical JSON of the rest of the record and of ``run.json`` (so an edited value, or a record copied
from a run with other settings or weights, is detected).

The records know which data they were computed from. ``run.json`` holds ``--root`` resolved to an
absolute path (a relative root typed in another folder names other data) and ``classes_sha256``, a
digest of the class names, prompts, background and ignore index; a resume with another root or other
classes is refused naming the setting (and both roots). Each record holds ``data``, the sha256 of the
bytes of its image file and label map and of its dataset entry (id, label mapping, tags, vocabulary:
what ``labels.json`` or the lists say about it), and ``batch_sha256``, a digest of the ``data`` of every
image of its batch. Before computing anything a resume re-hashes the files of every batch that has
records and refuses a mismatch, naming the image, the file that changed (or its entry in the list
file) and what to do. Content digests, not sizes and ``mtime``: a file merely touched (a ``git
checkout``, a copy) is no change, and an edit that keeps size and ``mtime`` is still caught; the cost is
reading each stored image's files once more per resume (no decoding), small next to the model. Run
folders of the earlier record format ``jsonl+sha256/1`` hold no fingerprints: they are refused with a
message (delete the folder or use another ``--out``), since their records cannot be checked.

Reading the store:

* a last line without its newline (a write interrupted by a crash) is dropped and that image is
  recomputed (the own shard is cut back to its last complete line first);
* any other bad line — not UTF-8, not JSON, NaN or infinite numbers, no or a wrong ``sha256``, no
  integer ``index`` / string ``id`` — and a second record of the same image with other content (beyond
  :data:`RESUME_RTOL`) are refused: the run stops with a ``SystemExit`` naming ``file:line`` (delete
  that line to have the image recomputed, or use another ``--out``); a broken ``run.json`` is refused
  naming the file;
* records are written with finite numbers only (a NaN would stop the run, not be stored).

Only one run at a time may use an ``--out`` folder: rank 0 holds an exclusive lock on ``out/.lock``
(``fcntl.flock``, non-blocking) for the whole run, and a second run on the same folder stops at once
with a message saying so.

Batches are fixed: batch ``k`` always holds images ``[k·B, (k+1)·B)`` of the whole dataset in its sorted
order (``B`` = ``--batch-size``), whatever ``--limit`` is and whatever is already stored. When an image
of a batch has no record, the whole batch is computed again, the images that have records riding along
(their stored records are kept; records are stored for images under ``--limit`` only), so every record
comes from the batch composition a fresh full run uses; ``--limit`` thus computes up to ``B - 1``
images beyond the limit (the rest of the last batch), without storing them. Under ``torchrun`` batch
``k`` runs on rank ``k mod world_size`` (gloo on CPU, nccl on GPU), confusion matrices are summed with
``all_reduce`` and per-image records gathered on rank 0.

What is exact: on one machine, with the same thread count (``OMP_NUM_THREADS`` /
``torch.get_num_threads()``), the same ``--batch-size`` and the same settings, a resumed, repaired or
larger-``--limit`` run is bit-equal to a fresh run (``--batch-size`` is part of ``run.json``: batched
matrix products round differently by batch composition), and a ``torchrun`` run to a single process
with the per-process thread count (torchrun sets ``OMP_NUM_THREADS=1`` unless it is set). Across
machines, CPU instruction sets (``ATEN_CPU_CAPABILITY``) or thread counts, numbers agree to about 1e-6
relative, not bit for bit. The store compares numbers in one place only: two records of one image
count as the same when their floats agree to :data:`RESUME_RTOL` (1e-6) relative (the first is kept);
a larger difference is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.data.datasets import DATASETS, Dataset, Sample, load_dataset
from surgery_lib.eval.intervals import INTERVAL_LEVEL, INTERVAL_RESAMPLES, _explain_meter, summary_intervals
from surgery_lib.eval.launcher import _barrier, _init_distributed
from surgery_lib.eval.metrics import (
    average_precision,
    masked_map_scores,
    mean_average_precision,
)
from surgery_lib.eval.nulls import centre_prior_map, random_map
from surgery_lib.eval.presets import FEATURE_SURGERY_SUFFIXES, NULL_DRAWS, NULL_METHODS, resolve_eval_method
from surgery_lib.eval.segmentation import SEGMENTORS, ConfusionMatrix, Protocol, segment_samples
from surgery_lib.eval.store import (
    _UNFINGERPRINTED_FORMATS,
    RECORD_FORMAT,
    _append,
    _batch_sha256,
    _classes_sha256,
    _lock,
    _read_records,
    _read_run_json,
    _repair,
    _run_key,
    _weights_fingerprint,
)
from surgery_lib.maps.explain import encode_image_tokens, explain, similarity
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.images import image_normalisation, reference_transform
from surgery_lib.maps.text import TEMPLATE_SETS, empty_prompt_features, text_features
from surgery_lib.methods import GRADIENT_METHODS, METHODS, PROTOCOL_PRESETS
from surgery_lib.model import DEFAULT_MODEL, LoadedCLIP, load_clip, patch_tokens

TASKS: tuple[str, ...] = ("explain", "segment", "multilabel")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """One evaluation run, validated on construction (the command line parses into this).

    Attributes:
        task: one of :data:`TASKS`.
        dataset: one of :data:`~surgery_lib.data.datasets.DATASETS`; ``root`` is its folder.
        out: the run folder (results, resumable records).
        split: dataset split (default: the dataset's).
        model, pretrained, checkpoint: what :func:`~surgery_lib.model.loading.load_clip` loads.
        method: a name of :func:`resolve_eval_method`: a dense method of
            :data:`~surgery_lib.methods.METHODS`, optionally with the feature-surgery switch ``+fs`` /
            ``-fs`` (:data:`FEATURE_SURGERY_SUFFIXES`); for ``task="explain"`` also a gradient
            explainer of :data:`~surgery_lib.methods.GRADIENT_METHODS` (one backward pass per class
            present in the image, through :func:`~surgery_lib.maps.explain.explain`; the default
            templates only) or a null of :data:`NULL_METHODS`.
        image_size: n×n input for explain, multilabel and the paper protocol (default: native); the
            short side for the sliding protocol (default: the dataset's).
        protocol, window, stride, bg_threshold: segmentation protocol (``paper``, ``sliding`` — alias
            ``common``, this project's common sliding-window protocol — or ``official``; default
            ``paper``). ``official`` runs the official segmentor of SCLIP, NACLIP or ClearCLIP exactly
            (:class:`~surgery_lib.eval.segmentation.OfficialProtocol`: its window placement and padding,
            resizes, PAMR and post-processing, ``bg_threshold`` as its ``prob_thd``, ``window`` 0 the
            whole image), with the values of ``protocol_preset`` (default: the method's own, which must
            be one of those three).
        area_thd: ``official`` with SCLIP's segmentor: its ``area_thd`` (a foreground class whose
            argmax area is not above ``area_thd`` × the foreground area is dropped; default: the
            preset's, 0.1 on VOC21, else off).
        templates: prompt template set of the text features (:data:`~surgery_lib.maps.text.TEMPLATE_SETS`:
            ``surgery85``, the default, ``openai80`` or ``single``). The empty prompt's features
            (CLIP Surgery's redundant features) always use ``surgery85``.
        logit_scale: ``sliding``: logits = scale × similarity before the softmax (default 100). The
            ``paper`` protocol takes the argmax of similarities and does not use it.
        pamr_steps: PAMR iterations (dilations 8, 16) on the upsampled per-class maps before the
            argmax, segmentation only (default 0: none).
        protocol_preset: ``None`` or a key of :data:`PROTOCOL_PRESETS` (a method name). The preset fills
            the fields left unset (``None``) among protocol, templates, image_size, window, stride,
            logit_scale, bg_threshold and pamr_steps; fields given explicitly win. What each preset
            reproduces (METHODS.md §9):

            * ``surgery``: CLIP Surgery's own protocol (whole image at the native size, 85 templates,
              argmax over the classes) — the defaults.
            * ``maskclip``: MaskCLIP's whole-image inference with 85 templates, at 512×512 (MaskCLIP
              resizes the short side to 512 keeping the aspect ratio, 520 long side on Context).
            * ``sclip``: SCLIP's main table (short side 336, or the dataset's, windows 224 / stride 112,
              80 OpenAI templates, logit scale 40; 65 on VOC21, 50 on Context and COCO-Object, background
              where the top probability < 0.1, no PAMR; set ``pamr_steps=10`` for its "†" rows).
            * ``naclip``: NACLIP's README protocol (as ``sclip`` with logit scale 40 and PAMR 10 steps);
              ``pamr_steps=0`` gives the paper's main row.
            * ``clearclip``: ClearCLIP (short side 448, windows 448 / stride 224, 80 templates, logit scale
              50, background threshold 0.5 on VOC21, 0.15 on Context, 0.4 on COCO-Object).
            * ``gem``: GEM's demo transform (whole image at 448×448, the single template "a photo of a
              {}."); its softmax max-probability background threshold is not this protocol's min-max
              one, so ``bg_threshold`` keeps the default.

            Not reproducible offline, or not expressible here: SCLIP's and NACLIP's per-class synonym
            lists (max over synonyms) and their 26 background stuff words, ClearCLIP's "background"
            class (here background is decided by the threshold alone), SCLIP's VOC21 area threshold,
            NACLIP's whole-image inference on VOC, Cityscapes' 224/224 windows in ClearCLIP, MaskCLIP's
            key smoothing / prompt denoising, GEM's min-max batched ×100 maps, and fp16 inference. The
            model side of each method is ``method``, not the preset.
        limit: only the first N images (sorted order). The last batch is still computed whole (fixed
            batches, see the module doc): up to ``batch_size - 1`` more images go through the model.
        batch_size: images per batch (fixed batches ``[k·B, (k+1)·B)``; a resume must use the same);
            device: ``auto``, ``cpu`` or ``cuda``; quiet: no progress bar, no summary on stdout;
        progress: the per-image progress bar on stderr (``None``: unless ``quiet``).
    """

    task: str
    dataset: str
    root: Path
    out: Path
    split: str | None = None
    model: str = DEFAULT_MODEL
    pretrained: str = "default"
    checkpoint: Path | None = None
    method: str = "surgery"
    image_size: int | None = None
    protocol: str | None = None
    window: int | None = None
    stride: int | None = None
    bg_threshold: float | None = None
    templates: str | None = None
    logit_scale: float | None = None
    pamr_steps: int | None = None
    protocol_preset: str | None = None
    area_thd: float | None = None
    limit: int | None = None
    batch_size: int = 8
    device: str = "auto"
    quiet: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        for name in ("root", "out", "checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {DATASETS}")
        resolved = resolve_eval_method(self.method)
        if self.protocol == "common":
            object.__setattr__(self, "protocol", "sliding")
        if self.protocol == "official":
            self._official_preset()
        if self.protocol_preset is not None:
            if self.protocol_preset not in PROTOCOL_PRESETS:
                raise ValueError(
                    f"unknown protocol preset {self.protocol_preset!r}; "
                    f"expected one of {tuple(PROTOCOL_PRESETS)}"
                )
            for name, value in PROTOCOL_PRESETS[self.protocol_preset].items():
                if name == "official":  # the official segmentor's own values: see _official_preset
                    continue
                if isinstance(value, dict):
                    value = value.get(self.dataset, value[None])
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        for name, default in (("protocol", "paper"), ("templates", "surgery85"), ("pamr_steps", 0)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if not isinstance(resolved, SurgeryConfig):
            kind = "a gradient explainer" if isinstance(resolved, GradientConfig) else "a null map"
            if self.task != "explain":
                raise ValueError(
                    f"method {self.method!r} is {kind}: it is scored in the explain task only, not in "
                    f"--task {self.task}"
                )
            if self.templates != "surgery85":
                raise ValueError(
                    f"method {self.method!r} is {kind}: it uses the default prompt ensemble (surgery85), "
                    f"not the template set {self.templates!r}"
                )
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        if self.templates not in TEMPLATE_SETS:
            known = tuple(TEMPLATE_SETS)
            raise ValueError(f"unknown template set {self.templates!r}; expected one of {known}")
        if isinstance(self.pamr_steps, bool) or not isinstance(self.pamr_steps, int):
            raise TypeError(f"pamr_steps must be an int, got {self.pamr_steps!r}")
        if self.pamr_steps < 0:
            raise ValueError(f"pamr_steps must be >= 0, got {self.pamr_steps}")
        if self.logit_scale is not None:
            if isinstance(self.logit_scale, bool) or not isinstance(self.logit_scale, int | float):
                raise TypeError(f"logit_scale must be a number, got {self.logit_scale!r}")
            if not math.isfinite(self.logit_scale) or self.logit_scale <= 0:
                raise ValueError(f"logit_scale must be a finite number > 0, got {self.logit_scale}")
        for name in ("image_size", "window", "stride", "limit", "batch_size"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            whole = name == "window" and self.protocol == "official" and value == 0  # whole image
            if value < 1 and not whole:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.area_thd is not None:
            if self.protocol != "official" or self.protocol_preset != "sclip":
                raise ValueError("area_thd is SCLIP's rule: it needs --protocol official with SCLIP's preset")
            if not 0.0 <= self.area_thd <= 1.0:
                raise ValueError(f"area_thd must be in [0, 1], got {self.area_thd}")
        if self.bg_threshold is not None and not 0.0 <= self.bg_threshold <= 1.0:
            raise ValueError(f"bg_threshold must be in [0, 1], got {self.bg_threshold}")

    def _official_preset(self) -> None:
        """``--protocol official``: the segmentor's preset (default: the method's own) and its
        official-only values (``PROTOCOL_PRESETS[preset]["official"]``) for the fields left unset."""
        if self.task != "segment":
            raise ValueError(f"--protocol official is a segmentation protocol, not one of --task {self.task}")
        if self.protocol_preset is None:
            base = self.method
            for suffix in FEATURE_SURGERY_SUFFIXES:
                base = base.removesuffix(suffix)
            object.__setattr__(self, "protocol_preset", base)
        if self.protocol_preset not in SEGMENTORS:
            raise ValueError(
                f"--protocol official runs the official segmentor of {SEGMENTORS}: give one of them as "
                f"--protocol-preset (method {self.method!r} has none of its own)"
            )
        for name, value in dict(PROTOCOL_PRESETS[self.protocol_preset]).get("official", {}).items():
            if isinstance(value, dict):
                value = value.get(self.dataset, value[None])
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)


PROTOCOLS: tuple[str, ...] = ("paper", "sliding", "official")
"""The segmentation protocols (``common`` is accepted as an alias of ``sliding``)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m surgery_lib.eval.runner", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument(
        "--root", type=Path, required=True, help="the dataset folder (layouts: surgery_lib.data.datasets)"
    )
    p.add_argument("--split", help="dataset split (default: val; test for nus_wide)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a shipped toy model or an open_clip name")
    p.add_argument("--pretrained", default="default", help="pretrained tag or weights file (see load_clip)")
    p.add_argument("--checkpoint", type=Path, help="a local weights file")
    p.add_argument(
        "--method",
        default="surgery",
        help=f"a method or a comma-separated list ({', '.join(METHODS)}; a dense method with the suffix "
        "+fs / -fs: feature surgery on / off; explain task: also the gradient explainers "
        f"{', '.join(GRADIENT_METHODS)} and the nulls {', '.join(NULL_METHODS)}); several methods run one "
        "evaluation each in --out/<method> and write results_by_method.csv/json in --out",
    )
    size_help = (
        "input side: n×n for explain, multilabel and the paper protocol (default: the model's native size), "
        "the short side for the sliding protocol (default: the dataset's)"
    )
    p.add_argument("--image-size", type=int, help=size_help)
    p.add_argument(
        "--protocol",
        choices=(*PROTOCOLS, "common"),
        help="segmentation protocol (default paper); common = sliding (this project's common protocol); "
        "official = the method's official segmentor, exact (SCLIP, NACLIP, ClearCLIP)",
    )
    p.add_argument("--area-thd", type=float, help="--protocol official, SCLIP: its area threshold")
    p.add_argument("--window", type=int, help="sliding window side (default 224)")
    p.add_argument("--stride", type=int, help="sliding window stride (default 112)")
    p.add_argument("--bg-threshold", type=float, help="background threshold (default 0.5)")
    p.add_argument(
        "--templates", choices=tuple(TEMPLATE_SETS), help="prompt template set (default surgery85)"
    )
    p.add_argument("--logit-scale", type=float, help="sliding protocol: logit scale (default 100)")
    p.add_argument(
        "--pamr-steps", type=int, help="segmentation: PAMR steps on the per-class maps (default 0: none)"
    )
    p.add_argument(
        "--protocol-preset",
        choices=tuple(PROTOCOL_PRESETS),
        help="a method's published inference protocol: fills the protocol options not given "
        "(see EvalSettings)",
    )
    p.add_argument("--limit", type=int, help="only the first N images (in sorted order)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary on stdout")
    return p


# ---------------------------------------------------------------------------------------------------
# the three tasks: a batch of samples -> one record per sample


class _Context:
    """What every batch needs: model, text features, config, protocol."""

    def __init__(
        self, args: EvalSettings, dataset: Dataset, device: torch.device, loaded: LoadedCLIP | None
    ) -> None:
        self.args, self.dataset = args, dataset
        self.clip = loaded or load_clip(
            args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=device
        )
        self.model, self.tokenizer = self.clip.model, self.clip.tokenizer
        self.config = resolve_eval_method(args.method)  # SurgeryConfig, GradientConfig or a null's name
        self.size = args.image_size or self.clip.image_size
        fg = dataset.foreground
        prompts = [dataset.prompts[i] for i in fg]
        self.texts = text_features(self.model, self.tokenizer, prompts, templates=args.templates)
        self.position = {c: j for j, c in enumerate(fg)}
        self.empty = empty_prompt_features(self.model, self.tokenizer)
        self.protocol = Protocol.for_dataset(
            args.protocol,
            dataset.name,
            image_size=args.image_size if args.protocol == "paper" else None,
            short_side=args.image_size if args.protocol in ("sliding", "official") else None,
            window=args.window,
            stride=args.stride,
            background_threshold=args.bg_threshold,
            logit_scale=args.logit_scale,
            templates=args.templates,
            pamr_steps=args.pamr_steps,
            segmentor=args.protocol_preset if args.protocol == "official" else None,
            area_threshold=args.area_thd,
        )

    def candidates(self, sample: Sample) -> list[int]:
        """Dataset class indices the image is evaluated on (its vocabulary, background excluded)."""
        fg = self.dataset.foreground
        return list(fg) if sample.vocabulary is None else [c for c in fg if c in sample.vocabulary]

    def texts_for(self, candidates: Sequence[int]) -> torch.Tensor:
        return self.texts[[self.position[c] for c in candidates]]

    def tokens(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, tuple[int, int]]:
        transform = reference_transform(self.size, *image_normalisation(self.model))
        config = self.config if isinstance(self.config, SurgeryConfig) else METHODS["raw"]
        images = torch.stack([transform(s.image) for s in samples])
        return encode_image_tokens(self.model, images, config, texts=self.texts)

    def token_grid(self) -> tuple[int, int]:
        """The token grid ``(h, w)`` of the model at this run's input size (one vanilla forward)."""
        if not hasattr(self, "_grid"):
            probe = torch.zeros(1, 3, self.size, self.size)
            self._grid = encode_image_tokens(self.model, probe, METHODS["raw"])[1]
        return self._grid


def _null_maps(ctx: _Context, sample: Sample, count: int, shape: tuple[int, int]) -> list[torch.Tensor]:
    """The maps of a null method for one (image, class) pair: ``(H, W)`` each (one for the centre
    prior, :data:`NULL_DRAWS` for the random map, seeded by the image id and ``count``, the pair's
    position in the image, so that a record does not depend on its batch)."""
    if ctx.config == "null:centre":
        return [centre_prior_map(shape)]
    seed = int(hashlib.sha256(f"{sample.image_id}|{count}".encode()).hexdigest()[:12], 16)
    generator = torch.Generator().manual_seed(seed)
    return [random_map(shape, ctx.token_grid(), generator) for _ in range(NULL_DRAWS)]


def _explain_maps(
    ctx: _Context, samples: Sequence[Sample]
) -> Iterator[tuple[list[int], torch.Tensor | list[list[torch.Tensor]] | None]]:
    """Per sample ``(present class indices, maps (H, W, P) of those classes or a list of null draws)``:
    a dense method's maps over the image's candidate classes (feature surgery over them), a gradient
    explainer's per present class (:func:`~surgery_lib.maps.explain.explain`), a null's."""
    dense = isinstance(ctx.config, SurgeryConfig)
    if dense:
        tokens, grid = ctx.tokens(samples)
    transform = reference_transform(ctx.size, *image_normalisation(ctx.model))
    for b, sample in enumerate(samples):
        cands = ctx.candidates(sample)
        label = torch.from_numpy(sample.label)
        present = [c for c in cands if bool((label == c).any())]
        shape = tuple(label.shape)
        if not present:
            yield present, None
        elif dense:
            sim = similarity(tokens[b : b + 1], ctx.texts_for(cands), ctx.config, ctx.empty)
            cols = [cands.index(c) for c in present]
            yield present, similarity_map(patch_tokens(sim)[..., cols].cpu(), shape, grid)[0]
        elif isinstance(ctx.config, GradientConfig):
            prompts = [ctx.dataset.prompts[c] for c in present]
            image = transform(sample.image)[None]
            yield (
                present,
                explain(ctx.model, ctx.tokenizer, image, prompts, method=ctx.config, size=shape).maps[0],
            )
        else:
            yield present, [_null_maps(ctx, sample, j, shape) for j in range(len(present))]


def _explain_batch(ctx: _Context, samples: Sequence[Sample]) -> list[dict]:
    records = []
    for sample, (present, maps) in zip(samples, _explain_maps(ctx, samples), strict=True):
        label = torch.from_numpy(sample.label)
        valid = label != ctx.dataset.ignore_index
        pairs, skipped = [], []
        for j, c in enumerate(present):
            name = ctx.dataset.class_names[c]
            heats = maps[j] if isinstance(maps, list) else [maps[:, :, j].cpu()]
            try:
                scores = [masked_map_scores(heat, label == c, valid) for heat in heats]
            except ValueError:
                skipped.append(name)  # the class covers every evaluated pixel: SC is undefined
                continue
            for s in scores:
                pairs.append({"class": name, "iou": s.iou, "sc": s.score_contrast, "hit": s.pointing_hit})
        records.append({"pairs": pairs, "skipped": skipped})
    return records


def _segment_batch(ctx: _Context, samples: Sequence[Sample]) -> list[dict]:
    preds = segment_samples(ctx.clip, ctx.dataset, samples, ctx.config, ctx.protocol, ctx.args.batch_size)
    records = []
    for pred, sample in zip(preds, samples, strict=True):
        cm = ConfusionMatrix(len(ctx.dataset.class_names), ctx.dataset.ignore_index)
        cm.update(pred, sample.label)
        records.append({"confusion": cm.sparse()})
    return records


def _multilabel_batch(ctx: _Context, samples: Sequence[Sample]) -> list[dict]:
    tokens, _ = ctx.tokens(samples)
    records = []
    k = len(ctx.dataset.class_names)
    for b, sample in enumerate(samples):
        cands = ctx.candidates(sample)
        texts = ctx.texts_for(cands)
        if ctx.args.method == "raw":
            row = torch.softmax(100.0 * tokens[b : b + 1, 0] @ texts.t(), dim=-1)[0]
        else:
            row = similarity(tokens[b : b + 1], texts, ctx.config, ctx.empty)[0, 0]
        scores: list[float | None] = [None] * k
        targets = [-1] * k
        if sample.tags is not None:
            present = {int(c) for c in np.nonzero(sample.tags)[0]}
        else:
            present = {int(c) for c in np.unique(sample.label)}
        for j, c in enumerate(cands):
            scores[c] = float(row[j])
            targets[c] = int(c in present)
        records.append({"scores": scores, "targets": targets})
    return records


_BATCH_FUNCTIONS = {"explain": _explain_batch, "segment": _segment_batch, "multilabel": _multilabel_batch}


def _summarise(task: str, dataset: Dataset, records: Sequence[dict], confusion: ConfusionMatrix) -> tuple:
    """``(summary dict, per-class rows)`` of the task from all records in image order."""
    names = dataset.class_names
    if task == "explain":
        meter = _explain_meter(records)
        skipped = sum(len(r["skipped"]) for r in records)
        summary = {**meter.summary(), "skipped_pairs": skipped} if len(meter) else {"skipped_pairs": skipped}
        rows = [
            {"class": c, "count": v["count"], "iou": 100.0 * v["iou"], "score_contrast": v["score_contrast"],
             "pointing_game": 100.0 * v["pointing_game"]}
            for c, v in meter.per_class().items()
        ]  # fmt: skip
        return summary, rows
    if task == "segment":
        iou = confusion.iou_per_class()
        gt, pred = confusion.matrix.sum(1), confusion.matrix.sum(0)
        summary = {"mIoU": confusion.miou(), "pixel_accuracy": confusion.pixel_accuracy()}
        summary["classes_evaluated"] = int((~torch.isnan(iou)).sum())
        rows = [
            {
                "class": names[c],
                "iou": 100.0 * float(iou[c]),
                "gt_pixels": int(gt[c]),
                "pred_pixels": int(pred[c]),
            }
            for c in range(len(names))
            if not torch.isnan(iou[c])
        ]
        return summary, rows
    scores = torch.tensor(
        [[0.0 if s is None else s for s in r["scores"]] for r in records], dtype=torch.float64
    )
    targets = torch.tensor([r["targets"] for r in records], dtype=torch.int64)
    ap = average_precision(scores, targets)
    m, excluded = mean_average_precision(scores, targets)
    summary = {"mAP": m, "classes_evaluated": len(names) - len(excluded)}
    summary["classes_without_positives"] = [names[c] for c in excluded if bool((targets[:, c] >= 0).any())]
    rows = [
        {"class": names[c], "ap": 100.0 * float(ap[c]), "positives": int((targets[:, c] > 0).sum())}
        for c in range(len(names))
        if not torch.isnan(ap[c])
    ]
    return summary, rows


def _write_results(out: Path, result: dict, rows: Sequence[dict]) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    with (out / "results.csv").open("w", newline="") as f:
        fields = list(rows[0]) if rows else ["class"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _settings(args: EvalSettings, model: nn.Module, dataset: Dataset | None = None) -> dict:
    """What a resumed run must share with the run that wrote the records: the weights, the resolved
    ``--root`` (not as typed: a relative root names other data from another folder) and the digest of
    ``dataset``'s classes (:func:`_classes_sha256`; a run always passes its dataset)."""
    keys = ("task", "dataset", "root", "split", "model", "pretrained", "checkpoint", "method", "image_size",
            "protocol", "window", "stride", "bg_threshold", "batch_size")  # fmt: skip
    settings = {
        k: str(getattr(args, k)) if isinstance(getattr(args, k), Path) else getattr(args, k) for k in keys
    }
    settings["root"] = str(Path(args.root).resolve())
    if dataset is not None:
        settings["classes_sha256"] = _classes_sha256(dataset)
    # protocol options added later: recorded only when not at their defaults, so that runs written
    # before they existed (same defaults, same results) still resume
    defaults = {
        "templates": "surgery85",
        "logit_scale": None,
        "pamr_steps": 0,
        "protocol_preset": None,
        "area_thd": None,
    }
    settings.update({k: getattr(args, k) for k, v in defaults.items() if getattr(args, k) != v})
    if args.pamr_steps:  # PAMR's rule changed (it now follows the official code): older runs are refused
        settings["pamr_rule"] = PAMR_RULE
    return {**settings, "weights_sha256": _weights_fingerprint(model)}


PAMR_RULE = "official-v2"
"""The PAMR a run with ``pamr_steps > 0`` used, recorded in its ``run.json``: runs written with the earlier
rule (a softmax per dilation, no 0.1 factor) hold other numbers and are refused, not resumed."""


def _check_settings(
    out: Path, settings: dict, rank: int, world: int, held: contextlib.ExitStack | None = None
) -> bytes:
    """Create ``out`` (rank 0, holding its lock in ``held``), write or compare ``run.json``; returns the
    key the records' checksums are bound to."""
    settings = {**settings, "record_format": RECORD_FORMAT}
    path = out / "run.json"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if held is not None:
            held.enter_context(_lock(out))
        (out / "parts").mkdir(exist_ok=True)
        if path.is_file():
            before = _read_run_json(path)
            if before.get("record_format") in _UNFINGERPRINTED_FORMATS:
                raise SystemExit(
                    f"{out} holds records written by an earlier version of this program (record format "
                    f"{before['record_format']!r}) that kept no fingerprint of the data they were computed "
                    "from (resolved --root, file digests): they cannot be checked against the data and "
                    "are not reused. Delete the folder (or its run.json and parts/) to compute them again, "
                    "or use another --out"
                )
            if before.get("record_format") != RECORD_FORMAT:
                raise SystemExit(
                    f"{out} holds results written by another version of this program (record format "
                    f"{before.get('record_format')!r}, not {RECORD_FORMAT!r}): use another --out or delete it"
                )
            if before != settings:
                changed = sorted(
                    k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k)
                )
                details = "".join(
                    f"; {k} was {before.get(k)!r}, now {settings.get(k)!r}" for k in changed if k == "root"
                )
                if "classes_sha256" in changed:
                    details += "; the dataset's class names or their prompts changed"
                raise SystemExit(
                    f"{out} holds results of a run with other settings ({', '.join(changed)}){details}: "
                    "use another --out or delete it"
                )
        else:
            partial = path.with_name("run.json.tmp")
            partial.write_text(json.dumps(settings, indent=2) + "\n")
            os.replace(partial, path)
    _barrier(world)
    return _run_key(settings)


def _verify_batch(
    parts: Path, dataset: Dataset, batch: Sequence[int], finished: dict[int, dict], prints: Sequence[dict]
) -> str:
    """Check the stored records of ``batch`` against the data now (``prints``: the fingerprint of each
    image of the batch): each record's own files and entry, then the rest of its batch. Returns the
    batch's digest; a ``SystemExit`` naming the image, the files that changed and what to do."""
    digest = _batch_sha256(prints)
    fix = (
        "the dataset changed in place since its records were computed: use another --out "
        "(or restore the data)"
    )
    stored = [
        (i, finished[i], fingerprint) for i, fingerprint in zip(batch, prints, strict=True) if i in finished
    ]
    for i, record, fingerprint in stored:  # first each record's own files and entry
        entry, data = dataset.entries[i], record.get("data")
        if not isinstance(data, dict) or not isinstance(record.get("batch_sha256"), str):
            raise SystemExit(
                f"{parts}: the record of image {i} ({record['id']!r}) has no data fingerprint; {fix}"
            )
        if data != fingerprint:
            sources = ", ".join(str(p) for p in dataset.sources) or "the dataset's lists"
            files = {
                "image": f"its image file {entry.image_path}",
                "label": f"its label map {entry.label_path}",
                "entry": f"its entry in {sources}",
            }
            changed = [files[k] for k in ("image", "label", "entry") if data.get(k) != fingerprint.get(k)]
            raise SystemExit(
                f"{parts}: the record of image {i} ({record['id']!r}) was computed from other data: "
                f"{' and '.join(changed)} changed; {fix}"
            )
    for i, record, _ in stored:  # then the images computed beside it
        if record["batch_sha256"] != digest:
            others = ", ".join(str(dataset.entries[j].image_path) for j in batch if j not in finished)
            raise SystemExit(
                f"{parts}: the record of image {i} ({record['id']!r}) was computed in the batch of images "
                f"{batch[0]}–{batch[-1]}, and an image of that batch without a record changed since "
                f"({others}: the image, its label map or its entry); {fix}"
            )
    return digest


def _run(args: EvalSettings, rank: int, world: int, device: torch.device, loaded: LoadedCLIP | None) -> int:
    """:func:`_run_held`, with the run folder's lock released when the run ends (also on errors)."""
    with contextlib.ExitStack() as held:
        return _run_held(args, rank, world, device, loaded, held)


def _run_held(
    args: EvalSettings,
    rank: int,
    world: int,
    device: torch.device,
    loaded: LoadedCLIP | None,
    held: contextlib.ExitStack,
) -> int:
    dataset = load_dataset(args.dataset, args.root, args.split)
    if args.task in ("explain", "segment") and dataset.multilabel_only:
        raise SystemExit(f"{args.dataset} has no label maps: only --task multilabel runs on it")
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be >= 1")
    n = min(len(dataset), args.limit) if args.limit is not None else len(dataset)
    ctx = _Context(args, dataset, device, loaded)
    key = _check_settings(args.out, _settings(args, ctx.model, dataset), rank, world, held)
    parts = args.out / "parts"
    own = parts / f"rank{rank}.jsonl"
    _repair(own)
    _barrier(world)  # every shard repaired before any rank reads them
    finished = {i: r for i, r in _read_records(parts).items() if i < n}
    for i, record in finished.items():
        if record["id"] != dataset.ids[i]:
            raise SystemExit(
                f"{parts}: the record of image {i} is for {record['id']!r}, the dataset now has "
                f"{dataset.ids[i]!r} there: the dataset changed; use another --out"
            )
    # fixed batches: batch k is always images [k·B, (k+1)·B) of the whole dataset, whatever --limit is
    size = args.batch_size
    batches = [list(range(s, min(s + size, len(dataset)))) for s in range(0, n, size)]
    mine = [i for batch in batches[rank::world] for i in batch if i < n]
    todo = [i for i in mine if i not in finished]
    verified = {
        k: _verify_batch(parts, dataset, batch, finished, [dataset.fingerprint(i) for i in batch])
        for k, batch in enumerate(batches)
        if k % world == rank and any(i in finished for i in batch)
    }  # every stored record checked against the data before anything is computed
    compute = _BATCH_FUNCTIONS[args.task]
    start, computed = time.perf_counter(), 0
    with tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        disable=rank != 0 or not (not args.quiet if args.progress is None else args.progress),
        desc=f"{args.task} {args.dataset} {args.method}",
        file=sys.stderr,
    ) as bar:
        for k in range(rank, len(batches), world):
            batch = batches[k]
            pending = [i for i in batch if i < n and i not in finished]
            if not pending:
                continue
            # the whole batch is computed, the images with a record riding along, so that every record
            # comes from the batch composition a fresh run uses (bit-equal results on one machine)
            samples = [dataset[i] for i in batch]
            digest = _batch_sha256([sample.fingerprint for sample in samples])
            if digest != verified.get(k, digest):
                raise SystemExit(
                    f"{dataset.root}: the files of images {batch[0]}–{batch[-1]} changed while this run read "
                    "them: run it again once the data stays put"
                )
            records = compute(ctx, samples)
            new = []
            for i, sample, record in zip(batch, samples, records, strict=True):
                if i in pending:
                    record.update(index=i, id=sample.image_id, data=sample.fingerprint, batch_sha256=digest)
                    finished[i] = record
                    new.append(record)
            _append(own, new, key)
            computed += len(pending)
            bar.update(len(pending))
    seconds = time.perf_counter() - start

    shard = [finished[i] for i in mine]
    confusion = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index)
    if args.task == "segment":
        for record in shard:
            confusion.add_sparse(record["confusion"])
    timing = [(computed, seconds)]
    if world > 1:
        state = confusion.state().to(device)
        dist.all_reduce(state)
        confusion.matrix = state.cpu()
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (shard, computed, seconds))
        shard = sorted((r for part, _, _ in gathered for r in part), key=lambda r: r["index"])
        timing = [(c, s) for _, c, s in gathered]
    if rank != 0:
        return 0
    if len(shard) != n:
        raise RuntimeError(f"expected {n} image records, got {len(shard)}")
    summary, rows = _summarise(args.task, dataset, shard, confusion)
    total_computed = sum(c for c, _ in timing)
    result = {
        "task": args.task,
        "dataset": args.dataset,
        "split": args.split,
        "images": n,
        "model": ctx.clip.name,
        "pretrained": ctx.clip.pretrained,
        "method": args.method,
        "config": dataclasses.asdict(ctx.config) if dataclasses.is_dataclass(ctx.config) else ctx.config,
        "image_size": ctx.size,
        "protocol": dataclasses.asdict(ctx.protocol) if args.task == "segment" else None,
        "summary": summary,
        "intervals": {
            "level": INTERVAL_LEVEL,
            "resamples": INTERVAL_RESAMPLES,
            "unit": "image",
            **summary_intervals(args.task, shard, len(dataset.class_names), dataset.ignore_index),
        },
        "per_class": rows,
        "run": {
            "world_size": world,
            "computed_images": total_computed,
            "seconds": max(s for _, s in timing),
            "seconds_per_image": sum(s for _, s in timing) / total_computed if total_computed else None,
        },
    }
    _write_results(args.out, result, rows)
    if not args.quiet:
        print(json.dumps({"summary": summary, "run": result["run"]}, indent=1))
    return 0


def evaluate(
    task: str,
    dataset: str,
    root: str | Path,
    out: str | Path,
    model: str = DEFAULT_MODEL,
    pretrained: str = "default",
    method: str = "surgery",
    loaded: LoadedCLIP | None = None,
    **options: object,
) -> dict:
    """Run one evaluation in this process (an :class:`EvalSettings` built from the arguments);
    returns ``results.json``.

    ``loaded``: the model ``model``/``pretrained`` name, already loaded (saves loading it per call).

    ``options`` are the other :class:`EvalSettings` fields (``limit=20``,
    ``protocol="sliding"``, ``image_size=448``, ``batch_size=16``, ``split="val"``, …). A finished or
    interrupted run in ``out`` with the same settings is resumed: finished images are not recomputed.
    """
    settings = EvalSettings(
        task=task, dataset=dataset, root=Path(root), out=Path(out), model=model, pretrained=pretrained,
        method=method, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    run_evaluation(settings, loaded)
    return json.loads(settings.out.joinpath("results.json").read_text())


def run_evaluation(settings: EvalSettings, loaded: LoadedCLIP | None = None) -> int:
    """Run (or resume) one evaluation in this process, or in every ``torchrun`` process; writes
    ``results.json`` in ``settings.out`` on rank 0. ``loaded``: the model ``settings.model`` names,
    already loaded (the caller vouches that it is that model)."""
    rank, world, device = _init_distributed(settings.device)
    try:
        return _run(settings, rank, world, device, loaded)
    finally:
        if world > 1:
            dist.destroy_process_group()


def image_records(out: str | Path) -> list[dict]:
    """The per-image records of the run in ``out``, in image order (multilabel: ``scores`` and
    ``targets`` per class; explain: the scored ``pairs``; segment: the sparse confusion counts)."""
    parts = Path(out) / "parts"
    if not parts.is_dir():
        raise FileNotFoundError(f"no evaluation records in {out}: {parts} is missing")
    records = _read_records(parts)
    return [records[i] for i in sorted(records)]


def _table_row(result: dict) -> dict:
    """A run's summary numbers as table columns: each metric, its interval as ``<metric>_low`` and
    ``<metric>_high`` (when the result has one), and ``s_per_image``."""
    row = {k: v for k, v in result["summary"].items() if not isinstance(v, list)}
    for metric, limits in result.get("intervals", {}).items():
        if isinstance(limits, list):
            row[f"{metric}_low"], row[f"{metric}_high"] = limits
    return {**row, "s_per_image": result["run"]["seconds_per_image"]}


def run_folder_name(*parts: str) -> str:
    """A folder name from its parts joined by ``__`` (``/`` and ``:`` replaced by ``_``, as in the null
    ``null:random``)."""
    return "__".join(parts).replace("/", "_").replace(":", "_")


def evaluate_methods(
    settings: Sequence[EvalSettings], out: str | Path, loaded: LoadedCLIP | None = None
) -> list[dict]:
    """One evaluation per settings (typically one per method, each with its own ``out`` folder), then
    one combined table in ``out``: ``results_by_method.json`` and ``results_by_method.csv``, a row of
    ``{"method", <summary>, "s_per_image", "out"}`` per run. Runs resume as :func:`run_evaluation` does.

    ``loaded``: the model the settings name, already loaded; otherwise it is loaded once here (outside
    ``torchrun``) and shared by the runs. Returns the rows (empty on ranks other than 0).
    """
    if not settings:
        raise ValueError("no evaluation to run")
    first = settings[0]
    if loaded is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        device = _init_distributed(first.device)[2]
        loaded = load_clip(
            first.model, pretrained=first.pretrained, checkpoint=first.checkpoint, device=device
        )
    for one in settings:
        run_evaluation(one, loaded)
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    rows = []
    for one in settings:
        result = json.loads((one.out / "results.json").read_text())
        rows.append({"method": one.method, **_table_row(result), "out": str(one.out)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results_by_method.json").write_text(json.dumps(rows, indent=2) + "\n")
    with (out / "results_by_method.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    if not first.quiet:
        print(json.dumps(rows, indent=1))
    return rows


def main(argv: Sequence[str] | None = None, loaded: LoadedCLIP | None = None) -> int:
    """Command line (see the module doc). ``loaded``: the model of ``--model``, already loaded (the
    caller vouches that it is what ``--model``/``--pretrained`` name).

    ``--method a,b,...`` with several methods runs :func:`evaluate_methods`: one evaluation per method
    in ``--out/<method>``, and the combined table in ``--out``; one method writes in ``--out`` itself.
    """
    args = _parser().parse_args(argv)
    methods = list(dict.fromkeys(m.strip() for m in args.method.split(",") if m.strip()))
    options = {k: v for k, v in vars(args).items() if k not in ("method", "out")}
    try:
        if not methods:
            raise ValueError(f"--method {args.method!r} names no method")
        if len(methods) == 1:
            return run_evaluation(EvalSettings(**options, method=methods[0], out=args.out), loaded)
        settings = [EvalSettings(**options, method=m, out=args.out / run_folder_name(m)) for m in methods]
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    evaluate_methods(settings, args.out, loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
