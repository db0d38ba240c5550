"""Exact agreement with the official evaluation protocols of SCLIP, NACLIP and ClearCLIP and with CLIP
Surgery's demo protocol (``../shared/golden/protocols/FORMAT.md``).

One test per ``*.pt`` file of the folder ``SURGERY_PROTOCOL_GOLDEN_DIR`` names (default
``../shared/golden/protocols`` beside the repository), each checked at two levels through the library's
public protocol functions (:mod:`surgery_lib.eval.segmentation`):

* **protocol**: the file's stored per-crop logits (``crop_logits``) through the windows, resizes, PAMR
  and post-processing (:func:`official_seg_logits`, :func:`official_pamr`, :func:`official_postprocess`),
  and every post-processing step from the golden input of that step;
* **end to end**: the image through :func:`official_segment` with the method's preset on the file's
  weights (CLIP Surgery: :func:`surgery_demo_segment` on the library's similarities).

Logits and probabilities to 1e-5 relative to their largest magnitude; label maps identical except at the
file's near-tie pixels. An unknown ``meta.method`` fails.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import REPO, golden_files

from surgery_lib import encode_image_tokens
from surgery_lib.eval.segmentation import (
    OfficialProtocol,
    class_queries,
    official_crops,
    official_pamr,
    official_postprocess,
    official_seg_logits,
    official_segment,
    surgery_demo_segment,
)
from surgery_lib.methods import METHODS
from surgery_lib.model.loading import model_from_openai_state_dict

FILES = golden_files("SURGERY_PROTOCOL_GOLDEN_DIR", REPO.parent / "shared" / "golden" / "protocols")
RTOL = 1e-5
"""Logits and probabilities: max |error| / max |golden| (FORMAT.md, Tolerances)."""

SEGMENTORS = {"sclip": ", ", "naclip": ", ", "clearclip": ","}
"""``meta.method`` of the segmentor files -> the separator its ``get_cls_idx`` splits class lines on."""


@functools.lru_cache(maxsize=4)
def _model(weights: Path) -> torch.nn.Module:
    """The OpenAI-format CLIP of a weights file (never modified)."""
    return model_from_openai_state_dict(dict(safetensors.torch.load_file(weights)))


def _protocol(meta: dict) -> OfficialProtocol:
    """The :class:`OfficialProtocol` of the file's constructor arguments (``meta.params``)."""
    params = meta["params"]
    return OfficialProtocol(
        segmentor=meta["method"],
        window=int(params["slide_crop"]),
        stride=int(params["slide_stride"]),
        logit_scale=float(params["logit_scale"]),
        prob_threshold=float(params["prob_thd"]),
        area_threshold=None if params.get("area_thd") is None else float(params["area_thd"]),
        pamr_steps=int(params.get("pamr_steps") or 0),
        pamr_dilations=tuple(int(d) for d in params.get("pamr_stride", (8, 16))),
    )


