"""The ``surgery`` command: explain images, evaluate on a dataset, run the notebooks.

    surgery explain photo.jpg --labels cat dog                        # the project's toy-vit, offline
    surgery explain photo.jpg --labels cat dog --model ViT-B-16 --pretrained openai
    surgery evaluate --task explain --dataset composites --root data/composites/seen_instances --out runs/x
    surgery figures                                                  # = make figures

(``python -m surgery_lib ...`` is the same command.) ``explain`` writes one overlay PNG per image, label
and method into ``--out`` (``<image>_<label>_<method>.png``; names are made unique when two inputs or
two labels would clean to the same file name; an image's or a label's part longer than 100 characters
is cut and ends in a hash, so every name fits 255 bytes), drawn at most ``MAX_OVERLAY_SIDE`` (2048)
pixels on the long side, and ``summary.json`` with the image-level probabilities and the SAM point
prompts of each map (in the image's pixels). Images are decoded one at a time. ``--method`` takes
any name of :func:`surgery_lib.methods.method_names` (the dense methods and the gradient explainers);
feature surgery runs over ``--vocabulary`` (default: the labels; with exactly two classes the two maps
are complements, so pass the whole class list there and draw a few ``--labels``). A user error
(missing or unreadable image, bad label, unknown model, unwritable ``--out``) prints one line naming
the problem and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.maps.explain import explain
from surgery_lib.maps.images import open_image, preprocess_images, read_image
from surgery_lib.maps.text import check_label_tokens, distinct_by_tokens, text_features, validate_labels
from surgery_lib.methods import RAW_VS_SURGERY, method_names, resolve_method
from surgery_lib.model import (
    DEFAULT_MODEL,
    SurgeryError,
    UnsupportedModelError,
    WeightsNotAvailableError,
    load_clip,
    max_depth,
)
from surgery_lib.ui.render import COLORMAPS, MAX_OVERLAY_SIDE, overlay, overlay_size

USER_ERRORS = (
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
    UnidentifiedImageError,
    ValueError,
    TypeError,
    WeightsNotAvailableError,
    UnsupportedModelError,
    SurgeryError,
)
"""Exceptions that mean the input was wrong: reported in one line, exit status 2."""


class UsageError(ValueError):
    """A command-line input that cannot be used; the message names it."""


NAME_MAX = 255
"""The longest file name, in bytes, that common file systems take (ext4, XFS, APFS, ...)."""

_PART_MAX = 100
"""The most characters an image's or a label's part of an output name keeps (see :func:`_fit`)."""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "label"


def _fit(part: str) -> str:
    """A cleaned (ASCII) name part of at most ``_PART_MAX`` characters: a longer one keeps its start and
    ends in 8 hex digits of its SHA-256, so parts that differ only after the cut stay distinct."""
    if len(part) <= _PART_MAX:
        return part
    return f"{part[: _PART_MAX - 9]}-{hashlib.sha256(part.encode()).hexdigest()[:8]}"


def _unique_names(names: Sequence[str]) -> list[str]:
    """``names`` made unique by appending ``-2``, ``-3``, … to repeats (case-insensitively)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        out.append(name if seen[key] == 1 else f"{name}-{seen[key]}")
    taken = {n.lower() for n in out}
    if len(taken) != len(out):  # a suffixed name met an original one ("a-2" given twice): number all
        out = [f"{n}-{i}" for i, n in enumerate(out)]
    return out


