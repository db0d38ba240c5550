"""Choose a training recipe without touching the held-out sets: leave one training instance out.

The held-out evaluation sets (``data/composites/``) are for the model card only. To compare recipes,
this module carves a validation cache out of the *training* split::

    python -m surgery_tools.validate split --cache data/cache --out build/valcache
    python -m surgery_tools.train --arch toy-vit --cache build/valcache --work build/val --out build/val
    python -m surgery_tools.validate score --model toy-vit \\
        --checkpoint build/val/toy-vit.safetensors --cache build/valcache

``split`` copies the training cut-outs and the training backgrounds only; in every class with at least
``min_instances`` training instances, the last one (sorted by name) goes to the validation cache's
``heldout`` folder instead of its ``train`` folder. ``score`` reports the zero-shot top-1 over all
classes on composites of the kept instances ("fit": how well the recipe learns what it sees) and of
the left-out instances ("left_out": how well it generalises to a new instance of a class), both on
training backgrounds, with a seed the evaluation sets do not use.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from surgery_lib.maps.images import reference_transform
from surgery_lib.maps.text import Tokenizer, text_features
from surgery_tools.toy_data import CompositeGenerator

VALIDATION_SEED = 4242  # composites of the validation cache; the evaluation sets use 1001 and 1002
VALIDATION_SIZE = 224  # composites are drawn at this side and resized like the evaluation sets


def leave_one_out(cache_dir: Path, out_dir: Path, min_instances: int = 3) -> dict[str, str]:
    """Write a validation cache (layout of :func:`surgery_tools.toy_data.build_cache`) to ``out_dir``.

    Returns ``{class folder: left-out cut-out file name}``; classes with fewer than ``min_instances``
    training instances keep them all. ``out_dir`` is replaced.
    """
    if min_instances < 2:
        raise ValueError(f"min_instances must be at least 2 (a class keeps one), got {min_instances}")
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    train_root = cache_dir / "cutouts" / "train"
    backgrounds = cache_dir / "backgrounds" / "train"
    if not train_root.is_dir() or not backgrounds.is_dir():
        raise FileNotFoundError(f"{cache_dir} has no training cut-outs or backgrounds: run `make data` first")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(backgrounds, out_dir / "backgrounds" / "train")
    left_out: dict[str, str] = {}
    for folder in sorted(p for p in train_root.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        keep = files[:-1] if len(files) >= min_instances else files
        (out_dir / "cutouts" / "train" / folder.name).mkdir(parents=True)
        for path in keep:
            shutil.copy2(path, out_dir / "cutouts" / "train" / folder.name / path.name)
        if len(keep) < len(files):
            (out_dir / "cutouts" / "heldout" / folder.name).mkdir(parents=True)
            shutil.copy2(files[-1], out_dir / "cutouts" / "heldout" / folder.name / files[-1].name)
            left_out[folder.name] = files[-1].name
    if not left_out:
        raise ValueError(f"no class in {train_root} has {min_instances} or more instances to leave one out")
    return left_out


@torch.no_grad()
def score(
    model: nn.Module,
    tokenizer: Tokenizer,
    image_size: int,
    cache_dir: Path,
    images: int = 300,
    batch: int = 50,
) -> dict[str, float]:
    """Zero-shot top-1 (%) over all training classes: ``{"fit": …, "left_out": …}``.

    A prediction is correct when the best class (class token, prompt ensemble) is in the composite.
    """
    classes = CompositeGenerator(cache_dir, split="train", size=VALIDATION_SIZE).classes
    texts = text_features(model, tokenizer, classes)
    transform = reference_transform(image_size)
    result = {}
    for name, split in (("fit", "train"), ("left_out", "heldout")):
        generator = CompositeGenerator(
            cache_dir, split=split, size=VALIDATION_SIZE, seed=VALIDATION_SEED, background_split="train"
        )
        correct = 0
        for start in range(0, images, batch):
            composites = [generator.sample(i) for i in range(start, min(start + batch, images))]
            features = model.encode_image(
                torch.stack([transform(c.image) for c in composites]), normalize=True
            )
            best = (features @ texts.t()).argmax(dim=-1)
            correct += sum(classes[int(b)] in c.labels for b, c in zip(best, composites, strict=True))
        result[name] = 100.0 * correct / images
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m surgery_tools.validate", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="write the leave-one-instance-out validation cache")
    split.add_argument("--cache", type=Path, default=Path("data/cache"))
    split.add_argument("--out", type=Path, default=Path("build/valcache"))
    split.add_argument("--min-instances", type=int, default=3)
    measure = sub.add_parser("score", help="fit and left-out zero-shot top-1 of a trained model")
    measure.add_argument("--model", default="toy-vit", help="the architecture (a config in model/configs)")
    measure.add_argument("--checkpoint", type=Path, required=True, help="exported .safetensors weights")
    measure.add_argument("--cache", type=Path, default=Path("build/valcache"))
    measure.add_argument("--images", type=int, default=300)
    args = parser.parse_args(argv)
    if args.command == "split":
        left_out = leave_one_out(args.cache, args.out, args.min_instances)
        print(f"{args.out}: one instance left out in {len(left_out)} classes")
        return
    from surgery_lib.model.loading import load_clip

    clip = load_clip(args.model, checkpoint=args.checkpoint)
    result = score(clip.model.eval(), clip.tokenizer, clip.image_size, args.cache, args.images)
    print(json.dumps({"checkpoint": str(args.checkpoint), **{k: round(v, 1) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
