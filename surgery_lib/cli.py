"""Command line: explain images for some labels and write heat-map overlays.

    python -m surgery_lib explain photo.jpg --labels cat dog                     # the project's toy-vit
    python -m surgery_lib explain photo.jpg --labels cat dog --model ViT-B-16 --pretrained openai

Writes ``<stem>_<label>_<method>.png`` per image, label and method (``raw`` CLIP and/or CLIP
``surgery``) into ``--out``, and ``summary.json`` with the image-level probabilities and the SAM
point prompts of the surgery maps.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .config import SurgeryConfig
from .explain import explain
from .images import preprocess_images, to_rgb
from .loading import load_clip
from .render import overlay

METHODS = {"raw": SurgeryConfig.off, "surgery": SurgeryConfig.paper}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "label"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m surgery_lib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="similarity maps of labels on images")
    ex.add_argument("images", nargs="+", type=Path, help="image files")
    ex.add_argument("--labels", nargs="+", required=True, help="class names")
    ex.add_argument(
        "--model",
        default="toy-vit",
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
    ex.add_argument("--method", choices=["raw", "surgery", "both"], default="both")
    ex.add_argument("--depth", type=int, default=None, help="surgery depth (default: paper's 6)")
    ex.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    ex.add_argument("--device", default="cpu")
    ex.add_argument("--out", type=Path, default=Path("explanations"))
    return parser


def run_explain(args: argparse.Namespace) -> dict:
    """Run ``explain`` for the parsed arguments; returns the summary written to ``summary.json``."""
    name = None if args.model == "auto" else args.model
    clip = load_clip(name, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)
    size = args.size or clip.image_size
    methods = ["raw", "surgery"] if args.method == "both" else [args.method]
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"model": clip.name, "pretrained": clip.pretrained, "labels": args.labels, "images": {}}
    for path in args.images:
        with Image.open(path) as opened:
            image = to_rgb(opened, str(path)).copy()  # loaded before the file closes
        batch = preprocess_images([image], size=size)
        entry: dict = {"size": [image.height, image.width]}
        for method in methods:
            config = METHODS[method]()
            if method == "surgery" and args.depth is not None:
                config = config.replace(depth=args.depth)
            result = explain(
                clip.model, clip.tokenizer, batch, args.labels, config, size=(image.height, image.width)
            )
            entry[method] = {
                "probabilities": dict(zip(args.labels, result.image_scores[0].tolist(), strict=True))
            }
            for j, label in enumerate(args.labels):
                target = args.out / f"{_safe(path.stem)}_{_safe(label)}_{method}.png"
                overlay(image, result.maps[0, :, :, j], args.alpha).save(target)
            if method == "surgery":
                entry[method]["points"] = {}
                for label in args.labels:
                    points, point_labels = result.points(label)
                    entry[method]["points"][label] = {"xy": points.tolist(), "labels": point_labels.tolist()}
        summary["images"][str(path)] = entry
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with torch.no_grad():
        run_explain(args)
    print(f"wrote overlays and summary.json to {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
