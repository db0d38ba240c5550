"""The project's own small CLIPs: open_clip configs ``toy-vit-v2`` (the default), ``toy-vit`` and ``toy-rn``
and their shipped weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from surgery_lib.paths import CONFIG_DIR, WEIGHTS_DIR

TOY_MODELS: tuple[str, ...] = ("toy-vit-v2", "toy-vit", "toy-rn")

DEFAULT_MODEL = "toy-vit-v2"
"""The model ``load_clip()``, the ``surgery`` command, the app and the notebooks use unless told
otherwise (``SURGERY_MODEL`` in the notebooks)."""

_registered = False


def register_configs() -> None:
    """Make ``toy-vit`` / ``toy-rn`` known to ``open_clip.create_model`` (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def pretrained_for(name: str, tag: str | None) -> str | None:
    """The pretrained tag to load ``name`` with: ``tag``, except for the shipped toy models, which have
    only their own weights (a tag such as ``openai`` given for a list of backbones is not theirs)."""
    return "default" if name in TOY_MODELS else tag


def weights_path(name: str) -> Path:
    """Where the shipped fp16 safetensors weights of ``name`` live."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; expected one of {TOY_MODELS}")
    return WEIGHTS_DIR / f"{name}.safetensors"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_metadata(name: str) -> dict:
    """The metadata recorded next to the weights when they were exported (``<name>.json``)."""
    path = weights_path(name).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(
            f"no metadata for {name} at {path}: train it with python -m surgery_tools.train"
        )
    return json.loads(path.read_text())
