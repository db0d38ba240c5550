"""The command line, end to end, on an OpenAI-format checkpoint built from the golden weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import IN_CI, REPO, golden_dir
from PIL import Image

from surgery_lib.cli import main
from surgery_lib.ui.render import jet, overlay

GOLDEN = sorted(golden_dir().glob("*vit*.pt"))


def test_jet_endpoints_and_overlay():
    colours = jet(np.array([[0.0, 0.5, 1.0]]))
    assert colours[0, 0, 2] > 100 and colours[0, 0, 0] == 0  # low: blue
    assert colours[0, 2, 0] > 100 and colours[0, 2, 2] == 0  # high: red
    out = overlay(Image.new("RGB", (10, 10)), torch.ones(6, 8), alpha=1.0)
    assert out.size == (8, 6) and out.getpixel((0, 0)) == tuple(jet(np.array(1.0)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(Image.new("RGB", (4, 4)), torch.ones(4, 4), alpha=2)


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
    assert summary["model"] == "toy-vit"
    assert sorted(p.name for p in out.glob("*.png")) == ["00002_pepper_surgery.png", "00002_tank_surgery.png"]
