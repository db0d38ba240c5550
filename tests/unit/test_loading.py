"""Loading: local checkpoints (open_clip and OpenAI formats), the HF cache, offline failures."""

from __future__ import annotations

import json
import socket
import time

import open_clip
import pytest
import torch
from conftest import golden_dir, golden_files, random_images
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from surgery_lib import WeightsNotAvailableError, encode_image_tokens, load_clip
from surgery_lib.model.loading import canonical_name, read_state_dict

TINY = "surgery-test-tiny-vit"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 8, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_config(tmp_path):
    """Register a tiny named model config with open_clip, as a user's custom config would be."""
    path = tmp_path / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    return TINY


def test_canonical_names():
    assert canonical_name("ViT-B/16") == "ViT-B-16"
    assert canonical_name("ViT-L/14@336px") == "ViT-L-14-336"
    assert canonical_name("RN50") == "RN50"
    with pytest.raises(ValueError, match=r"unknown model 'ViT-B-61'.*close matches"):
        canonical_name("ViT-B-61")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope'.*openai"):
        load_clip("ViT-B-16", pretrained="nope")


def test_offline_env_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(
        WeightsNotAvailableError, match=r"(?s)HF_HUB_OFFLINE.*checkpoint=.*SURGERY_CHECKPOINT"
    ):
        load_clip("RN50", pretrained="openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5


def test_unreachable_hub_fails_fast_without_downloading(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    def must_not_run(*args, **kwargs):
        raise AssertionError("open_clip should not try to download")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", must_not_run)
    with pytest.raises(WeightsNotAvailableError, match="cannot be reached"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path))


def test_local_open_clip_checkpoint(tiny_config, tmp_path):
    source = open_clip.create_model(tiny_config)
    for fmt in ("pt", "safetensors"):
        path = tmp_path / f"w.{fmt}"
        sd = {k: v.contiguous() for k, v in source.state_dict().items()}
        save_file(sd, path) if fmt == "safetensors" else torch.save({"state_dict": sd}, path)
        clip = load_clip(tiny_config, checkpoint=path)
        for k, v in source.state_dict().items():
            assert torch.equal(clip.model.state_dict()[k], v), k
        assert clip.image_size == 32 and not clip.model.training
        assert clip.reference_preprocess is not None and clip.preprocess is not None
        assert clip.tokenizer(["a cat"]).shape == (1, 77)


def test_checkpoint_from_environment(tiny_config, tmp_path, monkeypatch):
    source = open_clip.create_model(tiny_config)
    path = tmp_path / "env.pt"
    torch.save(source.state_dict(), path)
    monkeypatch.setenv("SURGERY_CHECKPOINT", str(path))
    clip = load_clip(tiny_config)  # the default weights; an explicit pretrained=None means random weights
    assert torch.equal(clip.model.visual.proj, source.visual.proj)


def test_openai_format_state_dict_infers_architecture(tmp_path):
    golden = golden_files("SURGERY_GOLDEN_DIR", golden_dir(), "*vit*.pt")
    sd = torch.load(golden[0], weights_only=True)["state_dict"]
    path = tmp_path / "openai.pt"
    torch.save(sd, path)
    clip = load_clip(None, checkpoint=path)
    mlp = clip.model.visual.transformer.resblocks[0].mlp
    assert isinstance(mlp.gelu, QuickGELU), "OpenAI weights need QuickGELU"
    assert clip.model.visual.proj.dtype == torch.float32


def test_hf_cache_is_used_offline(tiny_config, tmp_path, monkeypatch):
    """A tag whose file is in the HF cache loads with no network, with the tag's QuickGELU."""
    hub = tmp_path / "hub"
    snap = hub / "models--testorg--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (hub / "models--testorg--tiny" / "refs").mkdir()
    (hub / "models--testorg--tiny" / "refs" / "main").write_text("abc123")
    source = open_clip.create_model(tiny_config, force_quick_gelu=True)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, snap / "open_clip_model.safetensors"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"hf_hub": "testorg/tiny/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: cfg if tag == "testtag" else {})
    clip = load_clip(tiny_config, pretrained="testtag", cache_dir=str(hub))
    assert torch.equal(clip.model.visual.proj, source.visual.proj)
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    tokens, _ = encode_image_tokens(clip.model, random_images(clip.model))
    assert torch.isfinite(tokens).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "jit.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(ValueError, match="TorchScript archive"):
        read_state_dict(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_not_run(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Evil()}, path)
    with pytest.raises(ValueError, match="pickled objects"):
        read_state_dict(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")


@pytest.mark.slow  # > 1 s: make test runs it, make test-fast does not
def test_random_weights_when_asked():
    clip = load_clip("RN50", pretrained=None)
    assert clip.image_size == 224 and clip.name == "RN50"
    assert clip.reference_preprocess.transforms[0].size == (224, 224)


def test_a_tag_for_a_list_of_backbones_is_not_applied_to_the_toy_models():
    from surgery_lib.model.shipped import pretrained_for

    assert pretrained_for("toy-vit", "openai") == "default"
    assert pretrained_for("toy-rn", None) == "default"
    assert pretrained_for("ViT-B-16", "openai") == "openai"


def test_the_device_comes_from_surgery_device(monkeypatch):
    """``SURGERY_DEVICE`` picks the device when none is given; a missing device is refused by name."""
    from surgery_lib.model.loading import resolve_device

    monkeypatch.delenv("SURGERY_DEVICE", raising=False)
    assert resolve_device().type == "cpu" and resolve_device("cpu").type == "cpu"
    monkeypatch.setenv("SURGERY_DEVICE", "cpu")
    assert load_clip("tiny-clipa").model.visual.conv1.weight.device.type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        monkeypatch.setenv("SURGERY_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load_clip("tiny-clipa")
