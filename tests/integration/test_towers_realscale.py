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

import time

import nbformat
import open_clip
import pytest
import torch
from safetensors.torch import save_file

import surgery_lib as sl
from surgery_lib.methods import GRADIENT_METHODS, method_names
from surgery_lib.model import UnsupportedModelError
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
        if hf_tokenizer:
            _word_tokenizer(_snapshot(home, hf_tokenizer), model.context_length)
        del model
    return home


@pytest.mark.parametrize("name", sorted(TOWERS))
def test_every_method_on_a_real_scale_tower_from_the_hf_cache(name, hf_home, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = sl.load_clip(name, pretrained=TOWERS[name])
    image = sl.preprocess_images(
        [torch.randint(0, 255, (3, 200, 260), dtype=torch.uint8)], loaded.image_size, model=loaded.model
    )
    refused = {}
    for method in method_names():
        start = time.perf_counter()
        try:
            result = sl.explain(loaded.model, loaded.tokenizer, image, LABELS, method=method)
        except UnsupportedModelError as error:  # named by the method's explainer (chefer-all-layers: chefer)
            explainer = getattr(GRADIENT_METHODS.get(method), "explainer", method)
            assert explainer in str(error), error
            refused[method] = str(error)
            continue
        assert torch.isfinite(result.maps).all(), method
        with capsys.disabled():
            print(f"{name} {method}: {time.perf_counter() - start:.1f} s")
    with capsys.disabled():
        print(f"{name}: refused {sorted(refused)}")


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
