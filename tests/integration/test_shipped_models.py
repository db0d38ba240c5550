"""The shipped small CLIPs: present, intact, loadable offline, and as good as recorded."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from surgery_lib import SurgeryConfig, encode_image_tokens, load_clip, preprocess_images
from surgery_lib.model.shipped import WEIGHTS_DIR, recorded_metadata, sha256, weights_path
from surgery_tools.quick_check import quick_zero_shot

SHIPPED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def test_the_default_model_ships():
    assert SHIPPED == ["toy-rn", "toy-vit"]
    clip = load_clip()
    assert clip.name == "toy-vit" and clip.image_size == 96


@pytest.mark.parametrize("name", SHIPPED)
def test_checksum_size_and_offline_load(name, monkeypatch):
    path = weights_path(name)
    meta = recorded_metadata(name)
    assert sha256(path) == meta["sha256"]
    assert path.stat().st_size <= 30 * 2**20
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = load_clip(name)
    stored = load_file(path)
    for key, value in clip.model.state_dict().items():
        assert torch.equal(value, stored[key].float()), key
    assert clip.tokenizer(["a photo of a bird."]).shape == (1, 24)


@pytest.mark.parametrize("name", SHIPPED)
def test_quick_zero_shot_matches_record(name):
    clip = load_clip(name)
    recorded = recorded_metadata(name)["quick_check"]["zero_shot_top1"]
    measured = quick_zero_shot(clip.model, clip.tokenizer, clip.image_size)
    assert abs(measured - recorded) <= 2.5, (
        f"{name}: zero-shot top-1 {measured:.1f} % vs recorded {recorded:.1f} %"
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_quality_shows_surgery_beats_raw(name):
    """The model card's claim, from the recorded full evaluation of each shipped model."""
    quality = recorded_metadata(name)["quality"]
    for split in ("seen_instances", "new_instances"):
        raw, surgery = quality[split]["raw"], quality[split]["surgery"]
        assert surgery["mSC"] > raw["mSC"] and surgery["mIoU"] > raw["mIoU"]
        assert surgery["pointing_game"] > raw["pointing_game"]


def test_default_model_end_to_end_on_a_real_photo():
    from surgery_lib.data.shipped import read_real_photos
    from surgery_lib.paths import data_dir

    clip = load_clip()
    photo = read_real_photos(data_dir() / "real")[0]
    images = preprocess_images([photo.image], size=clip.image_size)
    tokens, grid = encode_image_tokens(clip.model, images, SurgeryConfig.paper())
    assert grid == (8, 8) and tokens.shape == (1, 65, 128) and torch.isfinite(tokens).all()
