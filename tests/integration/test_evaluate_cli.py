"""``python -m surgery_lib.eval.runner`` end to end on a tiny VOC fixture with the shipped toy-vit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from surgery_lib.data.datasets import NUS_WIDE_CLASSES
from surgery_lib.eval import experiments
from surgery_lib.eval import runner as evaluate
from surgery_lib.maps.text import PROMPT_TEMPLATES, text_features
from surgery_lib.model.loading import load_clip

IDS = ["2007_000001", "2007_000002", "2007_000003", "2007_000004", "2007_000005"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """Five 40×48 photos with a rectangle of one or two VOC classes each, 255 on their borders."""
    root = tmp_path_factory.mktemp("voc")
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n, image_id in enumerate(IDS):
        rgb = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        label = np.zeros((40, 48), dtype=np.uint8)
        label[5:25, 8 + n : 30 + n] = 1 + (3 * n) % 20
        label[30:38, 2:20] = 15
        label[4, 8:30] = 255
        Image.fromarray(rgb).save(base / "JPEGImages" / f"{image_id}.jpg")
        mask = Image.fromarray(label).convert("P")
        mask.save(base / "SegmentationClass" / f"{image_id}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(IDS) + "\n")
    return root


@pytest.fixture(scope="module")
def nus_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nus")
    rng = np.random.default_rng(1)
    lines = []
    for n in range(4):
        rel = f"flickr/{n:04d}.jpg"
        (root / "images" / "flickr").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(root / "images" / rel)
        lines.append(" ".join([rel, *NUS_WIDE_CLASSES[n : n + 1 + n % 2]]))
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root


def _args(task: str, root: Path, out: Path, *extra: str, dataset: str = "voc") -> list[str]:
    return ["--task", task, "--dataset", dataset, "--root", str(root), "--method", "surgery",
            "--batch-size", "2", "--out", str(out), *extra]  # fmt: skip


def _results(out: Path) -> dict:
    result = json.loads((out / "results.json").read_text())
    result.pop("run")
    return result


_CLIP = {}


class _Counter:
    """Stands in for load_clip: one shared toy-vit (its text features stay cached between runs);
    counts images through the image tower and optionally interrupts after ``stop`` images."""

    def __init__(self, stop: int | None = None) -> None:
        self.images, self.stop = 0, stop

    def __call__(self, *args, **kwargs):
        if "clip" not in _CLIP:
            _CLIP["clip"] = load_clip(*args, **kwargs)
        clip = _CLIP["clip"]
        for handle in _CLIP.pop("hooks", []):
            handle.remove()

        def hook(module, inputs):
            if self.stop is not None and self.images >= self.stop:
                raise KeyboardInterrupt
            self.images += inputs[0].shape[0]

        _CLIP["hooks"] = [clip.model.visual.conv1.register_forward_pre_hook(hook)]
        return clip


@pytest.fixture(autouse=True)
def _shared_model(monkeypatch):
    monkeypatch.setattr(evaluate, "load_clip", _Counter())


@pytest.mark.parametrize("task", ["explain", "segment", "multilabel"])
def test_each_task_end_to_end_and_resume(task, voc_root, tmp_path, monkeypatch):
    full = _Counter()
    monkeypatch.setattr(evaluate, "load_clip", full)
    assert evaluate.main(_args(task, voc_root, tmp_path / "full")) == 0
    assert full.images == len(IDS)
    expected = _results(tmp_path / "full")
    assert expected["images"] == len(IDS) and expected["summary"]
    csv_lines = (tmp_path / "full" / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("class,") and len(csv_lines) == 1 + len(expected["per_class"])

    interrupted = _Counter(stop=2)  # the first batch (2 images) is written, the second one is not
    monkeypatch.setattr(evaluate, "load_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(_args(task, voc_root, tmp_path / "resumed"))
    assert len((tmp_path / "resumed" / "parts" / "rank0.jsonl").read_text().splitlines()) == 2
    rest = _Counter()
    monkeypatch.setattr(evaluate, "load_clip", rest)
    evaluate.main(_args(task, voc_root, tmp_path / "resumed"))
    assert rest.images == len(IDS) - 2
    assert _results(tmp_path / "resumed") == expected
    again = _Counter()
    monkeypatch.setattr(evaluate, "load_clip", again)
    evaluate.main(_args(task, voc_root, tmp_path / "resumed"))
    assert again.images == 0 and _results(tmp_path / "resumed") == expected


def test_summaries_and_methods(voc_root, tmp_path):
    evaluate.main(_args("explain", voc_root, tmp_path / "e", "--limit", "3"))
    summary = _results(tmp_path / "e")["summary"]
    assert {"mIoU", "mSC", "pointing_game", "opposite_rate"} <= set(summary) and summary["pairs"] == 6
    evaluate.main(_args("segment", voc_root, tmp_path / "s", "--protocol", "sliding", "--image-size", "64",
                        "--window", "48", "--stride", "24"))  # fmt: skip
    seg = _results(tmp_path / "s")
    assert seg["protocol"]["short_side"] == 64 and 0 <= seg["summary"]["mIoU"] <= 100
    evaluate.main(_args("multilabel", voc_root, tmp_path / "raw", "--method", "raw"))
    raw = _results(tmp_path / "raw")
    assert raw["config"]["depth"] == 0 and 0 < raw["summary"]["mAP"] <= 100
    assert raw["summary"]["classes_evaluated"] == len({1, 4, 7, 10, 13, 15})


def test_nus_wide_multilabel_only(nus_root, tmp_path, monkeypatch):
    # 81 classes × 85 prompts is the slow part on a CPU: two templates are enough to test the path
    monkeypatch.setattr(evaluate, "text_features", partial(text_features, templates=PROMPT_TEMPLATES[:2]))
    evaluate.main(_args("multilabel", nus_root, tmp_path / "m", dataset="nus_wide"))
    summary = _results(tmp_path / "m")["summary"]
    assert summary["classes_evaluated"] == 5 and len(summary["classes_without_positives"]) == 81 - 5
    with pytest.raises(SystemExit, match="no label maps"):
        evaluate.main(_args("segment", nus_root, tmp_path / "s", dataset="nus_wide"))


def test_other_settings_refuse_to_resume(voc_root, tmp_path):
    evaluate.main(_args("multilabel", voc_root, tmp_path / "m", "--limit", "1"))
    with pytest.raises(SystemExit, match=r"other settings.*method"):
        evaluate.main(_args("multilabel", voc_root, tmp_path / "m", "--method", "raw"))


def test_retrained_weights_refuse_to_resume(voc_root, tmp_path, monkeypatch):
    """Same model name, tag and flags, other weights (a retrained toy model): the old records are refused."""
    evaluate.main(_args("multilabel", voc_root, tmp_path / "m", "--limit", "1"))
    retrained = load_clip("toy-vit")
    with torch.no_grad():
        retrained.model.visual.proj.add_(1e-3)
    monkeypatch.setattr(evaluate, "load_clip", lambda *a, **k: retrained)
    with pytest.raises(SystemExit, match=r"other settings \(weights_sha256\)"):
        evaluate.main(_args("multilabel", voc_root, tmp_path / "m", "--limit", "1"))
    fingerprint = evaluate._weights_fingerprint
    assert fingerprint(retrained.model) == fingerprint(retrained.model)
    assert fingerprint(retrained.model) != fingerprint(load_clip("toy-vit").model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def composites_root(tmp_path_factory) -> Path:
    """Six 48×48 composites (layout of data/composites) with two classes: text features stay cheap."""
    root = tmp_path_factory.mktemp("composites")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    entries = []
    for n in range(6):
        instance = np.zeros((48, 48), dtype=np.uint8)
        instance[4 + n : 24 + n, 6:30] = 1
        instance[30:44, 20 + n : 40] = 2
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            root / "images" / f"{n:05d}.jpg"
        )
        Image.fromarray(instance).save(root / "masks" / f"{n:05d}.png")
        objects = [{"index": 1, "label": "apple"}, {"index": 2, "label": ["dog", "apple"][n % 2]}]
        entries.append({"file": f"{n:05d}.jpg", "mask": f"{n:05d}.png", "objects": objects})
    (root / "labels.json").write_text(json.dumps({"classes": ["apple", "dog"], "images": entries}))
    return root


def test_two_processes_match_one_exactly(composites_root, tmp_path):
    """torchrun, 2 CPU processes with gloo: confusion matrices all-reduced, records gathered (one task
    only: each launch costs two interpreter start-ups)."""
    task = "segment"
    args = _args(task, composites_root, tmp_path / "one", dataset="composites")
    evaluate.main(args)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "surgery_lib.eval.runner",
           *_args(task, composites_root, tmp_path / "two", dataset="composites")]  # fmt: skip
    done = subprocess.run(two, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["run"]["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "parts").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    assert _results(tmp_path / "two") == _results(tmp_path / "one")


@pytest.mark.parametrize("task", ["explain", "segment", "multilabel"])
def test_results_carry_bootstrap_intervals_over_images(task, voc_root, tmp_path):
    """Every summary number has its 95 % interval, recomputed from the stored per-image records by the
    summary's own code: the interval holds the summary, and one image repeated gives a zero width."""
    out = tmp_path / task
    evaluate.main(_args(task, voc_root, out))
    result = _results(out)
    intervals = result["intervals"]
    assert intervals["level"] == 0.95 and intervals["unit"] == "image"
    keys = {"explain": {"mIoU", "mSC", "pointing_game", "opposite_rate"},
            "segment": {"mIoU", "pixel_accuracy"}, "multilabel": {"mAP"}}[task]  # fmt: skip
    assert keys <= set(intervals)
    for key in keys:
        low, high = intervals[key]
        assert low <= result["summary"][key] + 1e-6 and result["summary"][key] <= high + 1e-6
    records = evaluate.image_records(out)
    recomputed = evaluate.summary_intervals(task, records, 21)
    assert recomputed == {k: v for k, v in intervals.items() if isinstance(v, list)}
    assert any(high > low for low, high in recomputed.values())  # five different images
    one = evaluate.summary_intervals(task, [records[0]] * 4, 21)
    assert one and all(low == high for low, high in one.values())
    rows = experiments.evaluation_table(
        task, ["toy-vit"], {"voc": ("voc", voc_root)}, tmp_path / "table", methods=("surgery",), batch_size=2
    )
    first = sorted(keys)[0]
    assert rows[0][f"{first}_low"] <= rows[0][first] <= rows[0][f"{first}_high"]


def test_summary_intervals_refuse_an_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'classify'"):
        evaluate.summary_intervals("classify", [{}], 2)