def _close(errors: dict[str, float], name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item() / max(want.float().abs().max().item(), 1e-12)
    errors[name] = max(errors.get(name, 0.0), err)
    assert err <= RTOL, f"{name}: relative error {err:.3g} > {RTOL:g}"


def _labels(name: str, got: torch.Tensor, want: torch.Tensor, near_tie: torch.Tensor) -> int:
    """Assert identical labels outside the near-tie pixels; the number of near-tie pixels that differ."""
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    differ = (got.long() != want.long()).flatten()
    tie = torch.zeros_like(differ)
    tie[near_tie.long()] = True
    outside = int((differ & ~tie).sum())
    assert outside == 0, f"{name}: {outside} labels differ outside the {len(near_tie)} near-tie pixels"
    return int(differ.sum())


def _check_segmentor(path: Path, case: dict) -> dict[str, float]:
    meta, inputs, want = case["meta"], case["inputs"], case["outputs"]
    protocol = _protocol(meta)
    assert protocol.pamr_applied == bool(meta["pamr_applied"]), "when PAMR runs"
    names, query_idx = class_queries(meta["class_file"], SEGMENTORS[meta["method"]])
    assert query_idx == inputs["query_idx"].tolist() and len(names) == meta["num_queries"]
    image, queries = inputs["image"].float(), inputs["query_features"].float()
    input_size, ori = tuple(image.shape[-2:]), tuple(meta["ori_shape"])
    errors: dict[str, float] = {}

    # the windows (and ClearCLIP's crop padding) the code placed
    crops = official_crops(*input_size, protocol)
    shapes = [list(c.padded_size) for c in crops]
    assert shapes == want["crop_input_shape"].tolist(), "the (padded) crop sizes"
    if "windows" in want:
        assert [list(c.box) for c in crops] == want["windows"].tolist(), "the window boxes"
    if "crop_pad" in want:
        assert [list(c.pad) for c in crops] == want["crop_pad"].tolist(), "the crop padding"

    # protocol level: from the stored per-crop logits
    steps = official_seg_logits(want["crop_logits"], crops, input_size, ori, protocol)
    for key in ("count_mat", "logits_input_size", "seg_logits"):
        if key in want:
            _close(errors, key, steps[key], want[key])
    if "pamr_logits" in want:
        _close(errors, "pamr_logits", official_pamr(image, want["seg_logits"], protocol), want["pamr_logits"])
    post_input = want.get("pamr_logits", want["seg_logits"])
    post = official_postprocess(post_input, query_idx, protocol)
    for key in ("probs_query", "probs_class", "area_keep", "probs_area", "final_seg_logits"):
        if key in want:
            _close(errors, key, post[key], want[key])
    for key in ("pred_argmax", "pred"):
        _labels(key, post[key], want[key], want[f"near_tie_{key}"])

    # end to end: the image through the method's preset on the file's weights
    model = _model(path.parent / meta["weights_file"])
    run = official_segment(model, image, queries, query_idx, METHODS[meta["method"]], protocol, ori)
    for got, expected in zip(run["crop_logits"], want["crop_logits"], strict=True):
        _close(errors, "e2e crop_logits", got, expected)
    for key in ("logits_input_size", "seg_logits", "pamr_logits", "probs_class", "final_seg_logits"):
        if key in want:
            _close(errors, f"e2e {key}", run[key], want[key])
    flips = sum(_labels(k, run[k], want[k], want[f"near_tie_{k}"]) for k in ("pred_argmax", "pred"))
    errors["e2e near-tie flips"] = float(flips)
    return errors


def _check_surgery(path: Path, case: dict) -> dict[str, float]:
    meta, inputs, want = case["meta"], case["inputs"], case["outputs"]
    ori = tuple(meta["ori_shape"])
    errors: dict[str, float] = {}
    for key, sim in (
        ("pred_minmax", "similarity"),
        ("pred_feature_surgery_minmax", "feature_surgery_similarity"),
    ):
        maps, labels = surgery_demo_segment(want[sim][None], ori)
        _close(errors, sim + "_map", maps[0], want[sim + "_map"])
        _labels(key, labels[0], want[key], want[f"near_tie_{key}"])
    # end to end: the library's CLIP Surgery tokens on the square input
    model = _model(path.parent / meta["weights_file"])
    tokens, grid = encode_image_tokens(model, inputs["image"][None].float(), METHODS["surgery"])
    tokens = torch.nn.functional.normalize(tokens.float(), dim=-1)[:, 1:]
    maps, labels = surgery_demo_segment(tokens @ inputs["query_features"].float().t(), ori, grid)
    _close(errors, "e2e similarity_map", maps[0], want["similarity_map"])
    _labels("e2e pred_minmax", labels[0], want["pred_minmax"], want["near_tie_pred_minmax"])
    return errors


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_protocol_golden(path: Path) -> None:
    case = torch.load(path, weights_only=True)
    method = case["meta"]["method"]
    if method in SEGMENTORS:
        errors = _check_segmentor(path, case)
    elif method == "clip_surgery":
        errors = _check_surgery(path, case)
    else:
        pytest.fail(f"{path.name}: unknown meta.method {method!r}; known: {[*SEGMENTORS, 'clip_surgery']}")
    print(f"{path.name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
