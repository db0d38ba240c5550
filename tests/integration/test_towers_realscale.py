"""Every tower at its real size, the way a user with weights in a Hugging Face cache meets it: random weights
of ViT-B-16-SigLIP, EVA02-B-16 and ViT-L-14-336 saved where their open_clip tags look
(``models--<org>--<repo>/snapshots/<rev>/open_clip_model.safetensors``), loaded offline with
``load_clip(name, pretrained=tag)``; then ``explain`` with every method (a method the tower does not run
must refuse with ``UnsupportedModelError`` naming both) and notebook 00 on each.

SigLIP's tokenizer is a Hugging Face one: a small word-level tokenizer of ours stands in for it in the
cache (the weights are random anyway; the code path is the real one).

Minutes per tower on the project's 2-core CPU, so ``make test`` leaves it out (marker ``realscale``);
``make test-realscale`` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import nbformat
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from surgery_lib.methods import method_names
from surgery_lib.ui.notebooks import notebook_paths, run_notebook

pytestmark = [pytest.mark.slow, pytest.mark.realscale]
TOWERS = {
    "ViT-B-16-SigLIP": "webli",
    "EVA02-B-16": "merged2b_s8b_b131k",
    "ViT-L-14-336": "openai",
    "hf:openai/clip-vit-base-patch16": "default",
}
"""Tower -> pretrained tag (``default`` for a Hugging Face repository: the repo is the weights)."""
HF_PROCESSOR = {"image_mean": [0.4815, 0.4578, 0.4082], "image_std": [0.2686, 0.2613, 0.2758], "resample": 3}
LABELS = ["cat", "dog", "a red car"]


def _snapshot(home, repo: str):
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def _word_tokenizer(snapshot, context_length: int) -> None:
    """A small BPE Hugging Face tokenizer (``tokenizer.json`` + config) in ``snapshot``, trained here on the
    templates and the shipped class names, so that distinct labels get distinct ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from surgery_lib.analysis import example_images
    from surgery_lib.maps.text import resolve_templates

    names = [*LABELS, *example_images("real")[0], *example_images("composites")[0]]
    corpus = [t.format(n) for t in resolve_templates("surgery85") for n in names]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=context_length,
    )
    fast.save_pretrained(snapshot)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    for name, tag in TOWERS.items():
        if name.startswith("hf:"):  # a transformers CLIPModel of ViT-B/16's size, mapped from open_clip's
            from test_hf_towers import _write_cache

            from surgery_lib.model import hf_clip_from_open_clip

            torch.manual_seed(0)
            hf = hf_clip_from_open_clip(
                open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
            )
            _write_cache(home / "hub", name[3:], hf, {**HF_PROCESSOR, "do_center_crop": True})
            continue
        repo = open_clip.get_pretrained_cfg(name, tag)["hf_hub"].strip("/")
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None)
        snapshot = _snapshot(home, repo)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            snapshot / "open_clip_model.safetensors",
        )
        hf_tokenizer = open_clip.get_model_config(name)["text_cfg"].get("hf_tokenizer_name")
        if hf_tokenizer:  # transformers' AutoTokenizer also reads the repo's config.json
            snapshot = _snapshot(home, hf_tokenizer)
            _word_tokenizer(snapshot, model.context_length)
            if not (snapshot / "config.json").is_file():
                (snapshot / "config.json").write_text(json.dumps({"architecture": name}))
        del model
    return home


_EVERY_METHOD = """
import json, sys, time, torch
import surgery_lib as sl
from surgery_lib.methods import GRADIENT_METHODS, get_method, method_names
from surgery_lib.model import TINY_VFM, UnsupportedModelError, with_vfm

name, tag, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
loaded = sl.load_clip(name, pretrained=tag)
image = sl.preprocess_images(
    [torch.randint(0, 255, (3, 200, 260), dtype=torch.uint8)], loaded.image_size, model=loaded.model
)
for method in method_names():
    model = with_vfm(loaded.model, TINY_VFM) if get_method(method).needs_vfm else loaded.model
    start = time.perf_counter()
    try:
        result = sl.explain(model, loaded.tokenizer, image, labels, method=method)
    except UnsupportedModelError as error:  # named by the method's explainer (chefer-all-layers: chefer)
        print(json.dumps({"method": method, "refused": str(error),
                          "explainer": getattr(GRADIENT_METHODS.get(method), "explainer", method)}))
        continue
    print(json.dumps({"method": method, "seconds": time.perf_counter() - start,
                      "finite": bool(torch.isfinite(result.maps).all())}))
"""
"""Every method on one tower, in a process of its own: Hugging Face's libraries read ``HF_HOME`` when
they are imported, so the cache must be named before that."""


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_every_method_on_a_real_scale_tower_from_the_hf_cache(name, hf_home, capsys) -> None:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    run = subprocess.run(
        [sys.executable, "-c", _EVERY_METHOD, name, TOWERS[name], json.dumps(LABELS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["method"] for r in rows] == list(method_names())
    for row in rows:
        if "refused" in row:
            assert row["explainer"] in row["refused"], row
        else:
            assert row["finite"], row
    with capsys.disabled():
        timings = ", ".join(f"{r['method']} {r['seconds']:.1f} s" for r in rows if "seconds" in r)
        print(f"{name}: {timings}; refused {[r['method'] for r in rows if 'refused' in r]}")


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_notebook_00_on_a_real_scale_tower(name, hf_home, tmp_path, capsys) -> None:
    path = next(p for p in notebook_paths() if p.stem.startswith("00"))
    env = {
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "SURGERY_MODEL": name,
        "SURGERY_PRETRAINED": TOWERS[name],
        "SURGERY_IMAGES": "real",
        "SURGERY_LIMIT": "2",
        "SURGERY_EVAL_DIR": str(tmp_path / "eval"),
    }
    start = time.perf_counter()
    out = run_notebook(path, tmp_path / "nb", tmp_path / "figures", timeout=900, env=env)
    code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    with capsys.disabled():
        print(f"{path.name} on {name}: {time.perf_counter() - start:.0f} s (random weights, 2 images)")
