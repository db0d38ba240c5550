"""Issue 12: copies and threads under surgery, reused handles, label iterables, checkpoint formats, explorer
inputs, non-finite numbers, EXIF and 16-bit images, messages. Each test fails on the code before the fix."""

from __future__ import annotations

import copy
import functools
import io
import json
import pickle
import threading

import numpy as np
import open_clip
import pytest
import torch
from conftest import assert_unchanged, make_vit, random_images, snapshot
from PIL import Image, ImageOps

from surgery_lib import (
    ImageInputError,
    SurgeryConfig,
    SurgeryError,
    apply_surgery,
    explain,
    is_surgery_applied,
    preprocess_images,
    text_features,
    to_rgb,
)
from surgery_lib.data.datasets import DatasetError, load_composites, load_nus_wide
from surgery_lib.maps.text import _CACHE
from surgery_lib.model.loading import load_clip, read_state_dict
from surgery_lib.model.shipped import weights_path
from surgery_lib.ui.widgets import AttentionExplorer, Explorer


@pytest.fixture
def model():
    return make_vit()


@pytest.fixture(scope="module")
def toy(toy_vit):
    return toy_vit  # the shipped toy-vit (fast), offline; shared by the session


def _photo(mode: str = "RGB", size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


# ---- 1. copies and pickles while applied ---------------------------------------------------------


def test_deepcopy_under_surgery_is_vanilla_and_runs_its_own_weights(model):
    images = random_images(model)
    before = snapshot(model)
    vanilla = model.encode_image(images)
    with apply_surgery(model):
        clone = copy.deepcopy(model)
        assert not is_surgery_applied(clone)
        assert "forward" not in clone.visual.__dict__ and "__getstate__" not in clone.visual.__dict__
        torch.testing.assert_close(clone.encode_image(images), vanilla)  # pooled (B, D), not tokens
        with torch.no_grad():
            clone.visual.proj.mul_(2.0)  # the copy's own weights decide its output
        torch.testing.assert_close(clone.encode_image(images), 2.0 * vanilla)
        assert model.encode_image(images).ndim == 3  # the original is still under surgery
        with apply_surgery(clone):  # and the copy can take surgery of its own
            assert clone.encode_image(images).ndim == 3
    assert_unchanged(model, before)
    assert_unchanged(clone, snapshot(clone))


def test_pickle_and_torch_save_under_surgery_give_vanilla_models(model):
    images = random_images(model)
    vanilla = model.encode_image(images)
    with apply_surgery(model):
        restored = pickle.loads(pickle.dumps(model))
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    for other in (restored, loaded):
        assert not is_surgery_applied(other)
        torch.testing.assert_close(other.encode_image(images), vanilla)


# ---- 2. a reused handle --------------------------------------------------------------------------


def test_reentering_a_removed_handle_applies_it_again(model):
    images = random_images(model)
    before = snapshot(model)
    handle = apply_surgery(model)
    with handle:
        first = model.encode_image(images)
    assert not handle.applied and model.encode_image(images).ndim == 2
    with handle:
        assert handle.applied and is_surgery_applied(model)
        torch.testing.assert_close(model.encode_image(images), first)
    assert not is_surgery_applied(model)
    assert_unchanged(model, before)


def test_entering_a_handle_twice_at_once_is_refused(model):
    handle = apply_surgery(model)
    with handle:
        entered_again = pytest.raises(SurgeryError, match="already in use")
        with entered_again, handle:
            pass
    assert not is_surgery_applied(model)


# ---- 3. threads and a user's own forward override ---------------------------------------------------


def test_surgery_is_visible_only_in_the_applying_thread(model):
    images = random_images(model)
    vanilla = model.encode_image(images)
    seen = {}
    with apply_surgery(model):
        worker = threading.Thread(target=lambda: seen.setdefault("out", model.encode_image(images)))
        worker.start()
        worker.join()
        assert model.encode_image(images).ndim == 3
    torch.testing.assert_close(seen["out"], vanilla)


def test_a_users_instance_forward_override_is_kept_and_restored(model):
    images = random_images(model)
    calls = []
    vanilla_forward = model.visual.forward

    def mine(x):
        calls.append(x.shape[0])
        return vanilla_forward(x)

    model.visual.forward = mine
    with apply_surgery(model):
        assert model.encode_image(images).ndim == 3  # surgery in this thread
        worker = threading.Thread(target=lambda: model.encode_image(images))
        worker.start()
        worker.join()
        assert calls == [2]  # the other thread ran the user's override
    assert model.visual.__dict__["forward"] is mine
    model.encode_image(images)
    assert calls == [2, 2]


# ---- 4. labels given as an iterator ----------------------------------------------------------------


def test_explain_reads_a_label_generator_once(model, tokenizer):
    result = explain(model, tokenizer, random_images(model), (name for name in ["cat", "dog"]))
    assert result.labels == ["cat", "dog"]
    assert result.maps.shape[-1] == 2 and result.similarity.shape[-1] == 2


# ---- 5. name=None with an open_clip-format checkpoint ----------------------------------------------


def test_name_none_with_a_project_checkpoint_loads_its_own_config(toy):
    clip = load_clip(None, checkpoint=weights_path("toy-vit"))
    assert clip.name == "toy-vit" and clip.tokenizer.context_length == 24
    assert clip.image_size == toy.image_size
    images = torch.randn(1, 3, toy.image_size, toy.image_size, generator=torch.Generator().manual_seed(0))
    got = explain(clip.model, clip.tokenizer, images, ["cat", "bird"])
    want = explain(toy.model, toy.tokenizer, images, ["cat", "bird"])
    torch.testing.assert_close(got.similarity, want.similarity)


def test_name_none_with_another_architecture_asks_for_the_name(tmp_path):
    state = read_state_dict(weights_path("toy-vit"))
    state["extra.weight"] = torch.zeros(1)  # no project config matches; not an OpenAI CLIP either (24 tokens)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"other\.pt has a 24-token text context.*pass the model name"):
        load_clip(None, checkpoint=path)
    del state["text_projection"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"other\.pt is not an OpenAI-format.*pass the model name"):
        load_clip(None, checkpoint=path)


# ---- 7. map size -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(0, 0), (10, 0), (-4, 8), (8,), (8.5, 8)])
def test_explain_refuses_a_map_size_without_pixels(model, tokenizer, size):
    with pytest.raises(ValueError, match="map size"):
        explain(model, tokenizer, random_images(model), ["cat"], size=size)


def test_explain_takes_numpy_integer_map_sizes(model, tokenizer):
    result = explain(model, tokenizer, random_images(model), ["cat"], size=(np.int64(20), np.int32(12)))
    assert tuple(result.maps.shape[1:3]) == (20, 12)


# ---- 8. explorers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["L", "P", "1", "array", "float-array"])
def test_explorer_converts_grey_palette_and_array_images(toy, kind):
    photo = _photo()
    arrays = {"array": np.asarray(photo), "float-array": np.asarray(photo) / 255.0}
    image = arrays[kind] if kind in arrays else photo.convert(kind)
    explorer = Explorer(toy, {"picture": image}, ["cat", "bird"])
    assert explorer.images["picture"].image.mode == "RGB"
    assert explorer.image.value  # a figure was drawn


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (_photo("RGBA"), r"'picture' has mode 'RGBA' with an alpha channel"),
        (Image.new("RGB", (1, 1)), r"'picture' is 1×1 pixels"),
        (np.zeros((3, 30, 30), dtype=np.uint8), "channel-first"),
    ],
)
def test_explorer_refuses_images_it_cannot_use_by_name(toy, image, match):
    with pytest.raises(ImageInputError, match=match):
        Explorer(toy, {"picture": image}, ["cat"])


