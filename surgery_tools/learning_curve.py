"""A learning curve: zero-shot top-1 and the explainability of raw CLIP and CLIP Surgery per checkpoint.

    python -m surgery_tools.learning_curve toy-vit-v2 build/toy-vit-v2/snapshots/*.pt \\
        build/toy-vit-v2/export/toy-vit-v2.safetensors --out build/toy-vit-v2/curve.json

Each checkpoint is a training checkpoint of ``surgery_tools.train`` (``*.pt``: its ``model`` state and
``step``) or an exported weights file (``*.safetensors``, its step read from the JSON beside it). Every
one is measured on the held-out composite sets (``data/composites/seen_instances`` and
``new_instances``; ``--limit`` images of each) by :func:`surgery_lib.eval.sets.raw_vs_surgery_scores`, the
measure of the model card; the curve is written as JSON and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from surgery_lib.data.shipped import read_composite_set
from surgery_lib.eval.sets import raw_vs_surgery_scores
from surgery_lib.paths import data_dir

SETS = ("seen_instances", "new_instances")


def _load(arch: str, path: Path):
    """``(model, tokenizer, image_size, step)`` of a training checkpoint or an exported weights file."""
    import open_clip

    from surgery_lib.model.loading import load_clip
    from surgery_lib.model.shipped import register_configs

    if path.suffix == ".safetensors":
        clip = load_clip(arch, checkpoint=path)
        meta = path.with_suffix(".json")
        if not meta.is_file():
            raise SystemExit(f"{path}: no {meta.name} beside it to read the step from")
        return clip.model, clip.tokenizer, clip.image_size, int(json.loads(meta.read_text())["steps"])
    if path.suffix != ".pt":
        raise SystemExit(f"{path}: expected a training checkpoint (.pt) or exported weights (.safetensors)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "model" not in state or "step" not in state:
        raise SystemExit(f"{path} is not a checkpoint of surgery_tools.train (no 'model' and 'step')")
    register_configs()
    model = open_clip.create_model(arch, pretrained=None)
    model.load_state_dict(state["model"])
    model.eval()
    size = model.visual.image_size
    return (
        model,
        open_clip.get_tokenizer(arch),
        size if isinstance(size, int) else size[0],
        int(state["step"]),
    )


def measure(arch: str, checkpoints: Sequence[Path], limit: int | None = None) -> list[dict]:
    """One row per checkpoint, in step order: ``{"step", "file", <set>: raw_vs_surgery_scores(...)}``."""
    rows = []
    for path in checkpoints:
        model, tokenizer, size, step = _load(arch, Path(path))
        row: dict = {"step": step, "file": Path(path).name}
        for split in SETS:
            classes, items = read_composite_set(data_dir() / "composites" / split, limit)
            row[split] = raw_vs_surgery_scores(model, tokenizer, classes, items, size)
        rows.append(row)
    return sorted(rows, key=lambda r: r["step"])


def markdown(rows: Sequence[dict]) -> str:
    """The curve as a Markdown table: per set, zero-shot top-1 and the pointing game, mIoU and mSC of
    raw CLIP → CLIP Surgery."""
    lines = [
        "| step | set | zero-shot top-1 (%) | pointing game (%) raw → surgery | mIoU raw → surgery "
        "| mSC raw → surgery |",
        "|---:|---|---:|---|---|---|",
    ]
    for row in rows:
        for split in SETS:
            r = row[split]
            raw, surgery = r["raw"], r["surgery"]
            lines.append(
                f"| {row['step']} | {split.split('_')[0]} | {r['zero_shot_top1']:.1f} | "
                f"{raw['pointing_game']:.1f} → {surgery['pointing_game']:.1f} | "
                f"{raw['mIoU']:.1f} → {surgery['mIoU']:.1f} | {raw['mSC']:+.1f} → {surgery['mSC']:+.1f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m surgery_tools.learning_curve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("arch", help="the model config the checkpoints belong to (e.g. toy-vit-v2)")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="training checkpoints (.pt) or exports")
    parser.add_argument("--limit", type=int, default=None, help="images per set (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the curve here as JSON")
    args = parser.parse_args(argv)
    rows = measure(args.arch, args.checkpoints, args.limit)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
