"""A persistent cache of text features on disk, shared by notebooks, commands and app sessions.

Location: ``$SURGERY_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/surgery_lib``, else
``~/.cache/surgery_lib``; text features live under its ``text/`` folder, one file per entry,
``text/<weights hash[:16]>/<entry key>.pt``. ``SURGERY_NO_CACHE=1`` (or ``true``, ``yes``, ``on``)
turns the disk cache off, as does ``text_features(..., use_disk_cache=False)``; ``surgery cache
info`` shows the location and its size, ``surgery cache clear`` (:func:`clear_disk_cache`) empties it.

The entry key is a SHA-256 over everything the value depends on: a format version
(:data:`FORMAT_VERSION`), the text tower's weights (:func:`text_weights_hash`: every parameter and
buffer the text path reads, their names, dtypes and shapes, the tower's structure and settings), the
tokenizer (:func:`tokenizer_fingerprint`: its type, vocabulary, context length and the ids it gives a
fixed set of probe texts), the prompt templates and the label, the model's dtype and device type.
The weights are hashed once per model object and remembered with a signature of the tensors
(identity, storage and in-place version counter), so an in-place change (``param.copy_``,
``load_state_dict``) or a replaced parameter gives a new hash; a write through ``param.data`` does not
bump the counter: call :func:`forget_weights_hash` (or ``clear_text_cache``) after one.

Safety: an entry is written to a temporary file in its folder and moved into place with
``os.replace`` (atomic), so readers never see half a file and concurrent writers of one key do not
clash (the last complete write wins; all are equal). A file that cannot be read, is not an entry
of this format, stores another key, or holds a value of the wrong dtype, shape or norm is never
used: :func:`load_entry` warns naming the file and the caller recomputes and overwrites it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from surgery_lib.model.text_encoding import text_tower_state

FORMAT_VERSION = 1
"""Bumped when the entries' content or the key's recipe changes: old entries are then never read."""

_PROBE_TEXTS = (
    "a photo of a Cat.",
    "CAT &amp; dog's   tail!",
    "naïve café 東京 ﬁsh",
    "",
    "traffic light " * 40,
)
"""Texts whose token ids enter the tokenizer's fingerprint (case, punctuation, HTML, Unicode, an
empty text, one longer than the context)."""

_NO_CACHE_VALUES = ("1", "true", "yes", "on")

_HASHES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()
_TOKENIZER_HASHES: weakref.WeakKeyDictionary[object, dict[int, str]] = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    """The cache's folder: ``$SURGERY_CACHE_DIR``, else ``$XDG_CACHE_HOME/surgery_lib``, else
    ``~/.cache/surgery_lib`` (not created here)."""
    explicit = os.environ.get("SURGERY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "surgery_lib"


def text_cache_dir() -> Path:
    """The folder of the text-feature entries, ``cache_dir() / "text"``."""
    return cache_dir() / "text"


def disk_cache_enabled(use_disk_cache: bool = True) -> bool:
    """``use_disk_cache``, unless ``$SURGERY_NO_CACHE`` is ``1``/``true``/``yes``/``on``."""
    return use_disk_cache and os.environ.get("SURGERY_NO_CACHE", "").strip().lower() not in _NO_CACHE_VALUES


def disk_cacheable(model: nn.Module) -> bool:
    """The text features of ``model`` are determined by its class and weights: no instance
    attribute replaces ``encode_text`` / ``encode_text_short`` (or the text tower's ``forward``),
    whose results the key could not describe."""
    text = getattr(model, "text", None)
    replaced = "encode_text" in vars(model) or "encode_text_short" in vars(model)
    return not replaced and not (isinstance(text, nn.Module) and "forward" in vars(text))


# ---- keys ---------------------------------------------------------------------------------------


def _signature(tensors: list[tuple[str, torch.Tensor]]) -> tuple | None:
    """Identity, storage and in-place version of each tensor; ``None`` when a version counter cannot
    be read (inference tensors), so that the weights are hashed every time."""
    try:
        return tuple((n, id(t), t.data_ptr(), t._version, t.dtype, t.device) for n, t in tensors)
    except RuntimeError:
        return None


def text_weights_hash(model: nn.Module) -> str:
    """SHA-256 (hex) of the text tower's weights and structure (see the module's docstring).

    Computed once per model object and remembered; recomputed when a tensor of the text path is
    replaced or changed in place (its version counter moves).
    """
    tensors, structure = text_tower_state(model)
    signature = _signature(tensors)
    known = _HASHES.get(model)
    if signature is not None and known is not None and known[0] == (signature, structure):
        return known[1]
    digest = hashlib.sha256()
    digest.update(structure.encode())
    for name, tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\0{name}:{flat.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the buffer itself, no copy
    value = digest.hexdigest()
    if signature is not None:
        _HASHES[model] = ((signature, structure), value)
    return value


def weights_signature(model: nn.Module) -> tuple | None:
    """A cheap signature of the text path's tensors (identity, storage, in-place version, dtype,
    device): it changes when a weight is replaced or changed in place; ``None`` when unreadable."""
    return _signature(text_tower_state(model)[0])


def forget_weights_hash(model: nn.Module | None = None) -> None:
    """Forget the remembered weights hash of ``model`` (or of all models)."""
    if model is None:
        _HASHES.clear()
    else:
        _HASHES.pop(model, None)


def _callable_identity(fn: object) -> str:
    """A process-independent description of a tokenizer function or ``functools.partial``."""
    if isinstance(fn, partial):
        return f"partial({_callable_identity(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    name = getattr(fn, "__qualname__", None)
    if name is not None and not isinstance(fn, type):
        return f"{getattr(fn, '__module__', '')}.{name}"
    return f"{type(fn).__module__}.{type(fn).__qualname__}"


def _vocabulary(tokenizer: object) -> str | None:
    """The tokenizer's vocabulary as text (open_clip's ``encoder`` and ``bpe_ranks``, an HF
    tokenizer's ``get_vocab()``), or ``None`` when it shows none."""
    parts = []
    for attr in ("encoder", "bpe_ranks", "vocab"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, dict):
            parts.append(f"{attr}:{sorted((repr(k), repr(v)) for k, v in value.items())}")
    inner = getattr(tokenizer, "tokenizer", None)
    if callable(getattr(inner, "get_vocab", None)):
        parts.append(f"hf:{sorted(inner.get_vocab().items())}")
    return "\n".join(parts) if parts else None