def test_explorer_refuses_a_depth_beyond_the_blocks(toy):
    with pytest.raises(ValueError, match="depth 9 is more than the 8 blocks"):
        Explorer(toy, {"picture": _photo()}, ["cat"], config=SurgeryConfig(depth=9))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"block": 100}, r"block 100 is out of range: this model has 8 blocks"),
        ({"block": -9}, r"block -9 is out of range"),
        ({"query": (100, 0)}, r"query \(100, 0\) is off the \d+×\d+ token grid"),
        ({"query": (0, -1)}, r"query \(0, -1\) is off"),
    ],
)
def test_attention_explorer_refuses_blocks_and_queries_off_the_model(toy, options, match):
    with pytest.raises(ValueError, match=match):
        AttentionExplorer(toy, _photo(), **options)


def test_attention_explorer_converts_a_grey_image(toy):
    explorer = AttentionExplorer(toy, _photo("L"), block=-1)
    assert explorer.picture.mode == "RGB" and explorer.block.value == 7


def test_dollar_labels_are_drawn_literally(toy):
    explorer = Explorer(toy, {"a $5 note": _photo()}, [r"$\foo$", "cat"])
    fig = explorer.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert r"\$\foo\$" in titles and "image" in titles
    assert explorer.image.value


# ---- 9. dataset entries that leave the root -----------------------------------------------------


def _composites(tmp_path, file_name: str):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _photo().save(root / "images" / "a.jpg")
    Image.new("L", (40, 30)).save(root / "masks" / "a.png")
    _photo().save(tmp_path / "outside.jpg")
    entry = {"file": file_name, "mask": "a.png", "objects": []}
    (root / "labels.json").write_text(json.dumps({"classes": ["cat"], "images": [entry]}))
    return root


@pytest.mark.parametrize(
    "name", ["../outside.jpg", "sub/../../outside.jpg", "/etc/passwd", "..\\outside.jpg"]
)
def test_composite_entries_leaving_the_root_are_refused(tmp_path, name):
    root = _composites(tmp_path, name)
    assert load_composites(_composites(tmp_path / "ok", "a.jpg")).ids == ["a"]
    with pytest.raises(DatasetError, match=r"labels\.json: entry .* is not a relative path inside"):
        load_composites(root)


