"""Exact agreement with the official code of the other dense-CLIP methods and gradient explainers
(``../shared/golden/zoo/FORMAT.md``, both batches).

One test per ``*.pt`` file of ``../shared/golden/zoo`` and ``../shared/golden/zoo-v2`` next to the repo,
or of the one folder ``SURGERY_ZOO_GOLDEN_DIR`` names (holding files of every method); absent: skipped,
except under ``CI=true``. Each file's method runs through the library's public path: the preset of
``surgery_lib.methods.METHODS`` with ``encode_image_tokens``, or the gradient explainer of
``GRADIENT_METHODS`` with ``gradient_maps``. Output keys absent from a file are not checked; an unknown
``meta.method`` fails. The methods not implemented yet (:data:`NOT_YET`) are strict xfails, so that each
turns into a failure the day it passes.
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
from surgery_lib.model.tiny_towers import timm_clip

GOLDEN = REPO.parent / "shared" / "golden"
ZOO_FILES = (
    golden_files("SURGERY_ZOO_GOLDEN_DIR", GOLDEN / "zoo")
    if os.environ.get("SURGERY_ZOO_GOLDEN_DIR")
    else [
        *golden_files("SURGERY_ZOO_GOLDEN_DIR", GOLDEN / "zoo"),
        *golden_files("SURGERY_ZOO_GOLDEN_DIR", GOLDEN / "zoo-v2"),
    ]
)

NOT_YET = frozenset()
"""The ``meta.method`` or ``meta.variant`` of the files whose method is not implemented yet (issue 22)."""

DENSE = {
    "vanilla": "raw",
    "clip_surgery": "surgery",
    "maskclip": "maskclip",
    "sclip": "sclip",
    "gem": "gem",
    "clearclip": "clearclip",
    "naclip": "naclip",
    "resclip": "resclip",
    "scclip": "scclip",
    "cliptrase": "cliptrase",
    "proxyclip": "proxyclip",
}
"""``meta.method`` -> the name of its preset in ``METHODS``."""
GRADIENT = ("gradcam", "attn_gradcam", "chefer", "legrad", "grad_eclip")

ATOL = {
    "patch_tokens": 1e-5,
    "similarity": 1e-5,
    "feature_surgery_similarity": 1e-5,
    "logits": 1e-4,
    "cosine": 1e-5,
    "image_features": 1e-5,
}
RELEVANCE_RTOL = 1e-5
"""Relevance maps (``relevance``, ``relevance_final``...): atol = 1e-5 × max|map| of the file (their
scales differ by ~100×)."""

PRESET_PARAMS = {
    "depth": "depth",
    "dual_path": "dual_path",
    "keep_residual": "keep_residual",
    "skip_ffn": "skip_ffn",
    "sigma": "spatial_prior_sigma",
}
"""``meta.params`` keys checked against the preset's fields (the registry must say what the code ran)."""


def _param(path: Path) -> object:
    """``path`` as a test parameter: a strict xfail when its method is not implemented yet."""
    meta = torch.load(path, weights_only=True)["meta"]
    missing = {meta.get("method"), meta.get("variant")} & NOT_YET
    if not missing:
        return pytest.param(path, id=path.stem)
    reason = f"issue 22: {min(missing)} not implemented yet"
    return pytest.param(path, id=path.stem, marks=pytest.mark.xfail(strict=True, reason=reason))


@functools.lru_cache(maxsize=4)
def _model(weights: Path) -> torch.nn.Module:
    """The OpenAI-format CLIP of a weights file (files of one seed share it; never modified)."""
    return model_from_openai_state_dict(dict(safetensors.torch.load_file(weights)))


def _timm_model(weights: Path, arch: dict) -> torch.nn.Module:
    """The SigLIP-style open_clip model of a file's ``meta.arch`` (FORMAT.md "SigLIP-style tower"): its
    timm trunk registered under ``vision_cfg.timm_model_name``, ``CustomTextCLIP`` built from
    ``open_clip_model``, the ``visual.*`` weights loaded (only the unused text tower is missing)."""
    model = timm_clip("siglip", arch["timm_kwargs"], arch["open_clip_model"], seed=None)
    missing, unexpected = model.load_state_dict(safetensors.torch.load_file(weights), strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("visual.")], (missing, unexpected)
    return model.eval()


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


def _with_proxyclip_vfm(model: torch.nn.Module, vfm_weights: Path, meta: dict) -> torch.nn.Module:
    """ProxyCLIP's CLIP paired with the file's DINO (FORMAT.md "DINO tower": timm key names, heads from
    ``meta.vfm.arch``); neither model is modified."""
    from surgery_lib.model.vfm import dino_from_state_dict, with_vfm

    dino = dino_from_state_dict(safetensors.torch.load_file(vfm_weights), meta["vfm"]["arch"]["num_heads"])
    return with_vfm(model, dino)


