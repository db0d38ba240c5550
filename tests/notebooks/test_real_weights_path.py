"""The path a user with real weights takes, at real scale: the README's command
``SURGERY_MODEL=ViT-B-16 SURGERY_PRETRAINED=openai SURGERY_IMAGES=real make figures`` with the weights in a
Hugging Face cache (no network), here a ViT-B/16 and an RN50 with random weights saved where the
``openai`` tag looks for them. Every notebook must run on them (few images: the same code paths).

About 4 minutes a notebook on the project's 2-core CPU (notebook 00: 251 s), so ``make test`` leaves it
out (marker ``realscale``); ``make test-realscale`` runs it."""

from __future__ import annotations

import time

import nbformat
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from surgery_lib.ui.notebooks import notebook_paths, run_notebook

pytestmark = [pytest.mark.slow, pytest.mark.notebooks, pytest.mark.realscale]
BACKBONES = ("ViT-B-16", "RN50")


def _hf_cache_with_random_weights(home, name: str) -> None:
    """Random weights of ``name`` as ``open_clip_model.safetensors`` in the HF cache layout of the repo
    that open_clip's ``openai`` tag names (``models--<org>--<repo>/snapshots/<rev>/`` + ``refs/main``)."""
    cfg = open_clip.get_pretrained_cfg(name, "openai")
    repo = cfg["hf_hub"].strip("/")
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "open_clip_model.safetensors"
    )


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    for name in BACKBONES:
        _hf_cache_with_random_weights(home, name)
    return home


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_every_notebook_runs_on_real_scale_weights_from_the_hf_cache(path, hf_home, tmp_path):
    env = {
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "SURGERY_MODEL": "ViT-B-16",
        "SURGERY_BACKBONES": ",".join(BACKBONES),
        "SURGERY_PRETRAINED": "openai",
        "SURGERY_IMAGES": "real",
        "SURGERY_LIMIT": "2",
        "SURGERY_EVAL_DIR": str(tmp_path / "eval"),
    }
    start = time.perf_counter()
    out = run_notebook(path, tmp_path / "nb", tmp_path / "figures", timeout=900, env=env)
    code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    print(f"{path.name}: {time.perf_counter() - start:.0f} s on ViT-B-16/RN50 (random weights, 2 images)")
