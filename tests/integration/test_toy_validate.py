"""Leave-one-instance-out validation: the cache it writes and the scores it counts."""

from __future__ import annotations

import pytest
import torch

from surgery_tools import validate
from surgery_tools.toy_data import CompositeGenerator


def test_leave_one_out_never_copies_held_out_data(cache, tmp_path):
    out = tmp_path / "val"
    (out / "stale").mkdir(parents=True)  # a previous cache is replaced
    left = validate.leave_one_out(cache, out, min_instances=2)
    assert left == {"blue_bar": "b.png", "green_disc": "b.png", "red_square": "b.png"}
    assert not (out / "stale").exists() and not (out / "backgrounds" / "heldout").exists()
    assert sorted(p.name for p in (out / "backgrounds" / "train").iterdir()) == ["bg0.jpg", "bg1.jpg"]
    for folder, name in left.items():
        assert [p.name for p in (out / "cutouts" / "train" / folder).iterdir()] == ["a.png"]
        assert [p.name for p in (out / "cutouts" / "heldout" / folder).iterdir()] == [name]
        original = cache / "cutouts" / "train" / folder / name
        assert (out / "cutouts" / "heldout" / folder / name).read_bytes() == original.read_bytes()
    # classes below min_instances keep everything and have no left-out folder
    with pytest.raises(ValueError, match="no class"):
        validate.leave_one_out(cache, tmp_path / "none", min_instances=3)
    with pytest.raises(FileNotFoundError, match="make data"):
        validate.leave_one_out(tmp_path / "missing", tmp_path / "x")


class _AlwaysFirstClass(torch.nn.Module):
    """Predicts the first class for every image (text features are the identity)."""

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = torch.zeros(images.shape[0], 3)
        features[:, 0] = 1.0
        return features


def test_score_counts_a_hit_when_the_best_class_is_present(cache, tmp_path, monkeypatch):
    out = tmp_path / "val"
    validate.leave_one_out(cache, out, min_instances=2)
    monkeypatch.setattr(validate, "text_features", lambda model, tokenizer, classes: torch.eye(len(classes)))
    result = validate.score(_AlwaysFirstClass(), None, 32, out, images=20, batch=7)
    for name, split in (("fit", "train"), ("left_out", "heldout")):
        generator = CompositeGenerator(
            out,
            split=split,
            size=validate.VALIDATION_SIZE,
            seed=validate.VALIDATION_SEED,
            background_split="train",
        )
        first = generator.classes[0]
        expected = 100.0 * sum(first in generator.sample(i).labels for i in range(20)) / 20
        assert result[name] == pytest.approx(expected)
        assert 0.0 < expected < 100.0  # the check can tell hits from misses


def test_cli_split(cache, tmp_path, capsys):
    validate.main(["split", "--cache", str(cache), "--out", str(tmp_path / "v"), "--min-instances", "2"])
    assert "left out in 3 classes" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "v" / "cutouts" / "heldout").iterdir()) == [
        "blue_bar",
        "green_disc",
        "red_square",
    ]
