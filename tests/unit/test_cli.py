"""The command line, end to end, on an OpenAI-format checkpoint built from the golden weights."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import IN_CI, REPO, golden_dir
from PIL import Image

from surgery_lib.cli import main
from surgery_lib.model.shipped import DEFAULT_MODEL
from surgery_lib.ui.render import inferno, jet, overlay

GOLDEN = sorted(golden_dir().glob("*vit*.pt"))


def test_colormaps_and_value_weighted_overlay():
    colours = jet(np.array([[0.0, 0.5, 1.0]]))
    assert colours[0, 0, 2] > 100 and colours[0, 0, 0] == 0  # low: blue
    assert colours[0, 2, 0] > 100 and colours[0, 2, 2] == 0  # high: red
    import matplotlib

    values = np.linspace(0.0, 1.0, 301)
    reference = matplotlib.colormaps["inferno"](values)[:, :3] * 255.0
    assert np.abs(inferno(values).astype(float) - reference).max() <= 7.5  # the figures' colormap
    out = overlay(Image.new("RGB", (10, 10)), torch.ones(6, 8), alpha=1.0)
    assert out.size == (8, 6) and out.getpixel((0, 0)) == tuple(inferno(np.array(1.0)))
    out = overlay(Image.new("RGB", (10, 10)), torch.ones(6, 8), alpha=1.0, cmap="jet")
    assert out.getpixel((0, 0)) == tuple(jet(np.array(1.0)))
    photo = Image.new("RGB", (4, 4), (200, 40, 40))
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    drawn = np.asarray(overlay(photo, heat, alpha=0.7))
    grey = np.asarray(photo.convert("L"))[1, 1]
    assert (drawn[1, 1] == grey).all()  # a zero value leaves the (greyscale) image untinted
    assert not (drawn[0, 0] == grey).all()
    assert np.asarray(overlay(photo, heat, grey_image=False))[1, 1].tolist() == [200, 40, 40]
    with pytest.raises(ValueError, match="alpha"):
        overlay(Image.new("RGB", (4, 4)), torch.ones(4, 4), alpha=2)
    with pytest.raises(ValueError, match=r"unknown colormap 'viridis'.*inferno"):
        overlay(Image.new("RGB", (4, 4)), torch.ones(4, 4), cmap="viridis")


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN and not IN_CI, reason="no golden ViT weights (set SURGERY_GOLDEN_DIR)")
def test_cli_explain(tmp_path, capsys):
    ckpt = tmp_path / "openai.pt"
    torch.save(torch.load(GOLDEN[0], weights_only=True)["state_dict"], ckpt)
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo one.png"
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                str(photo),
                "--labels",
                "cat",
                "traffic light",
                "--model",
                "auto",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(
        f"photo_one_{lab}_{m}.png" for lab in ("cat", "traffic_light") for m in ("raw", "surgery")
    )
    with Image.open(out / "photo_one_cat_surgery.png") as im:
        assert im.size == (90, 60)
    summary = json.loads((out / "summary.json").read_text())
    (entry,) = summary["images"]
    assert entry["path"] == str(photo)
    raw, surgery = entry["methods"]["raw"], entry["methods"]["surgery"]
    assert sum(raw["probabilities"]) == pytest.approx(1.0)
    assert raw["probabilities"] == pytest.approx(surgery["probabilities"], abs=1e-5)  # dual path: vanilla CLS
    points = surgery["points"][0]
    assert len(points["xy"]) == len(points["labels"]) > 0
    assert "wrote overlays" in capsys.readouterr().out


def test_cli_default_model_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = REPO / "data" / "composites" / "seen_instances" / "images" / "00002.jpg"
    out = tmp_path / "out"
    assert (
        main(["explain", str(image), "--labels", "pepper", "tank", "--method", "surgery", "--out", str(out)])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == DEFAULT_MODEL == "toy-vit-v2"
    assert sorted(p.name for p in out.glob("*.png")) == ["00002_pepper_surgery.png", "00002_tank_surgery.png"]


# ---- --method (any name of method_names), --depth, --vocabulary -------------------------------------

COMPOSITE = REPO / "data" / "composites" / "seen_instances" / "images" / "00002.jpg"  # pepper, tank, bird


def _run(tmp_path, *args: str) -> dict:
    out = tmp_path / "out"
    assert main(["explain", str(COMPOSITE), "--out", str(out), *args]) == 0
    return json.loads((out / "summary.json").read_text())


def test_cli_help_lists_every_method(capsys):
    from surgery_lib.methods import method_names

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(re.sub(r"-\s+", "-", capsys.readouterr().out).split())
    assert all(name in text for name in method_names()) and "--vocabulary" in text


def test_cli_runs_dense_and_gradient_methods_by_name(tmp_path, monkeypatch):
    from surgery_lib.methods import METHODS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    summary = _run(
        tmp_path, "--labels", "pepper", "tank", "--method", "raw,clearclip,gradcam", "--depth", "3"
    )
    assert summary["methods"] == ["raw", "clearclip", "gradcam"]
    configs = summary["configs"]
    assert configs["gradcam"] == {"kind": "gradient", "explainer": "gradcam", "start_layer": -1}
    assert configs["clearclip"]["kind"] == "dense" and configs["clearclip"]["attention"] == "qq"
    assert configs["clearclip"]["depth"] == 3  # --depth applies to a method with architecture surgery
    assert configs["raw"]["depth"] == 0  # ... not to vanilla CLIP (depth 0)
    assert METHODS["clearclip"].depth == 1  # the registry itself is untouched
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == sorted(f"00002_{lab}_{m}.png" for lab in ("pepper", "tank") for m in summary["methods"])
    gradient = summary["images"][0]["methods"]["gradcam"]
    assert len(gradient["probabilities"]) == 2 and len(gradient["points"]) == 2


def test_cli_unknown_method_lists_the_known_ones(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["explain", str(COMPOSITE), "--labels", "cat", "--method", "surgery,nope", "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    assert "'nope'" in err and "clearclip" in err and "gradcam" in err
    assert not out.exists()


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_cli_vocabulary_reaches_feature_surgery(tmp_path, monkeypatch):
    """Two labels alone: feature surgery over two classes makes the maps complements; a vocabulary of
    more classes breaks that, and the overlays are exactly explain(..., vocabulary=...)'s."""
    from surgery_lib.data.shipped import example_images
    from surgery_lib.maps.explain import explain
    from surgery_lib.maps.images import preprocess_images, to_rgb
    from surgery_lib.model.loading import load_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classes = example_images("composites", limit=1)[0]
    labels = ["pepper", "tank"]
    alone = _run(tmp_path / "alone", "--labels", *labels, "--method", "surgery")
    wide = _run(
        tmp_path / "wide", "--labels", *labels, "--method", "surgery", "--vocabulary", ",".join(classes)
    )
    assert alone["vocabulary"] == labels
    assert wide["vocabulary"][:2] == labels and sorted(wide["vocabulary"]) == sorted(classes)
    p_alone = alone["images"][0]["methods"]["surgery"]["probabilities"]
    p_wide = wide["images"][0]["methods"]["surgery"]["probabilities"]
    assert sum(p_alone) == pytest.approx(1.0) and sum(p_wide) < 1.0  # softmax over the vocabulary

    clip = load_clip()
    with Image.open(COMPOSITE) as opened:
        image = to_rgb(opened, "composite").copy()
    batch = preprocess_images([image], size=clip.image_size)
    size = (image.height, image.width)
    for folder, vocabulary in (("alone", None), ("wide", classes)):
        ex = explain(clip.model, clip.tokenizer, batch, labels, "surgery", size, vocabulary=vocabulary)
        complements = torch.allclose(ex.maps[0, ..., 0] + ex.maps[0, ..., 1], torch.ones(size), atol=1e-4)
        assert complements == (vocabulary is None)
        for j, label in enumerate(labels):
            want = np.asarray(overlay(image, ex.maps[0, :, :, j]))
            with Image.open(tmp_path / folder / "out" / f"00002_{label}_surgery.png") as written:
                np.testing.assert_array_equal(np.asarray(written), want)


def test_cli_empty_vocabulary_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(COMPOSITE), "--labels", "cat", "--vocabulary", " , ", "--out", str(out)]) == 2
    assert "--vocabulary names no class" in capsys.readouterr().err


def test_evaluate_options_reach_the_evaluation_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--task", "explain", "--dataset", "composites", "--root", str(tmp_path),
              "--out", str(tmp_path / "out"), "--limit", "0"])  # fmt: skip
    assert "limit must be >= 1" in str(info.value)
    assert not (tmp_path / "out").exists()
