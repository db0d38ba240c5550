"""Exact agreement with the reference implementation's outputs (DESIGN §2).

One test per ``*.pt`` file in ``SURGERY_GOLDEN_DIR`` (default ``../shared/golden`` next to the repo);
output keys absent from a file are not checked.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from conftest import golden_dir, golden_files

from surgery_lib import (
    SurgeryConfig,
    encode_image_tokens,
    feature_surgery,
    similarity_map,
    similarity_to_points,
    text_features,
)
from surgery_lib.maps.text import empty_prompt_features
from surgery_lib.model.loading import model_from_openai_state_dict

GOLDEN_DIR = golden_dir()
GOLDEN_FILES = golden_files("SURGERY_GOLDEN_DIR", GOLDEN_DIR)
TOKEN_ATOL, MAP_ATOL = 1e-4, 1e-3


def test_golden_folder_has_files():
    assert GOLDEN_FILES, f"no golden files in {GOLDEN_DIR.resolve()} (set SURGERY_GOLDEN_DIR)"


def _close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item()
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_golden(path: Path) -> None:
    data = torch.load(path, weights_only=True)
    meta, want = data["meta"], data["outputs"]
    model = model_from_openai_state_dict(data["state_dict"])
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    images = data["images"].float()
    labels = list(meta["labels"])
    map_shape = tuple(meta["map_shape"])
    checked = []

    texts = text_features(model, tokenizer, labels, use_cache=False)
    empty = empty_prompt_features(model, tokenizer)
    tokens, grid = encode_image_tokens(model, images, SurgeryConfig.paper())
    raw, _ = encode_image_tokens(model, images, SurgeryConfig.off())
    fs = feature_surgery(tokens, texts)
    j = int(meta["single_text_index"])
    single = feature_surgery(tokens, texts[j : j + 1], empty)
    got = {
        "text_features": (texts, TOKEN_ATOL),
        "empty_text_features": (empty, TOKEN_ATOL),
        "surgery_image_tokens": (tokens, TOKEN_ATOL),
        "raw_image_tokens": (raw, TOKEN_ATOL),
        "feature_surgery_similarity": (fs, TOKEN_ATOL),
        "single_text_similarity": (single, TOKEN_ATOL),
        "similarity_map": (similarity_map(fs[:, 1:], map_shape, grid), MAP_ATOL),
        "raw_similarity_map": (similarity_map((raw @ texts.t())[:, 1:], map_shape, grid), MAP_ATOL),
    }
    for key, (value, atol) in got.items():
        if key in want:
            _close(key, value, want[key], atol)
            checked.append(key)
    if "points" in want:
        k = int(meta["point_label_index"])
        points, point_labels = similarity_to_points(fs[0, 1:, k], map_shape, grid=grid)
        assert torch.equal(points, want["points"].to(torch.int64)), "points differ"
        assert torch.equal(point_labels, want["point_labels"].to(torch.int64)), "point labels differ"
        checked.append("points")
    assert checked, f"{path.name} has no output key this test knows"
