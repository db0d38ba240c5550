"""Exact agreement with the official code of the other dense-CLIP methods and gradient explainers
(``../shared/golden/zoo/FORMAT.md``).

One test per ``*.pt`` file in ``SURGERY_ZOO_GOLDEN_DIR`` (default ``../shared/golden/zoo`` next to the
repo; absent: skipped, except under ``CI=true``). Each file's method runs through the library's public
path: the preset of ``surgery_lib.methods.METHODS`` with ``encode_image_tokens``, or the gradient
explainer of ``GRADIENT_METHODS`` with ``gradient_maps``. Output keys absent from a file are not
checked; an unknown ``meta.method`` fails.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import REPO, golden_files

from surgery_lib import encode_image_tokens, feature_surgery
from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.methods import GRADIENT_METHODS, METHODS
from surgery_lib.model.gradients import gradient_maps
from surgery_lib.model.loading import model_from_openai_state_dict

ZOO_DIR = Path(os.environ.get("SURGERY_ZOO_GOLDEN_DIR") or REPO.parent / "shared" / "golden" / "zoo")
ZOO_FILES = golden_files("SURGERY_ZOO_GOLDEN_DIR", ZOO_DIR)

DENSE = {
    "vanilla": "raw",
    "clip_surgery": "surgery",
    "maskclip": "maskclip",
    "sclip": "sclip",
    "gem": "gem",
    "clearclip": "clearclip",
    "naclip": "naclip",
}
"""``meta.method`` -> the name of its preset in ``METHODS``."""
GRADIENT = ("gradcam", "attn_gradcam", "chefer")

ATOL = {"patch_tokens": 1e-5, "similarity": 1e-5, "feature_surgery_similarity": 1e-5, "logits": 1e-4}
RELEVANCE_RTOL = 1e-5
"""Relevance maps: atol = 1e-5 × max|relevance| of the file (their scales differ by ~100×)."""

PRESET_PARAMS = {
    "depth": "depth",
    "dual_path": "dual_path",
    "keep_residual": "keep_residual",
    "skip_ffn": "skip_ffn",
    "sigma": "spatial_prior_sigma",
}
"""``meta.params`` keys checked against the preset's fields (the registry must say what the code ran)."""


@functools.lru_cache(maxsize=4)
def _model(weights: Path) -> torch.nn.Module:
    """The OpenAI-format CLIP of a weights file (files of one seed share it; never modified)."""
    return model_from_openai_state_dict(dict(safetensors.torch.load_file(weights)))


def _method(path: Path, meta: dict) -> SurgeryConfig | GradientConfig:
    method, params = meta["method"], meta.get("params", {})
    if method in GRADIENT:
        return GRADIENT_METHODS[method]
    if method not in DENSE:
        pytest.fail(
            f"{path.name}: unknown meta.method {method!r}; known: {', '.join([*DENSE, *GRADIENT])}",
            pytrace=False,
        )
    config = METHODS[DENSE[method]]
    if "iterations" in params:  # gem_iter3: GEM's preset with its code's ss_attn_iter
        config = config.replace(self_attn_iters=int(params["iterations"]))
    for key, field in PRESET_PARAMS.items():
        if key in params:
            assert getattr(config, field) == params[key], f"preset {method}: {field} differs from meta.params"
    return config


def _check(errors: dict[str, float], name: str, got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item()
    errors[name] = err
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol:.3g}"


@pytest.mark.parametrize("path", ZOO_FILES, ids=[p.stem for p in ZOO_FILES])
def test_zoo_golden(path: Path) -> None:
    case = torch.load(path, weights_only=True)
    meta, want = case["meta"], case["outputs"]
    assert meta["kind"] == "vit", f"{path.name}: kind {meta['kind']!r}"
    model = _model(path.parent / meta["weights_file"])
    images, texts = case["images"].float(), case["text_features"].float()
    method = _method(path, meta)
    errors: dict[str, float] = {}

    if isinstance(method, SurgeryConfig):
        tokens, grid = encode_image_tokens(model, images, method)
        assert list(grid) == list(meta["grid"])
        got = {"patch_tokens": tokens[:, 1:], "similarity": tokens[:, 1:] @ texts.t()}
        if "feature_surgery_similarity" in want:  # per image, class weights from the output class token
            got["feature_surgery_similarity"] = feature_surgery(tokens, texts)[:, 1:]
        for key, value in got.items():
            if key in want:
                _check(errors, key, value, want[key], ATOL[key])
    else:
        runs = {"relevance": method}
        if "relevance_start_layer_0" in want:
            runs["relevance_start_layer_0"] = method.replace(start_layer=0)
        for key, config in runs.items():
            result = gradient_maps(model, images, texts, config)
            if key in want:
                scale = want[key].abs().max().item()
                _check(errors, key, result.relevance, want[key], RELEVANCE_RTOL * scale)
                errors[key] /= scale  # reported relative to max|relevance|
            if key == "relevance" and "logits" in want:
                _check(errors, "logits", result.logits, want["logits"], ATOL["logits"])
    assert errors, f"{path.name}: no known output key among {sorted(want)}"
    print(f"{path.name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