def _check_cliptrase(
    errors: dict[str, float], model: torch.nn.Module, images: torch.Tensor, want: dict
) -> None:
    """CLIPtrase's ``cluster_affinity`` (the recalibrated patch affinity fed to DBSCAN), atol 1e-5."""
    from surgery_lib.methods.cliptrase import cluster_affinity

    _check(errors, "cluster_affinity", cluster_affinity(model, images), want["cluster_affinity"], 1e-5)


def _check_scclip(
    errors: dict[str, float], model: torch.nn.Module, images: torch.Tensor, meta: dict, want: dict
) -> None:
    """SC-CLIP's block indices against ``meta.params``; ``lof_outliers`` (row-major patch indices per
    image) equal, ``lof_scores`` atol 1e-5."""
    from surgery_lib.methods.scclip import scclip_run, scclip_settings

    params, settings = meta["params"], scclip_settings(model.visual.transformer.layers)
    official = ("pre_adjust_idx", "post_adjust_idx", "multi_start_idx", "multi_end_idx")
    ours = (settings.pre_adjust, settings.post_adjust, settings.multi_start, settings.multi_end + 1)
    assert ours == tuple(params[key] for key in official), f"SC-CLIP's block indices: {ours}"
    assert settings.res_cls == params["res_cls"]
    _, _, outliers, scores = scclip_run(model, images, METHODS["scclip"])
    indices = torch.stack([torch.nonzero(row).flatten() for row in outliers]).float()
    assert indices.shape == want["lof_outliers"].shape and torch.equal(indices, want["lof_outliers"]), indices
    errors["lof_outliers"] = 0.0
    _check(errors, "lof_scores", scores, want["lof_scores"], 1e-5)


def _check_resclip(
    model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, meta: dict, want: dict
) -> None:
    """ResCLIP's four variants (one ``meta.method``): the preset of ``meta.params`` (base, use_sfr) through
    ``encode_image_tokens`` with the file's texts given to SFR (``class_texts``); ``sfr_class_map`` equal."""
    from surgery_lib.methods.resclip import class_texts, resclip_forward

    params, errors = meta["params"], {}
    name = {"naclip": "resclip", "clearclip": "resclip-clearclip", "sclip": "resclip-sclip"}[params["base"]]
    config = METHODS[name if params["use_sfr"] else "resclip-rcs"]
    with class_texts(texts):
        tokens, grid = encode_image_tokens(model, images, config)
    assert list(grid) == list(meta["grid"])
    _check(errors, "patch_tokens", tokens[:, 1:], want["patch_tokens"], ATOL["patch_tokens"])
    _check(errors, "similarity", tokens[:, 1:] @ texts.t(), want["similarity"], ATOL["similarity"])
    if "sfr_class_map" in want:
        class_map = resclip_forward(model, images, config, texts).class_map.float()
        assert torch.equal(class_map, want["sfr_class_map"]), (class_map != want["sfr_class_map"]).sum()
        errors["sfr_class_map"] = 0.0
    print(f"{meta['variant']}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))


@pytest.mark.parametrize("path", [_param(p) for p in ZOO_FILES])
def test_zoo_golden(path: Path) -> None:
    case = torch.load(path, weights_only=True)
    meta, want = case["meta"], case["outputs"]
    assert meta["kind"] == "vit", f"{path.name}: kind {meta['kind']!r}"
    weights = path.parent / meta["weights_file"]
    timm_tower = "timm_kwargs" in meta.get("arch", {})
    model = _timm_model(weights, meta["arch"]) if timm_tower else _model(weights)
    if meta["method"] == "proxyclip":
        model = _with_proxyclip_vfm(model, path.parent / meta["vfm_weights_file"], meta)
    images, texts = case["images"].float(), case["text_features"].float()
    method = _method(path, meta)
    if meta["method"] == "resclip":
        _check_resclip(model, images, texts, meta, want)  # its variants and SFR's texts
        return
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
        if meta["method"] == "cliptrase":
            _check_cliptrase(errors, model, images, want)
        if meta["method"] == "scclip":
            _check_scclip(errors, model, images, meta, want)
    else:
        runs = {"relevance": method}
        if "relevance_start_layer_0" in want:
            runs["relevance_start_layer_0"] = method.replace(start_layer=0)
        for key, config in runs.items():
            result = gradient_maps(model, images, texts, config, case.get("empty_text_feature"))
            maps = {key: result.relevance}
            if key == "relevance":
                maps["relevance_final"] = result.final
                got = {
                    "logits": result.logits,
                    "cosine": result.target,
                    "image_features": result.image_features,
                }
                for name, value in got.items():
                    if name in want:
                        _check(errors, name, value, want[name], ATOL[name])
            for name, value in maps.items():
                if name in want:
                    scale = want[name].abs().max().item()
                    _check(errors, name, value, want[name], RELEVANCE_RTOL * scale)
                    errors[name] /= scale  # reported relative to max|map|
    assert errors, f"{path.name}: no known output key among {sorted(want)}"
    print(f"{path.name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
