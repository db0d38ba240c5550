"""What a tower picker offers: the models loadable offline now, found in an HF cache laid out by hand."""

from __future__ import annotations

import json

from surgery_lib.model import TOY_MODELS, available_towers, load_tower, tower_spec


def _snapshot(cache, repo: str):
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_available_towers_lists_what_is_on_disk(tmp_path) -> None:
    assert available_towers(str(tmp_path)) == list(TOY_MODELS)  # an empty cache: the shipped models only
    (
        _snapshot(tmp_path, "timm/vit_base_patch16_clip_224.openai") / "open_clip_model.safetensors"
    ).write_bytes(b"x")
    (_snapshot(tmp_path, "org/tiny-clip") / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (_snapshot(tmp_path, "org/a-bert") / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _snapshot(tmp_path, "timm/eva02_base_patch16_clip_224.merged2b_s8b_b131k")  # a repo without its weights
    towers = available_towers(str(tmp_path))
    assert "ViT-B-16@openai" in towers and "hf:org/tiny-clip" in towers
    assert not [t for t in towers if "EVA02" in t or "bert" in t]


def test_a_spec_names_the_same_model_as_load_clip() -> None:
    assert tower_spec("ViT-B-16", "openai") == "ViT-B-16@openai"
    assert tower_spec("toy-vit-v2") == "toy-vit-v2" and tower_spec("hf:org/x", "default") == "hf:org/x"
    loaded = load_tower("tiny-siglip")
    assert loaded.name == "tiny-siglip" and loaded.image_size == 96


def test_the_apps_tower_picker_switches_the_explorers(tmp_path) -> None:
    """The app's page: a picker of the towers given; picking another builds that tower's explorers (a tower
    without a class token gets no attention explorer, and says why); a tower that fails to load is said."""
    from surgery_lib.figures import TowerApp

    app = TowerApp("toy-vit-v2", tmp_path, 5, towers=["toy-vit-v2", "tiny-siglip", "ViT-B-16@nope"])
    assert app.picker.layout.display == "" and list(app.picker.options)[:2] == ["toy-vit-v2", "tiny-siglip"]
    assert app.explorer.loaded.name == "toy-vit-v2" and len(app.body.children) == 3
    app.picker.value = "tiny-siglip"
    assert app.explorer.loaded.name == "tiny-siglip" and "no class token" in app.body.children[2].value
    app.picker.value = "ViT-B-16@nope"
    assert "cannot be loaded" in app.status.value and app.explorer.loaded.name == "tiny-siglip"
    alone = TowerApp("toy-vit-v2", tmp_path, 5, towers=[])
    assert alone.picker.layout.display == "none"  # one tower: no picker
