"""toy-vit-v2 training: the pre-rendered pool, distillation from a frozen teacher, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from surgery_lib.model.shipped import sha256
from surgery_tools import pool as pool_mod
from surgery_tools.train import distill_loss, model_names, train


def _args(cache_dir, work, out, steps, *extra):
    return [
        "--arch",
        "toy-vit-v2",
        "--steps",
        str(steps),
        "--batch",
        "3",
        "--warmup",
        "2",
        "--pool",
        "5",  # 3 steps of batch 3 cross an epoch boundary of the pool
        "--cache",
        str(cache_dir),
        "--work",
        str(work),
        "--out",
        str(out),
        "--ckpt-every",
        "1",
        "--threads",
        "1",
        *extra,
    ]


def test_v2_config_is_a_14x14_open_clip_vit():
    import open_clip

    from surgery_lib.model.shipped import register_configs

    assert "toy-vit-v2" in model_names()
    register_configs()
    model = open_clip.create_model("toy-vit-v2")
    assert isinstance(model, open_clip.CLIP)
    assert tuple(model.visual.grid_size) == (14, 14)


def test_pool_is_deterministic_resumable_and_reused(cache, tmp_path, monkeypatch):
    a = pool_mod.CompositePool.under(tmp_path / "a", cache, 48, 7, seed=1).build(chunk=3)
    b = pool_mod.CompositePool.under(tmp_path / "b", cache, 48, 7, seed=1).build(chunk=7)
    assert a.folder.name == b.folder.name
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert np.array_equal(a.hot, b.hot) and (a.hot.sum(1) >= 1).all()
    # the pool holds exactly the generator's composites
    from surgery_tools.toy_data import CompositeGenerator

    first = CompositeGenerator(cache, size=48, seed=1).sample(4)
    assert np.array_equal(a.images[4], np.asarray(first.image)) and a.captions[4] == first.caption
    # an interrupted build continues where it stopped; a finished one renders nothing
    manifest = b.folder / "pool.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "done": 3}))
    calls = []
    original = CompositeGenerator.sample
    monkeypatch.setattr(CompositeGenerator, "sample", lambda self, i: calls.append(i) or original(self, i))
    again = pool_mod.CompositePool.under(tmp_path / "b", cache, 48, 7, seed=1).build()
    assert calls == [3, 4, 5, 6] and np.array_equal(again.images, a.images)
    calls.clear()
    pool_mod.CompositePool.under(tmp_path / "b", cache, 48, 7, seed=1).build()
    assert calls == []
    # each epoch visits every composite once, in an order fixed by (seed, epoch)
    batches = np.concatenate([a.indices(s, 7) for s in range(2)])
    assert sorted(batches[:7]) == list(range(7)) and sorted(batches[7:]) == list(range(7))
    assert not np.array_equal(batches[:7], batches[7:])
    assert np.array_equal(a.indices(1, 7), b.indices(1, 7))
    other = pool_mod.CompositePool.under(tmp_path / "a", cache, 48, 7, seed=2).build()
    assert other.folder != a.folder and not np.array_equal(other.images, a.images)


def test_distill_loss_is_zero_only_for_matching_distributions():
    teacher = torch.randn(5, 7)
    for t in (1.0, 2.0, 4.0):
        same = distill_loss(teacher.clone(), teacher, t)
        shifted = distill_loss(teacher + 3.0, teacher, t)  # a constant shift keeps the distribution
        torch.testing.assert_close(same, torch.tensor(0.0), atol=1e-6, rtol=0)
        torch.testing.assert_close(shifted, torch.tensor(0.0), atol=1e-5, rtol=0)
        assert distill_loss(torch.randn(5, 7), teacher, t) > 1e-4
        assert distill_loss(teacher * 0.5, teacher, t) > 1e-4


def test_teacher_needs_a_pool(cache, tmp_path):
    args = _args(cache, tmp_path / "w", tmp_path / "o", 1, "--teacher", "toy-rn")
    args[args.index("--pool") + 1] = "0"
    with pytest.raises(SystemExit):
        train(args)


def test_distilled_run_resumes_exactly_and_records_the_recipe(cache, tmp_path):
    teach = ("--teacher", "toy-rn", "--distill-weight", "2", "--distill-temperature", "3")
    straight = train(_args(cache, tmp_path / "w1", tmp_path / "o1", 3, *teach))
    train(_args(cache, tmp_path / "w2", tmp_path / "o2", 2, *teach, "--no-export"))
    pools = list((tmp_path / "w2").glob("pool-*"))
    assert len(pools) == 1 and len(list(pools[0].glob("teacher-toy-rn-*.npy"))) == 1
    stamp = {p.name: p.stat().st_mtime_ns for p in pools[0].iterdir()}
    resumed = train(_args(cache, tmp_path / "w2", tmp_path / "o2", 3, *teach, "--resume"))
    assert {p.name: p.stat().st_mtime_ns for p in pools[0].iterdir()} == stamp, "the pool was rebuilt"
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"
    meta = json.loads(straight.with_suffix(".json").read_text())
    assert meta["arch"] == "toy-vit-v2" and meta["steps"] == 3 and meta["sha256"] == sha256(straight)
    assert meta["pool"] == 5 and meta["distill_weight"] == 2.0 and meta["distill_temperature"] == 3.0
    assert meta["teacher"]["name"] == "toy-rn" and 0.0 <= meta["teacher"]["pool_top1"] <= 100.0
    # the teacher changes what the student learns; another recipe refuses to resume the checkpoint
    plain = load_file(train(_args(cache, tmp_path / "w3", tmp_path / "o3", 3)))
    assert any(not torch.equal(a[k], plain[k]) for k in a)
    with pytest.raises(SystemExit, match="another recipe"):
        train(_args(cache, tmp_path / "w2", tmp_path / "o2", 4, "--resume"))


def test_learning_curve_measures_checkpoints_and_exports_in_step_order(cache, tmp_path, capsys):
    from surgery_tools import learning_curve

    exported = train(_args(cache, tmp_path / "w", tmp_path / "o", 2))
    snapshot = tmp_path / "w" / "toy-vit-v2-last.pt"
    state = torch.load(snapshot, weights_only=True)
    state["step"] = 1  # an earlier snapshot
    torch.save(state, tmp_path / "early.pt")
    rows = learning_curve.main(
        [
            "toy-vit-v2",
            str(exported),
            str(tmp_path / "early.pt"),
            "--limit",
            "2",
            "--out",
            str(tmp_path / "c.json"),
        ]
    )
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["file"] == exported.name
    for split in learning_curve.SETS:
        assert rows[0][split]["images"] == 2 and {"raw", "surgery"} <= set(rows[0][split])
    assert json.loads((tmp_path / "c.json").read_text()) == rows
    table = capsys.readouterr().out
    assert table.startswith("| step | set |") and table.count("\n| 2 | ") == 2
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match=r"not a checkpoint of surgery_tools\.train"):
        learning_curve.main(["toy-vit-v2", str(tmp_path / "other.pt")])


def test_stop_after_and_a_new_length_on_resume_are_recorded(cache, tmp_path):
    """Stopping at step 1 of a 5-step run and resuming with --steps 3 trains exactly as a 3-step run
    (step 0 is warm-up in both; from step 1 the schedule follows the new length), and the export records
    both lengths."""
    straight = load_file(train(_args(cache, tmp_path / "a", tmp_path / "oa", 3)))
    assert train(_args(cache, tmp_path / "b", tmp_path / "ob", 5, "--stop-after", "1")) is None
    assert not (tmp_path / "ob").exists()  # stopped, nothing exported
    assert torch.load(tmp_path / "b" / "toy-vit-v2-last.pt", weights_only=True)["step"] == 1
    resumed = train(_args(cache, tmp_path / "b", tmp_path / "ob", 3, "--resume"))
    weights = load_file(resumed)
    for key in straight:
        assert torch.equal(straight[key], weights[key]), key
    meta = json.loads(resumed.with_suffix(".json").read_text())
    assert meta["schedule"] == [{"from_step": 0, "steps": 5}, {"from_step": 1, "steps": 3}]
    assert json.loads((tmp_path / "oa" / "toy-vit-v2.json").read_text())["schedule"] == [
        {"from_step": 0, "steps": 3}
    ]
    with pytest.raises(SystemExit, match="--stop-after 9 must lie after step 0 and by step 3"):
        train(_args(cache, tmp_path / "c", tmp_path / "oc", 3, "--stop-after", "9"))
