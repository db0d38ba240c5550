"""Train the project's small CLIP on composites of real photo cut-outs.

    python -m surgery_lib.toy.train --arch toy-vit            # default recipe, CPU (~25 min)
    python -m surgery_lib.toy.train --arch toy-vit --steps 3000   # the shipped toy-vit (~55 min)
    python -m surgery_lib.toy.train --arch toy-vit --resume   # continue from the last checkpoint
    python -m surgery_lib.toy.train --arch toy-vit --device cuda --steps 20000

Loss: the CLIP contrastive loss on captions ("a photo of a horse and a car"; identical captions in a
batch count as positives of each other) plus a class-prompt loss: the image feature against the
text features of "a photo of a {class}." for every class, with the present classes as a uniform
soft target. Training is deterministic for a seed: batch ``s`` always holds composites
``s·B … s·B + B − 1`` of the generator, whatever was resumed. Needs the data cache of ``make data``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from ..images import OPENAI_MEAN, OPENAI_STD
from ..text import PROMPT_TEMPLATES
from .models import TOY_MODELS, WEIGHTS_DIR, register_configs, sha256

CLASS_PROMPT = "a photo of a {}."


def _to_tensor(image) -> torch.Tensor:
    """RGB PIL image -> normalised ``(3, H, W)`` float32."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return (array - mean) / std


class CompositeBatches(IterableDataset):
    """Batches ``start … stop − 1`` of a composite generator: (images, captions, multi-hot labels)."""

    def __init__(
        self, cache_dir: Path, size: int, batch: int, start: int, stop: int, seed: int, augment: bool = False
    ) -> None:
        self.cache_dir, self.size, self.batch = cache_dir, size, batch
        self.start, self.stop, self.seed, self.augment = start, stop, seed, augment

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str], torch.Tensor]]:
        from .data import CompositeGenerator

        gen = CompositeGenerator(
            self.cache_dir, split="train", size=self.size, seed=self.seed, augment=self.augment
        )
        index = {c: i for i, c in enumerate(gen.classes)}
        for step in range(self.start, self.stop):
            images, captions = [], []
            hot = torch.zeros(self.batch, len(gen.classes))
            for i in range(self.batch):
                comp = gen.sample(step * self.batch + i)
                images.append(_to_tensor(comp.image))
                captions.append(comp.caption)
                for label in comp.labels:
                    hot[i, index[label]] = 1.0
            yield torch.stack(images), captions, hot


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, captions: Sequence[str], scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss; identical captions are positives of each other (soft targets).

    Args:
        image, text: normalised ``(B, D)``.
    """
    same = torch.tensor(
        [[a == b for b in captions] for a in captions], dtype=image.dtype, device=image.device
    )
    target = same / same.sum(dim=1, keepdim=True)
    logits = scale * image @ text.t()
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def class_prompt_loss(
    image: torch.Tensor, class_text: torch.Tensor, hot: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of image features ``(B, D)`` over class-prompt features ``(C, D)``, soft targets."""
    target = hot / hot.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(scale * image @ class_text.t(), dim=1)).sum(1).mean()


def _class_prompts(
    tokenizer, classes: Sequence[str], templates: Sequence[str], seed: int, step: int
) -> torch.Tensor:
    """Tokens of one prompt per class, each with a template drawn for this step (deterministic)."""
    rng = np.random.default_rng([seed, step, 7])
    picks = rng.integers(0, len(templates), size=len(classes))
    return tokenizer([templates[int(k)].format(c) for k, c in zip(picks, classes, strict=True)])