def tokenizer_fingerprint(tokenizer: Callable[[Sequence[str]], torch.Tensor], context_length: int) -> str:
    """SHA-256 (hex) of the tokenizer's identity: its type (or function), its vocabulary, the context
    length and the token ids it gives :data:`_PROBE_TEXTS`. Remembered per tokenizer object and
    context length."""
    try:
        return _TOKENIZER_HASHES[tokenizer][context_length]
    except (KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    digest.update(f"{_callable_identity(tokenizer)}\0{context_length}\0".encode())
    vocabulary = _vocabulary(tokenizer)
    digest.update((vocabulary or "no vocabulary").encode())
    for text in _PROBE_TEXTS:
        try:
            ids = torch.as_tensor(tokenizer([text]))
            digest.update(f"\0{tuple(ids.shape)}:{ids.reshape(-1).tolist()}".encode())
        except Exception as error:  # a tokenizer refusing a probe: its refusal is part of its identity
            digest.update(f"\0{type(error).__name__}".encode())
    value = digest.hexdigest()
    with contextlib.suppress(TypeError):  # not weak-referenceable: fingerprinted again next time
        _TOKENIZER_HASHES.setdefault(tokenizer, {})[context_length] = value
    return value


def text_entry_key(
    weights_hash: str,
    tokenizer_hash: str,
    templates: Sequence[str],
    label: str,
    dtype: torch.dtype,
    device: torch.device,
) -> str:
    """The key (SHA-256 hex) of one label's prompt-ensemble features."""
    recipe = {
        "format": FORMAT_VERSION,
        "kind": "text-ensemble",
        "weights": weights_hash,
        "tokenizer": tokenizer_hash,
        "templates": list(templates),
        "label": label,
        "dtype": str(dtype),
        "device": torch.device(device).type,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def entry_path(weights_hash: str, key: str) -> Path:
    """Where the entry ``key`` of the model ``weights_hash`` is stored."""
    return text_cache_dir() / weights_hash[:16] / f"{key}.pt"


# ---- entries ------------------------------------------------------------------------------------


def _refuse(path: Path, why: str) -> None:
    warnings.warn(
        f"feature cache: ignoring {path} ({why}); recomputing it and overwriting the file",
        RuntimeWarning,
        stacklevel=3,
    )


def load_entry(path: Path, key: str, dim: int | None = None) -> torch.Tensor | None:
    """The features ``(D,)`` float32 stored at ``path`` under ``key``; ``None`` when there is no file,
    or (with a warning naming the file) when it is corrupt or foreign: unreadable bytes, not an entry
    of :data:`FORMAT_VERSION`, another key inside, not a finite float32 vector of unit norm, or of
    length other than ``dim``."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        _refuse(path, f"unreadable: {type(error).__name__}")
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT_VERSION:
        _refuse(path, "not a text-feature entry of this format")
        return None
    if entry.get("key") != key:
        _refuse(path, "it stores another key")
        return None
    value = entry.get("features")
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or value.ndim != 1:
        _refuse(path, "its value is not a float32 vector")
        return None
    if (dim is not None and value.shape[0] != dim) or not torch.isfinite(value).all():
        _refuse(path, f"its value has length {value.shape[0]} or non-finite entries")
        return None
    if abs(float(value.norm()) - 1.0) > 1e-4:
        _refuse(path, "its value is not of unit norm")
        return None
    return value


def store_entry(path: Path, key: str, features: torch.Tensor, label: str = "") -> None:
    """Write ``features`` ``(D,)`` under ``key`` at ``path`` atomically (a temporary file in the same
    folder, then ``os.replace``); an unwritable cache warns and is skipped."""
    entry = {
        "format": FORMAT_VERSION,
        "key": key,
        "label": label,
        "features": features.detach().to("cpu", torch.float32).contiguous().clone(),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            torch.save(entry, handle)
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        warnings.warn(
            f"feature cache: cannot write {path} ({error}); continuing without storing it "
            "(set SURGERY_CACHE_DIR to a writable folder, or SURGERY_NO_CACHE=1)",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# ---- inspection ---------------------------------------------------------------------------------


def _entry_files() -> list[Path]:
    folder = text_cache_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*/*") if p.is_file() and p.suffix in (".pt", ".tmp"))


def cache_info() -> dict[str, object]:
    """The cache's location, whether it is enabled, its entries, model folders and size in bytes."""
    files = _entry_files()
    entries = [p for p in files if p.suffix == ".pt"]
    return {
        "location": str(cache_dir()),
        "enabled": disk_cache_enabled(),
        "entries": len(entries),
        "models": len({p.parent for p in entries}),
        "bytes": sum(p.stat().st_size for p in files),
    }


def clear_disk_cache() -> int:
    """Delete the text-feature entries (and leftover temporary files) of :func:`text_cache_dir`, and
    their emptied folders; nothing else there is touched. Returns the number of files deleted."""
    files = _entry_files()
    for path in files:
        path.unlink(missing_ok=True)
    folder = text_cache_dir()
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
    return len(files)
