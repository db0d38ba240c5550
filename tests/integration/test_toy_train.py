"""The training loop on a tiny synthetic cache: runs, is deterministic, resumes exactly, exports."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from surgery_lib.model.shipped import sha256
from surgery_tools.train import class_prompt_loss, contrastive_loss, train


def _args(cache_dir, work, out, steps, *extra):
    return [
        "--arch",
        "toy-vit",
        "--steps",
        str(steps),
        "--batch",
        "3",
        "--workers",
        "0",
        "--warmup",
        "2",
        "--cache",
        str(cache_dir),
        "--work",
        str(work),
        "--out",
        str(out),
        "--ckpt-every",
        "1",
        *extra,
    ]


def test_three_steps_resume_and_export(cache, tmp_path):
    straight = train(_args(cache, tmp_path / "w1", tmp_path / "o1", 3))
    train(_args(cache, tmp_path / "w2", tmp_path / "o2", 2, "--no-export"))
    resumed = train(_args(cache, tmp_path / "w2", tmp_path / "o2", 3, "--resume"))
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"
    assert all(v.dtype == torch.float16 for v in a.values())
    meta = json.loads(straight.with_suffix(".json").read_text())
    assert meta["steps"] == 3 and meta["sha256"] == sha256(straight)
    assert meta["classes"] == ["blue bar", "green disc", "red square"]


def test_losses():
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    # perfectly matched pairs with distinct captions beat shuffled ones
    good = contrastive_loss(image, image, ["a", "b", "c", "d"], scale)
    bad = contrastive_loss(image, image.flip(0), ["a", "b", "c", "d"], scale)
    assert good < bad
    # identical captions are positives of each other: swapping them changes nothing
    same = contrastive_loss(image, image[[1, 0, 2, 3]], ["a", "a", "c", "d"], scale)
    torch.testing.assert_close(same, contrastive_loss(image, image, ["a", "a", "c", "d"], scale))
    hot = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    assert class_prompt_loss(image, image, hot, scale) < class_prompt_loss(image, image.flip(0), hot, scale)


def test_augmented_training_runs_and_is_recorded(cache, tmp_path):
    path = train(_args(cache, tmp_path / "w", tmp_path / "o", 2, "--augment"))
    assert json.loads(path.with_suffix(".json").read_text())["augment"] is True
    plain = train(_args(cache, tmp_path / "w0", tmp_path / "o0", 2))
    assert json.loads(plain.with_suffix(".json").read_text())["augment"] is False
    a, b = load_file(path), load_file(plain)
    assert any(not torch.equal(a[k], b[k]) for k in a), "--augment did not change what the model saw"


def test_convolutional_towers_train_channels_last():
    import open_clip

    from surgery_lib.model.shipped import register_configs
    from surgery_tools.train import _memory_format

    register_configs()
    assert _memory_format(open_clip.create_model("toy-rn")) == torch.channels_last
    assert _memory_format(open_clip.create_model("toy-vit")) == torch.contiguous_format