def _explain_parser(sub) -> None:
    ex = sub.add_parser("explain", help="similarity maps of labels on images")
    ex.add_argument("images", nargs="+", type=Path, help="image files")
    ex.add_argument(
        "--labels", nargs="+", action="extend", required=True, help="class names (the option may repeat)"
    )
    ex.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="toy-vit / toy-rn (the project's own, offline; default), an open_clip model name "
        "(ViT-B-16, RN50, ...), or 'auto' to infer the architecture of an OpenAI-format --checkpoint",
    )
    ex.add_argument(
        "--pretrained", default="default", help="pretrained tag (default: the shipped / openai weights)"
    )
    ex.add_argument("--checkpoint", type=Path, help="local weights file (overrides --pretrained)")
    ex.add_argument(
        "--size", type=int, default=None, help="input size n for Resize((n, n)) (default: native)"
    )
    ex.add_argument(
        "--method",
        default="raw,surgery",
        help=f"comma-separated method names ({', '.join(method_names())}) or 'both' (raw,surgery)",
    )
    ex.add_argument(
        "--vocabulary",
        default=None,
        help="comma-separated class names feature surgery (and the image-level softmax) runs over, "
        "with the labels; default: the labels alone",
    )
    ex.add_argument(
        "--depth",
        type=int,
        default=None,
        help="surgery depth of the dense methods with architecture surgery (depth > 0; default: the "
        "method's); raw, feature-surgery-only and the gradient methods are left as they are",
    )
    ex.add_argument("--alpha", type=float, default=0.7, help="opacity of the map's hottest pixels")
    ex.add_argument(
        "--cmap",
        choices=tuple(COLORMAPS),
        default="inferno",
        help="colormap of the overlays (inferno, as the figures; jet: the paper's look)",
    )
    ex.add_argument("--device", default=None, help="cpu, cuda, mps... (default: $SURGERY_DEVICE, else cpu)")
    ex.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the persistent feature cache (as SURGERY_NO_CACHE=1)",
    )
    ex.add_argument("--out", type=Path, default=Path("explanations"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _explain_parser(sub)
    ev = sub.add_parser("evaluate", help="evaluate on a dataset (options: surgery evaluate --help)")
    ev.add_argument("options", nargs=argparse.REMAINDER)
    fig = sub.add_parser("figures", help="execute the notebooks (options: surgery figures --help)")
    fig.add_argument("options", nargs=argparse.REMAINDER)
    _cache_parser(sub)
    sub.add_parser(
        "towers", help="print the method × tower matrix (README, Towers), computed by running every method"
    )
    return parser


def _cache_parser(sub) -> None:
    cache = sub.add_parser("cache", help="the persistent feature cache: where it is, how big; clear it")
    cache.add_argument(
        "action",
        choices=("info", "clear"),
        help="info: location ($SURGERY_CACHE_DIR, else $XDG_CACHE_HOME/surgery_lib or "
        "~/.cache/surgery_lib), entries and size; clear: delete the cached text features",
    )


def _cache_command(args: argparse.Namespace) -> int:
    """``surgery cache info|clear``: print the feature cache's state, or empty it."""
    from surgery_lib.maps.feature_cache import cache_info, clear_disk_cache

    if args.action == "clear":
        removed = clear_disk_cache()
        print(f"removed {removed} cached text-feature files from {cache_info()['location']}")
        return 0
    info = cache_info()
    state = "on" if info["enabled"] else "off (SURGERY_NO_CACHE is set)"
    print(f"feature cache: {info['location']}")
    print(
        f"  disk cache {state}; {info['entries']} text-feature entries of {info['models']} models, "
        f"{info['bytes'] / 1e6:.2f} MB"
    )
    return 0


@contextlib.contextmanager
def _disk_cache_off(off: bool):
    """``SURGERY_NO_CACHE=1`` for the duration (``surgery explain --no-cache``), restored after."""
    saved = os.environ.get("SURGERY_NO_CACHE")
    if off:
        os.environ["SURGERY_NO_CACHE"] = "1"
    try:
        yield
    finally:
        if off and saved is None:
            os.environ.pop("SURGERY_NO_CACHE", None)
        elif off:
            os.environ["SURGERY_NO_CACHE"] = saved


def _methods(spec: str) -> dict[str, SurgeryConfig | GradientConfig]:
    """The configs of the ``--method`` names (any of :func:`~surgery_lib.methods.method_names`)."""
    names = list(RAW_VS_SURGERY) if spec == "both" else [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise UsageError("--method names no method")
    return {name: resolve_method(name) for name in dict.fromkeys(names)}


def _vocabulary(spec: str | None, labels: Sequence[str], tokenizer) -> list[str]:
    """The labels, then the ``--vocabulary`` classes not among them (each once, in order; a class that
    tokenizes like a label or an earlier class is that class, as :func:`~surgery_lib.maps.explain.explain`
    reads it)."""
    if spec is None:
        return list(labels)
    names = [v.strip() for v in spec.split(",") if v.strip()]
    if not names:
        raise UsageError("--vocabulary names no class (give comma-separated class names)")
    validate_labels(names)
    return check_label_tokens(tokenizer, distinct_by_tokens(tokenizer, [*labels, *names]))


def _check_inputs(args: argparse.Namespace) -> None:
    if args.size is not None and args.size < 1:
        raise UsageError(f"--size must be >= 1, got {args.size}")
    if args.depth is not None and args.depth < 0:
        raise UsageError(f"--depth must be >= 0, got {args.depth}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    try:
        device = torch.device(args.device or os.environ.get("SURGERY_DEVICE") or "cpu")
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(
            f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)"
        ) from None
    if device.type == "meta":
        raise UsageError(
            "--device meta holds shapes without values: nothing can be computed there; use cpu, cuda, ..."
        )
    for path in args.images:
        if path.is_dir():
            raise UsageError(f"{path} is a folder: pass image files")
        if not path.is_file():
            raise UsageError(f"{path}: no such image file")
    if len({label for label in args.labels}) != len(args.labels):
        repeated = sorted({lab for lab in args.labels if args.labels.count(lab) > 1})
        raise UsageError(f"labels repeated: {', '.join(map(repr, repeated))}")
    validate_labels(args.labels)


def _kind(config: SurgeryConfig | GradientConfig) -> str:
    return "gradient" if isinstance(config, GradientConfig) else "dense"


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".surgery-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {out}: {error.strerror or error}") from None


@contextlib.contextmanager
def _reading(path: Path):
    """Errors of opening or decoding ``path`` as one line naming it (an over-cap or unusable image is an
    :class:`~surgery_lib.maps.images.ImageInputError` naming it already)."""
    try:
        yield
    except UnidentifiedImageError:
        raise UsageError(f"{path} is not an image file PIL can read") from None
    except OSError as error:  # a truncated or damaged file, or one that cannot be read
        raise UsageError(f"{path} cannot be read as an image: {error.strerror or error}") from None


def _check_image(path: Path) -> None:
    """Check an input without keeping it: the header (size, mode), then a decode of the pixels, which
    are dropped at once (JPEGs are decoded at 1/8 scale: all the data, a 64th of the pixels; ``draft``
    does nothing for other formats)."""
    with _reading(path), open_image(path, str(path)) as opened:
        opened.draft("RGB", (max(1, opened.width // 8), max(1, opened.height // 8)))
        opened.load()


def _output_names(images: Sequence[Path], labels: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """The overlay file names ``<image>_<label>_<method>.png``, per image a dict ``(label index, method)
    -> name``: cleaned, parts over ``_PART_MAX`` characters cut (:func:`_fit`), made unique; every name
    is checked to fit ``NAME_MAX`` bytes before anything is written."""
    stems = _unique_names([_fit(_safe(p.stem)) for p in images])
    label_names = _unique_names([_fit(_safe(label)) for label in labels])
    names = [
        {
            (j, method): f"{stem}_{label}_{method}.png"
            for method in methods
            for j, label in enumerate(label_names)
        }
        for stem in stems
    ]
    for path, per_image in zip(images, names, strict=True):
        for name in per_image.values():
            if len(name.encode()) > NAME_MAX:
                raise UsageError(f"the overlay name {name!r} for {path} is longer than {NAME_MAX} bytes")
    return names


def _explain_image(
    args: argparse.Namespace, clip, methods: dict, vocabulary: list[str], path: Path, names: dict, size: int
) -> dict:
    """One image's overlays (drawn at most ``MAX_OVERLAY_SIDE`` pixels on the long side) and its summary
    entry; the decoded image is dropped on return."""
    with _reading(path):
        image = read_image(path, str(path))
    batch = preprocess_images([image], size=size)
    height, width = image.height, image.width
    shown = overlay_size(width, height, MAX_OVERLAY_SIDE)
    if shown != (width, height):
        image = image.resize(shown, Image.BILINEAR)  # the full-size pixels go here
    entry: dict = {
        "path": str(path),
        "size": [height, width],
        "overlay_size": [shown[1], shown[0]],
        "methods": {},
    }
    for method, config in methods.items():
        result = explain(
            clip.model,
            clip.tokenizer,
            batch,
            args.labels,
            method=config,
            size=(shown[1], shown[0]),
            vocabulary=vocabulary,
        )
        record: dict = {"probabilities": result.image_scores[0].tolist(), "overlays": [], "points": []}
        for j, label in enumerate(args.labels):  # one label at a time
            target = args.out / names[(j, method)]
            overlay(image, result.maps[0, :, :, j], args.alpha, args.cmap).save(target)
            points, point_labels = result.points(label, image_size=(height, width))  # the image's pixels
            record["overlays"].append(target.name)
            record["points"].append({"xy": points.tolist(), "labels": point_labels.tolist()})
        entry["methods"][method] = record
    return entry


def run_explain(args: argparse.Namespace) -> dict:
    """Run ``explain`` for the parsed arguments; returns the summary written to ``summary.json``.

    Every input is checked before anything is written: the model first (a mistyped ``--model`` is
    named before any image is read), labels (as the tokenizer sees them), methods, depth, then each
    image's header (size and mode, before decoding) and its pixels (decoded and dropped, one at a
    time), and the output names. Then the images are decoded and explained one at a time, so memory
    does not grow with the number of inputs; overlays are drawn at most ``MAX_OVERLAY_SIDE`` pixels on
    the long side, the points in ``summary.json`` stay in the image's pixels.
    """
    _check_inputs(args)
    methods = _methods(args.method)
    name = None if args.model == "auto" else args.model
    clip = load_clip(name, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)
    check_label_tokens(clip.tokenizer, args.labels)
    vocabulary = _vocabulary(args.vocabulary, args.labels, clip.tokenizer)
    text_features(clip.model, clip.tokenizer, vocabulary)  # too long or non-finite: said now (and cached)
    if args.depth is not None:
        limit = max_depth(clip.model)
        if args.depth > limit:
            raise UsageError(
                f"--depth {args.depth} but the image tower of {clip.name} allows at most {limit}"
            )
        methods = {
            k: c.replace(depth=args.depth) if isinstance(c, SurgeryConfig) and c.depth else c
            for k, c in methods.items()
        }
    for path in args.images:
        with _reading(path):
            open_image(path, str(path)).close()  # the header: size and mode
    for path in args.images:
        _check_image(path)
    names = _output_names(args.images, args.labels, list(methods))
    size = args.size or clip.image_size
    _prepare_out(args.out)
    summary: dict = {
        "model": clip.name,
        "pretrained": clip.pretrained,
        "labels": list(args.labels),
        "vocabulary": vocabulary,
        "methods": list(methods),
        "configs": {name: {"kind": _kind(c), **dataclasses.asdict(c)} for name, c in methods.items()},
        "images": [],
    }
    for path, per_image in zip(args.images, names, strict=True):
        summary["images"].append(_explain_image(args, clip, methods, vocabulary, path, per_image, size))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surgery`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # evaluate and figures hand their options on as they are (argparse's REMAINDER would not take a
    # leading --option after a subcommand)
    if argv[:1] == ["evaluate"]:
        from surgery_lib.eval.runner import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv[:1] == ["figures"]:
        from surgery_lib.ui.notebooks import main as figures_main

        return figures_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "cache":
        return _cache_command(args)
    if args.command == "towers":
        from surgery_lib.eval.towers import markdown_matrix, method_tower_matrix, project_towers

        print(
            markdown_matrix(method_tower_matrix({name: build() for name, build in project_towers().items()}))
        )
        return 0
    try:
        with torch.no_grad(), _disk_cache_off(args.no_cache):
            run_explain(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"surgery explain: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote overlays and summary.json to {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
