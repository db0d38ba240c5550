"""Loading CLIP models: open_clip's pretrained tags, local checkpoint files, the HF cache.

Weights are loaded with ``weights_only=True`` (no pickled code runs). Offline, a tag whose weights
are not on disk fails at once with :class:`WeightsNotAvailableError`, which says how to supply them:

* a local checkpoint file: ``load_clip("ViT-B-16", checkpoint="ViT-B-16.safetensors")``
  (open_clip format, or OpenAI's state-dict format; ``name=None`` infers an OpenAI architecture);
* the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), filled on a machine with internet by
  ``open_clip.create_model("ViT-B-16", pretrained="openai")``;
* the environment variable ``SURGERY_CHECKPOINT`` naming a file used when no other weights are given.

Set ``HF_HUB_OFFLINE=1`` to forbid network access; otherwise a failed download is reported the same way.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import pickle
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from surgery_lib.model.preprocess import image_normalisation, reference_transform
from surgery_lib.model.shipped import DEFAULT_MODEL

_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsNotAvailableError(RuntimeError):
    """Pretrained weights could not be found or fetched; the message says how to supply them."""


@dataclass
class LoadedCLIP:
    """A model with its tokenizer and both preprocessings.

    Attributes:
        model: the open_clip model, in eval mode.
        tokenizer: texts -> ``(T, context)`` token ids.
        preprocess: open_clip's own transform for these weights (resize, centre crop, normalise).
        reference_preprocess: the CLIP Surgery reference transform (``Resize((n, n))`` bicubic, no crop).
        name, pretrained: what was loaded.
        image_size: the tower's native input size.
    """

    model: nn.Module
    tokenizer: Callable
    preprocess: Callable
    reference_preprocess: Callable
    name: str
    pretrained: str | None
    image_size: int


def _how_to_supply(name: str, tag: str) -> str:
    return (
        f"Supply the weights of {name}/{tag} in one of these ways:\n"
        f"  - a local file: load_clip({name!r}, checkpoint='/path/to/weights.safetensors|.pt|.bin');\n"
        f"  - the environment variable SURGERY_CHECKPOINT=/path/to/file;\n"
        f"  - the Hugging Face cache (HF_HOME/HF_HUB_CACHE), filled on a machine with internet by\n"
        f'    python -c "import open_clip; open_clip.create_model({name!r}, pretrained={tag!r})"\n'
        f"    and copied here (with HF_HUB_OFFLINE=1 set)."
    )


def canonical_name(name: str) -> str:
    """open_clip's config name for ``name`` (``ViT-B/16`` -> ``ViT-B-16``, ``ViT-L/14@336px`` ->
    ``ViT-L-14-336``); an unknown name raises ``ValueError`` with close matches."""
    import open_clip

    from surgery_lib.model.shipped import register_configs

    register_configs()
    cleaned = name.replace("/", "-").replace("@336px", "-336")
    known = open_clip.list_models()
    if cleaned not in known:
        close = difflib.get_close_matches(cleaned, known, n=5, cutoff=0.5)
        raise ValueError(
            f"unknown model {name!r}; close matches: {close or 'none'} (see open_clip.list_models())"
        )
    return cleaned


def _cached_tag_file(cfg: dict, cache_dir: str | None) -> str | None:
    """A file for the tag already on disk: the HF cache or open_clip's URL cache."""
    parts = cfg.get("hf_hub", "").strip("/").split("/")
    if len(parts) >= 2:
        from huggingface_hub import try_to_load_from_cache

        repo_id = "/".join(parts[:2])
        filenames = ["/".join(parts[2:])] if len(parts) > 2 else list(_HF_FILES)
        for filename in filenames:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url", "")
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def _unreachable_hosts(cfg: dict, timeout: float = 3.0) -> list[str]:
    """Hosts the tag would download from that do not answer within ``timeout`` seconds.

    huggingface_hub retries a failed connection for about a minute; probing first makes an offline
    machine fail at once.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    urls = [constants.ENDPOINT] if cfg.get("hf_hub") else []
    urls += [cfg["url"]] if cfg.get("url") else []
    bad = []
    for url in urls:
        host = urlparse(url).hostname or ""
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            bad.append(host)
    return bad if len(bad) == len(urls) else []


def _torchscript_error(path: object) -> ValueError:
    return ValueError(
        f"{path} is a TorchScript archive (OpenAI's original .pt format), which cannot be loaded "
        "without running its code. Convert it once, where you trust the file:\n"
        "  python -c \"import torch; torch.save(torch.jit.load('IN.pt', map_location='cpu')"
        ".state_dict(), 'OUT.pt')\"\nand pass OUT.pt."
    )


def _check_checkpoint_bytes(path: str) -> None:
    """Refuse (``ValueError`` naming ``path``) an empty file, a TorchScript archive or a file in no
    checkpoint format, before open_clip reads it; a missing file is left to open_clip."""
    if not os.path.isfile(path):
        return
    fmt = checkpoint_format(path)
    if fmt == "empty":
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint")
    if fmt == "unknown" and not path.endswith(".safetensors"):
        raise _not_a_checkpoint(path)
    if fmt == "zip" and _is_torchscript(path):
        raise _torchscript_error(path)


@contextlib.contextmanager
def _named_by_format(path: str) -> Iterator[str]:
    """``path``, or a link to it whose suffix says its format: open_clip reads a file as safetensors or
    with ``torch.load`` by its name, so a safetensors file named ``.bin`` (or a ``torch.save`` file named
    ``.safetensors``) is handed over under a name that matches its bytes."""
    fmt = checkpoint_format(path) if os.path.isfile(path) else "unknown"
    if fmt in ("unknown", "empty") or (fmt == "safetensors") == path.endswith(".safetensors"):
        yield path
        return
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    with tempfile.TemporaryDirectory(prefix="surgery-checkpoint-") as tmp:
        link = os.path.join(tmp, "checkpoint" + suffix)
        try:
            os.symlink(os.path.abspath(path), link)
        except OSError:  # no symbolic links here (e.g. Windows without the privilege)
            try:
                os.link(path, link)
            except OSError:
                shutil.copyfile(path, link)
        yield link


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def checkpoint_format(path: str | Path) -> str:
    """What a weights file is, read from its first bytes (never from its name):

    * ``"safetensors"``: an 8-byte little-endian header length (below safetensors' 100 MB limit),
      then ``{`` (a truncated file still counts: reading it names the damage);
    * ``"zip"``: ``PK\\x03\\x04``, a ``torch.save`` archive (or a TorchScript one);
    * ``"pickle"``: ``\\x80`` and a pickle protocol (2-5), the legacy ``torch.save`` format;
    * ``"empty"`` (0 bytes) or ``"unknown"`` (anything else).
    """
    with open(path, "rb") as fh:
        head = fh.read(9)
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < _MAX_HEADER:
        return "safetensors"
    return "unknown"


def _not_a_checkpoint(path: object) -> ValueError:
    with open(path, "rb") as fh:  # type: ignore[arg-type]
        head = fh.read(8)
    return ValueError(
        f"{path} is not a torch checkpoint nor a safetensors file: its first bytes {head!r} match "
        "neither format (safetensors: an 8-byte header length then '{'; torch.save: a zip archive "
        "'PK\\x03\\x04' or a pickle '\\x80'). Is it the weights file you meant?"
    )


def _reason(err: BaseException) -> str:
    """``err``'s message, unless it is torch's advice to retry with ``weights_only=False`` (which would
    run the file's code): then only what kind of error it was."""
    text = str(err)
    if "weights_only" in text:
        return f"{type(err).__name__} while loading it with weights_only=True"
    return f"{type(err).__name__}: {text}"


def _pickled_objects(path: object, err: BaseException) -> ValueError:
    """Our message for a torch file that ``weights_only=True`` refuses (without torch's advice to load it
    with ``weights_only=False``, which would run the file's code)."""
    return ValueError(
        f"{path} holds pickled objects other than tensors; it is not loaded, since that would run "
        f"code from the file ({err.__class__.__name__}). Save a plain state dict instead "
        "(torch.save(model.state_dict(), path) or safetensors)."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, loaded without running pickled code.

    Accepts safetensors files and ``torch.save`` files of a state dict (optionally under
    ``"state_dict"``, optionally with ``module.`` prefixes), whatever their names: the format is read
    from the file's first bytes (:func:`checkpoint_format`). OpenAI's original TorchScript archives
    are refused with instructions to convert them.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    fmt = checkpoint_format(path)
    if fmt == "unknown" and not path.endswith(".safetensors"):
        raise _not_a_checkpoint(path)
    if fmt == "safetensors" or (fmt == "unknown" and path.endswith(".safetensors")):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{path} is not a readable safetensors file (truncated or damaged?): {err}"
            ) from err
        if not data:
            raise ValueError(f"{path} holds no tensors: it is not a state dict")
        return data
    if _is_torchscript(path):
        raise _torchscript_error(path)
    if fmt == "empty":
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        with open(path, "rb") as fh:  # a file object: torch.load picks no format by the file's name
            data = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a disallowed class or function: a damaged pickle
            raise ValueError(
                f"{path} is not a readable torch checkpoint: its pickle is damaged or uses operations "
                "a state dict never needs"
            ) from err
        raise _pickled_objects(path, err) from err
    except (EOFError, RuntimeError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable torch checkpoint (truncated or damaged?): {_reason(err)}"
        ) from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        what = "an empty dict" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise ValueError(f"{path} does not hold a state dict (it holds {what})")
    if not all(isinstance(k, str) for k in data) or not any(
        isinstance(v, torch.Tensor) for v in data.values()
    ):
        raise ValueError(f"{path} does not hold a state dict (a dict of parameter names to tensors)")
    if next(iter(data)).startswith("module."):
        data = {k.removeprefix("module."): v for k, v in data.items()}
    return data


_OPENAI_KEYS = ("positional_embedding", "token_embedding.weight", "text_projection", "logit_scale")
_PASS_THE_NAME = (
    "pass the model name (load_clip('NAME', checkpoint=...), or --model NAME on the command line): "
    "name=None infers only OpenAI-format CLIP checkpoints (77-token context, QuickGELU)"
)


@functools.cache
def _project_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Parameter names and shapes of the project's own config ``name`` (a randomly initialised model)."""
    import open_clip
    from open_clip.model import CLIP

    cfg = open_clip.get_model_config(name) or {}
    keys = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")
    model = CLIP(**{k: cfg[k] for k in keys if k in cfg})
    return tuple(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()))


def project_config_for(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The project's own config (``toy-vit``, ``toy-rn``, …) whose parameters have exactly the names and
    shapes of ``state_dict``, or None."""
    from surgery_lib.model.shipped import register_configs
    from surgery_lib.paths import CONFIG_DIR

    register_configs()
    shapes = tuple(sorted((k, tuple(v.shape)) for k, v in state_dict.items()))
    for path in sorted(CONFIG_DIR.glob("*.json")):
        if _project_shapes(path.stem) == shapes:
            return path.stem
    return None


def _check_openai_format(state_dict: dict[str, torch.Tensor], path: object) -> None:
    """Refuse (``ValueError`` naming ``path``) a state dict that is not an OpenAI CLIP's."""
    missing = [k for k in _OPENAI_KEYS if k not in state_dict]
    if "visual.proj" not in state_dict and "visual.attnpool.positional_embedding" not in state_dict:
        missing.append("visual.proj or visual.attnpool.*")
    if missing:
        raise ValueError(f"{path} is not an OpenAI-format CLIP state dict ({', '.join(missing)} missing): "
                         f"{_PASS_THE_NAME}")  # fmt: skip
    context = int(state_dict["positional_embedding"].shape[0])
    vocab = int(state_dict["token_embedding.weight"].shape[0])
    if (context, vocab) != (77, 49408):
        raise ValueError(
            f"{path} has a {context}-token text context and a {vocab}-token vocabulary, which no OpenAI CLIP "
            f"has (77 and 49408): it is a checkpoint of another architecture; {_PASS_THE_NAME}"
        )


def model_from_openai_state_dict(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build a float32 CLIP (QuickGELU, as OpenAI trained it) from an OpenAI-format state dict."""
    from open_clip.model import build_model_from_openai_state_dict

    sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    return build_model_from_openai_state_dict(sd).float().eval()


DEVICE_ENV = "SURGERY_DEVICE"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$SURGERY_DEVICE``, else the CPU, checked to exist on this machine.

    Raises:
        ValueError: an unknown device name, or CUDA / MPS asked for where torch has none.
    """
    spec = device if device is not None else (os.environ.get(DEVICE_ENV) or "cpu")
    try:
        resolved = torch.device(spec)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {spec!r} (${DEVICE_ENV} or device=): {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA GPU on this machine")
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {spec!r} asked for, but torch has no MPS backend on this machine")
    return resolved


def load_clip(
    name: str | None = DEFAULT_MODEL,
    pretrained: str | None = "default",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    quick_gelu: bool | None = None,
    reference_size: int | None = None,
    cache_dir: str | None = None,
) -> LoadedCLIP:
    """Load a CLIP model with its tokenizer and preprocessing.

    Args:
        name: the project's own ``"toy-vit"`` / ``"toy-rn"`` (the default: shipped weights, offline),
            its random-weight towers of other families ``"tiny-siglip"``, ``"tiny-eva02"``,
            ``"tiny-clipa"`` (:data:`~surgery_lib.model.tiny_towers.TINY_TOWERS`: code paths only),
            or an open_clip model name (``"ViT-B-16"``, ``"ViT-B/16"``, ``"RN50"``, ``"ViT-L-14-336"``…);
            ``None`` with ``checkpoint`` infers the architecture from the weights: a state dict with
            exactly the parameters of one of the project's own configs loads with that config (and its
            tokenizer); otherwise it must be an OpenAI-format CLIP (77-token context; QuickGELU), and
            anything else is refused with a ``ValueError`` asking for the name.
        pretrained: ``"default"`` (shipped weights for toy models, the ``openai`` tag where open_clip
            has one, else the model's first tag), an open_clip pretrained tag (``"openai"``,
            ``"laion2b_s34b_b88k"``…), a file path, or ``None`` for random weights.
        checkpoint: a local weights file (takes precedence over ``pretrained``); also read from the
            environment variable ``SURGERY_CHECKPOINT`` when neither is given (``pretrained="default"``;
            an explicit ``pretrained=None`` means random weights, whatever the environment says).
            Unreadable, truncated or empty files raise a ``ValueError`` naming the file.
        quick_gelu: force the activation; by default QuickGELU for OpenAI weights (the ``openai``
            tag and OpenAI-format checkpoints loaded with ``name=None``), the config's otherwise.
        reference_size: input size of ``reference_preprocess`` (default: the native size).
        device: where the model goes (``"cpu"``, ``"cuda"``, ``"mps"``…); default ``$SURGERY_DEVICE``, else
            ``"cpu"`` — so notebooks, the CLI and the app follow ``SURGERY_DEVICE=cuda``. A device this
            machine does not have is refused with a ``ValueError`` naming it.

    Hugging Face ``transformers`` models: ``name="hf:<org>/<name>"`` (e.g.
    ``load_clip("hf:openai/clip-vit-base-patch16")``, ``"hf:google/siglip-base-patch16-224"``) or
    ``"hf:/path/to/folder"`` (written by ``save_pretrained``) loads a ``CLIPModel`` or ``SiglipModel`` from
    the HF cache (``cache_dir``, ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``; only the cache when
    ``HF_HUB_OFFLINE`` is set or the hub is unreachable) with its own tokenizer and image processor,
    wrapped so that every method runs on it (:func:`surgery_lib.model.hf_towers.load_hf_clip`; needs
    ``pip install -r requirements-hf.txt``). ``pretrained``, ``checkpoint`` and ``quick_gelu`` do not apply.
    """
    import open_clip

    device = resolve_device(device)
    if isinstance(name, str) and name.startswith("hf:"):
        if pretrained != "default" or checkpoint is not None or quick_gelu is not None:
            raise ValueError(
                f"{name!r} is a Hugging Face model: its repository holds its weights and settings; "
                "pretrained, checkpoint and quick_gelu do not apply"
            )
        from surgery_lib.model.hf_towers import load_hf_clip

        return load_hf_clip(name[3:], device=device, cache_dir=cache_dir, reference_size=reference_size)

    from surgery_lib.model.shipped import TOY_MODELS, register_configs, weights_path
    from surgery_lib.model.tiny_towers import TINY_TOWERS, load_tiny

    if name in TINY_TOWERS and checkpoint is None:
        return load_tiny(name, pretrained, device)
    if name is not None and not isinstance(name, str):
        raise TypeError(
            f"name must be a model name (a string such as 'toy-vit' or 'ViT-B-16') or None, "
            f"got {type(name).__name__} {name!r}"
        )
    for what, value in (("pretrained", pretrained), ("checkpoint", checkpoint)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{what} must be a string or a path, got {type(value).__name__} {value!r}")
    # SURGERY_CHECKPOINT stands in only for the default weights, never for an explicit pretrained=None
    env_checkpoint = os.environ.get("SURGERY_CHECKPOINT") if pretrained == "default" else None
    if name in TOY_MODELS:
        register_configs()
        if pretrained == "default" and checkpoint is None:
            checkpoint = weights_path(name)
            if not checkpoint.is_file():
                raise WeightsNotAvailableError(
                    f"the shipped weights of {name} are missing ({checkpoint}); train them with "
                    f"`make data && python -m surgery_tools.train --arch {name}`"
                )
        pretrained = None if pretrained == "default" else pretrained
    elif pretrained == "default":
        if checkpoint is None and name is not None and not env_checkpoint:
            tags = open_clip.list_pretrained_tags_by_model(canonical_name(name))
            if not tags:
                raise ValueError(
                    f"open_clip knows no pretrained weights for {name}: "
                    "pass checkpoint=... or pretrained=None"
                )
            pretrained = "openai" if "openai" in tags else tags[0]
        else:
            pretrained = None
    checkpoint = checkpoint or (env_checkpoint if pretrained is None else None)
    if pretrained is not None and checkpoint is None and os.path.isfile(str(pretrained)):
        checkpoint, pretrained = pretrained, None
    if name is None:
        if checkpoint is None:
            raise ValueError("name=None needs a checkpoint file to infer the architecture from")
        state_dict = read_state_dict(checkpoint)
        name = project_config_for(state_dict)  # the project's own format: load it with its config
        if name is None:
            _check_openai_format(state_dict, checkpoint)
    if name is None:
        try:
            model = model_from_openai_state_dict(state_dict).to(device)
        except (KeyError, RuntimeError, ValueError, IndexError) as err:
            raise ValueError(
                f"{checkpoint} cannot be built as an OpenAI CLIP ({err}); {_PASS_THE_NAME}"
            ) from err
        shown_name = "openai-state-dict"
        image_size = int(
            model.visual.image_size
            if isinstance(model.visual.image_size, int)
            else model.visual.image_size[0]
        )
        preprocess = open_clip.image_transform(image_size, is_train=False)
    else:
        shown_name = canonical_name(name)
        tag_cfg: dict = {}
        if checkpoint is None and pretrained is not None:
            tag_cfg = open_clip.get_pretrained_cfg(shown_name, pretrained) or {}
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(shown_name)
                raise ValueError(
                    f"unknown pretrained tag {pretrained!r} for {shown_name}; known tags: {tags}"
                )
        force_qg = bool(tag_cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
        source: str | None = str(checkpoint) if checkpoint is not None else None
        if source is None and tag_cfg:
            source = _cached_tag_file(tag_cfg, cache_dir)
            if source is None and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
                raise WeightsNotAvailableError(
                    f"weights for {shown_name}/{pretrained} are not on this machine and HF_HUB_OFFLINE is "
                    f"set.\n{_how_to_supply(shown_name, pretrained)}"
                )
            unreachable = _unreachable_hosts(tag_cfg) if source is None else []
            if unreachable:
                raise WeightsNotAvailableError(
                    f"weights for {shown_name}/{pretrained} are not on this machine and "
                    f"{', '.join(unreachable)} cannot be reached (offline?).\n"
                    f"{_how_to_supply(shown_name, pretrained)}"
                )
        kwargs = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        renamed = {
            "mean": "image_mean",
            "std": "image_std",
            "interpolation": "image_interpolation",
            "resize_mode": "image_resize_mode",
        }
        if checkpoint is not None:
            _check_checkpoint_bytes(str(checkpoint))  # our message for files in no checkpoint format
        try:
            with contextlib.ExitStack() as stack:
                if checkpoint is not None:
                    source = stack.enter_context(_named_by_format(str(checkpoint)))
                model, _, preprocess = open_clip.create_model_and_transforms(
                    shown_name,
                    pretrained=source if source is not None else pretrained,
                    device=device,
                    force_quick_gelu=force_qg,
                    cache_dir=cache_dir,
                    weights_only=True,
                    **{renamed[k]: v for k, v in kwargs.items()},
                )
        except Exception as err:
            if checkpoint is not None and isinstance(err, pickle.UnpicklingError):
                if "global" in str(err).lower():
                    raise _pickled_objects(checkpoint, err) from err
                raise ValueError(
                    f"{checkpoint} is not a readable torch checkpoint: its pickle is damaged or uses "
                    "operations a state dict never needs"
                ) from err
            if checkpoint is not None:  # whatever open_clip stumbled on, it was in this file
                raise ValueError(
                    f"cannot load the checkpoint {checkpoint} as {shown_name}: {_reason(err)}"
                ) from err
            if not tag_cfg or not isinstance(err, (OSError, RuntimeError)):
                raise
            raise WeightsNotAvailableError(
                f"could not fetch weights for {shown_name}/{pretrained}: {err}\n"
                f"{_how_to_supply(shown_name, pretrained)}"
            ) from err
        model.eval()
        size = model.visual.image_size
        image_size = int(size if isinstance(size, int) else size[0])
    tokenizer = (
        open_clip.get_tokenizer(shown_name) if name is not None else open_clip.get_tokenizer("ViT-B-16")
    )
    return LoadedCLIP(
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        reference_preprocess=reference_transform(reference_size or image_size, *image_normalisation(model)),
        name=shown_name,
        pretrained=pretrained if checkpoint is None else str(checkpoint),
        image_size=image_size,
    )