def _memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last for a convolutional image tower (about 1.3x faster on CPU), else contiguous."""
    convolutional = any(
        isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in model.visual.modules()
    )
    return torch.channels_last if convolutional else torch.contiguous_format


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m surgery_lib.toy.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=TOY_MODELS, default="toy-vit")
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default: the recipe's, per arch)"
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--class-loss-weight", type=float, default=1.0)
    p.add_argument(
        "--template-variety",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="class prompts drawn from the 85 ensemble templates (default) instead of 'a photo of a {}.'",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="rotate, stretch and recolour the pasted objects (surgery_lib.toy.data.AUGMENT_*)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as torch chooses)")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes (0: in the main process)")
    p.add_argument("--cache", type=Path, default=Path("data/cache"), help="the cache written by `make data`")
    p.add_argument("--work", type=Path, default=Path("build/train"), help="checkpoints go here")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="exported fp16 weights go here")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from <work>/<arch>-last.pt")
    p.add_argument("--no-export", action="store_true")
    return p


# The default recipes take about 25 min each on a 2-core CPU. The shipped toy-vit is the same recipe
# with --steps 3000 (about 55 min): it is compute-bound (data/models/README.md).
DEFAULT_STEPS = {"toy-vit": 1400, "toy-rn": 600}


def train(argv: Sequence[str] | None = None) -> Path | None:
    """Run training; returns the exported weights path (or None with ``--no-export``)."""
    import open_clip
    from tqdm import tqdm

    args = _parser().parse_args(argv)
    steps = args.steps or DEFAULT_STEPS[args.arch]
    if args.threads:
        torch.set_num_threads(args.threads)
    register_configs()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = open_clip.create_model(args.arch, pretrained=None).to(device)
    memory_format = _memory_format(model)
    model.visual.to(memory_format=memory_format)
    tokenizer = open_clip.get_tokenizer(args.arch)
    optimizer = torch.optim.AdamW(
        _param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6
    )
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.work / f"{args.arch}-last.pt"
    start, elapsed = 0, 0.0
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resumed {args.arch} at step {start}", file=sys.stderr)
    from .data import CompositeGenerator

    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    classes = CompositeGenerator(args.cache, split="train", size=size, seed=args.seed).classes
    templates = PROMPT_TEMPLATES if args.template_variety else (CLASS_PROMPT,)
    data = CompositeBatches(args.cache, size, args.batch, start, steps, args.seed, args.augment)
    loader = DataLoader(
        data, batch_size=None, num_workers=args.workers, prefetch_factor=4 if args.workers else None
    )
    model.train()
    torch.set_grad_enabled(True)  # a caller's no_grad / inference mode would silently stop training
    t0 = time.monotonic()
    bar = tqdm(loader, total=steps - start, initial=0, desc=args.arch, dynamic_ncols=True)
    step = start
    for images, captions, hot in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, args.warmup, args.lr)
        images, hot = images.to(device, memory_format=memory_format), hot.to(device)
        image_f = model.encode_image(images, normalize=True)
        text_f = model.encode_text(tokenizer(captions).to(device), normalize=True)
        class_f = model.encode_text(
            _class_prompts(tokenizer, classes, templates, args.seed, step).to(device), normalize=True
        )
        scale = model.logit_scale.exp().clamp(max=100)
        loss_c = contrastive_loss(image_f, text_f, captions, scale)
        loss_k = class_prompt_loss(image_f, class_f, hot, scale)
        loss = loss_c + args.class_loss_weight * loss_k
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.set_postfix(loss=f"{loss.item():.3f}", clip=f"{loss_c.item():.3f}", cls=f"{loss_k.item():.3f}")
        if step % args.ckpt_every == 0 or step == steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed": elapsed + time.monotonic() - t0,
            }
            torch.save(state, ckpt_path)
    elapsed += time.monotonic() - t0
    model.eval()
    if args.no_export:
        return None
    return export(model, args, steps, elapsed, classes)


def export(
    model: nn.Module, args: argparse.Namespace, steps: int, elapsed: float, classes: Sequence[str]
) -> Path:
    """Write fp16 safetensors weights and a metadata JSON next to them."""
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.arch}.safetensors"
    save_file(
        {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}, path
    )
    meta = {
        "arch": args.arch,
        "steps": steps,
        "batch": args.batch,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup": args.warmup,
        "class_loss_weight": args.class_loss_weight,
        "template_variety": args.template_variety,
        "augment": args.augment,
        "seed": args.seed,
        "device": args.device,
        "train_seconds": round(elapsed, 1),
        "classes": list(classes),
        "sha256": sha256(path),
        "torch": torch.__version__,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"exported {path} ({path.stat().st_size / 2**20:.1f} MiB) after {elapsed / 60:.1f} min",
        file=sys.stderr,
    )
    return path


if __name__ == "__main__":
    train()