@pytest.mark.parametrize("name", ["../outside.jpg", "/tmp/outside.jpg"])
def test_nus_wide_entries_leaving_the_root_are_refused(tmp_path, name):
    root = tmp_path / "nus"
    (root / "images").mkdir(parents=True)
    _photo().save(root / "images" / "a.jpg")
    _photo().save(root / "outside.jpg")
    _photo().save(tmp_path / "outside.jpg")
    (root / "test.txt").write_text(f"a.jpg sky\n{name} sky\n")
    with pytest.raises(
        DatasetError, match=rf"test\.txt line 2: entry '{name}' is not a relative path inside"
    ):
        load_nus_wide(root)


# ---- 10. numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["visual.proj", "text_projection"])
def test_non_finite_weights_raise_instead_of_nan_maps(model, tokenizer, where):
    with torch.no_grad():
        model.get_parameter(where)[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        explain(model, tokenizer, random_images(model), ["cat", "dog"])


def test_sixteen_bit_png_is_refused(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 24), 40000, dtype=np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        with pytest.raises(ImageInputError, match=r"deep\.png has mode 'I.*16/32-bit"):
            to_rgb(image, str(path))
        with pytest.raises(ImageInputError, match="16/32-bit"):
            preprocess_images([image])


def test_exif_orientation_is_applied(tmp_path):
    photo = Image.new("RGB", (40, 20), "black")
    photo.paste((255, 0, 0), (0, 0, 20, 20))  # red left half, black right half
    exif = photo.getexif()
    exif[0x0112] = 6  # shown rotated by 90° clockwise
    path = tmp_path / "turned.jpg"
    photo.save(path, exif=exif, quality=95)
    with Image.open(path) as image:
        rgb = to_rgb(image)
        assert image.size == (40, 20)  # the input is not modified
        assert rgb.size == (20, 40)
        upright = ImageOps.exif_transpose(image)
        assert np.abs(np.asarray(rgb, dtype=int) - np.asarray(upright, dtype=int)).max() == 0
        assert rgb.getpixel((10, 5))[0] > 200 and rgb.getpixel((10, 35))[0] < 50  # red on top
        batch = preprocess_images(image, size=(40, 20))
        assert batch.shape == (1, 3, 40, 20)


# ---- 11. messages -----------------------------------------------------------------------------------


def test_points_of_an_unknown_label_lists_the_labels(model, tokenizer):
    result = explain(model, tokenizer, random_images(model), ["cat", "dog"])
    with pytest.raises(ValueError, match=r"'zebra' is not among the explained labels: 'cat', 'dog'"):
        result.points("zebra")


def test_truncated_safetensors_names_the_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(weights_path("toy-vit").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cut\.safetensors is not a readable safetensors file"):
        read_state_dict(path)
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        load_clip("toy-vit", checkpoint=path)
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        load_clip(None, checkpoint=path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"empty\.pt is empty \(0 bytes\)"),
        ({}, r"empty\.pt does not hold a state dict \(it holds an empty dict\)"),
        ([torch.zeros(2)], r"empty\.pt does not hold a state dict \(it holds a list\)"),
        ({"epoch": 3}, r"empty\.pt does not hold a state dict"),
        (b"not a pickle at all", r"empty\.pt is not a torch checkpoint"),
    ],
)
def test_empty_or_odd_pt_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "empty.pt"
    if content is None:
        path.write_bytes(b"")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        read_state_dict(path)
    with pytest.raises(ValueError, match=r"empty\.pt"):
        load_clip("toy-vit", checkpoint=path)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"name": 123}, "name must be a model name"), ({"pretrained": 5}, "must be a string")],
)
def test_load_clip_argument_types(options, match):
    with pytest.raises(TypeError, match=match):
        load_clip(**options)


@pytest.mark.parametrize("images", [None, 3, "photo.jpg"])
def test_preprocess_images_of_nothing_says_what_it_takes(images):
    with pytest.raises(TypeError, match=r"preprocess_images takes"):
        preprocess_images(images)


def test_text_cache_is_kept_per_tokenizer(model, tokenizer):
    short = functools.partial(open_clip.tokenize, context_length=77)
    a = text_features(model, tokenizer, ["cat"])
    b = text_features(model, short, ["cat"])
    torch.testing.assert_close(a, b)  # the same tokens here, but two cache entries
    entries = [key for key in _CACHE[model] if key[-1] == "cat"]
    assert len(entries) == 2


def test_environment_checkpoint_does_not_override_explicit_random_weights(monkeypatch, toy):
    monkeypatch.setenv("SURGERY_CHECKPOINT", str(weights_path("toy-vit")))
    random = load_clip("toy-vit", pretrained=None)
    assert random.pretrained is None
    shipped = toy.model.state_dict()["visual.proj"]
    assert not torch.equal(random.model.state_dict()["visual.proj"], shipped)
