"""Which models can be loaded on this machine now, offline: the towers a picker may offer.

A *tower spec* is what :func:`load_tower` takes: a shipped or project-built model name (``"toy-vit-v2"``,
``"tiny-siglip"``), an open_clip model with its pretrained tag (``"ViT-B-16@openai"``), or a Hugging Face
repository (``"hf:openai/clip-vit-base-patch16"``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from surgery_lib.model.loading import LoadedCLIP, _cached_tag_file, load_clip
from surgery_lib.model.shipped import TOY_MODELS

_HF_FAMILIES = ("clip", "siglip")


def _hub_cache(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _cached_hf_models(cache: Path) -> list[str]:
    """``hf:org/name`` of the ``transformers`` CLIP / SigLIP repositories in the HF cache ``cache``."""
    found = []
    for folder in sorted(cache.glob("models--*--*")):
        for config in sorted(folder.glob("snapshots/*/config.json")):
            try:
                kind = json.loads(config.read_text()).get("model_type")
            except (OSError, ValueError):
                continue
            if kind in _HF_FAMILIES:
                found.append("hf:" + folder.name[len("models--") :].replace("--", "/", 1))
                break
    return found


def available_towers(cache_dir: str | None = None) -> list[str]:
    """The tower specs loadable offline now: the shipped toy models, every open_clip (model, tag) whose
    weights are in the HF cache or open_clip's URL cache, and the Hugging Face CLIP / SigLIP repositories
    in the HF cache (``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    import open_clip

    cache = _hub_cache(cache_dir)
    repos = {folder.name for folder in cache.glob("models--*")} if cache.is_dir() else set()
    url_cache = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
    specs = list(TOY_MODELS)
    for name, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(name, tag) or {}
        repo = "--".join(cfg.get("hf_hub", "").strip("/").split("/")[:2])
        url = os.path.basename(cfg.get("url", ""))
        on_disk = f"models--{repo}" in repos or (url and (url_cache / url).is_file())
        if on_disk and _cached_tag_file(cfg, cache_dir):  # only the repos present are looked into
            specs.append(f"{name}@{tag}")
    return specs + _cached_hf_models(cache)


def tower_spec(name: str, pretrained: str | None = "default") -> str:
    """The spec of ``load_clip(name, pretrained)``: ``name`` itself for the default weights, else
    ``name@tag``."""
    return name if pretrained in (None, "default", "") or name.startswith("hf:") else f"{name}@{pretrained}"


def load_tower(spec: str, device: str | None = None) -> LoadedCLIP:
    """Load the tower a spec of :func:`available_towers` names (``name@tag``: that open_clip tag)."""
    name, _, tag = spec.partition("@") if not spec.startswith("hf:") else (spec, "", "")
    return load_clip(name, pretrained=tag or "default", device=device)
