"""Train the project's small CLIP on composites of real photo cut-outs.

    python -m surgery_tools.train --arch toy-vit            # default recipe, CPU (~25 min)
    python -m surgery_tools.train --arch toy-vit --steps 3000   # the shipped toy-vit (~55 min)
    python -m surgery_tools.train --arch toy-vit --resume   # continue from the last checkpoint
    python -m surgery_tools.train --arch toy-vit --device cuda --steps 20000
    python -m surgery_tools.train --arch toy-vit-v2 --pool 65536 --teacher toy-rn --out build/toy-vit-v2

``--arch`` is any open_clip config in ``surgery_lib/model/configs/`` (``toy-vit``, ``toy-rn``,
``toy-vit-v2``…); weights of a model other than the shipped three are exported to ``build/<arch>/``
unless ``--out`` says otherwise.

Loss: the CLIP contrastive loss on captions ("a photo of a horse and a car"; identical captions in a
batch count as positives of each other) plus a class-prompt loss: the image feature against the
text features of "a photo of a {class}." for every class, with the present classes as a uniform
soft target. Training is deterministic for a seed: batch ``s`` always holds composites
``s·B … s·B + B − 1`` of the generator, whatever was resumed. Needs the data cache of ``make data``.

``--pool N`` renders composites ``0 … N − 1`` once into ``<work>/pool-…/`` and draws every batch from
that pool (a new order each epoch; :mod:`surgery_tools.pool`), so data costs nothing in the loop.
``--teacher NAME`` (needs ``--pool``) adds knowledge distillation from a frozen CLIP (the shipped
``toy-rn``, say): its zero-shot class logits for every pool composite are computed once, and the loss
gains ``--distill-weight`` × T² × KL(teacher ‖ student) over the class prompts at temperature T
(``--distill-temperature``). Checkpoints (``<work>/<arch>-last.pt``: model, optimizer, step) are
written every ``--ckpt-every`` steps and at least every ``--ckpt-minutes``; ``--resume`` continues
exactly. ``--stop-after S`` checkpoints at step S and stops; resuming with another ``--steps`` changes the
run's length from there (the cosine schedule follows the new length), and the checkpoints and the
exported JSON record each length as ``schedule`` (``[{"from_step": 0, "steps": 4000}, {"from_step":
1106, "steps": 3000}]`` for the shipped toy-vit-v2).
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

from surgery_lib.maps.images import OPENAI_MEAN, OPENAI_STD
from surgery_lib.maps.text import PROMPT_TEMPLATES
from surgery_lib.model.shipped import TOY_MODELS, WEIGHTS_DIR, register_configs, sha256
from surgery_lib.paths import CONFIG_DIR

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
        from surgery_tools.toy_data import CompositeGenerator

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


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), mean over the batch, for class logits
    ``(B, C)``: zero when both give the same distribution, positive otherwise."""
    t = F.log_softmax(teacher.float() / temperature, dim=1)
    s = F.log_softmax(student.float() / temperature, dim=1)
    return temperature**2 * (t.exp() * (t - s)).sum(1).mean()


def model_names() -> list[str]:
    """Every open_clip config the project ships (``surgery_lib/model/configs/*.json``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


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
    p = argparse.ArgumentParser(prog="python -m surgery_tools.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=model_names(), default="toy-vit")
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
        help="rotate, stretch and recolour the pasted objects (surgery_tools.toy_data.AUGMENT_*)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as torch chooses)")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes (0: in the main process)")
    p.add_argument("--cache", type=Path, default=Path("data/cache"), help="the cache written by `make data`")
    p.add_argument("--work", type=Path, default=Path("build/train"), help="checkpoints go here")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="exported fp16 weights go here (default: the shipped weights folder for the shipped models, "
        "build/<arch>/ for any other arch)",
    )
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument(
        "--ckpt-minutes",
        type=float,
        default=10.0,
        help="also checkpoint when this much wall time has passed since the last one (0: off)",
    )
    p.add_argument(
        "--pool",
        type=int,
        default=0,
        help="draw batches from N composites rendered once under --work (0: render on the fly)",
    )
    p.add_argument("--teacher", default=None, help="distil from this frozen CLIP (e.g. toy-rn; needs --pool)")
    p.add_argument(
        "--teacher-checkpoint", type=Path, default=None, help="the teacher's weights (default: shipped)"
    )
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--distill-temperature", type=float, default=1.0)
    p.add_argument("--resume", action="store_true", help="continue from <work>/<arch>-last.pt")
    p.add_argument("--no-export", action="store_true")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="checkpoint and stop after this step, without exporting (a later --resume goes on, e.g. "
        "with another --steps: the cosine schedule then follows the new length from there)",
    )
    return p


# The default recipes take about 25 min each on a 2-core CPU. The shipped toy-vit is the same recipe
# with --steps 3000 (about 55 min): it is compute-bound (data/models/README.md).
# toy-vit-v2 (14 × 14 tokens, ≈ 2.3 s per step of batch 64 on one thread): 3000 steps ≈ 2 h; the shipped
# weights were trained 4000-step schedule until step 1106, then 3000 (the model card has the commands).
DEFAULT_STEPS = {"toy-vit": 1400, "toy-rn": 600, "toy-vit-v2": 3000}
FALLBACK_STEPS = 1400  # any other arch
# What a checkpoint must agree on with the command resuming it (else the batches would differ).
_RESUME_KEYS = (
    "arch",
    "batch",
    "seed",
    "augment",
    "pool",
    "teacher",
    "distill_weight",
    "distill_temperature",
)


def _recipe(args: argparse.Namespace | dict) -> dict:
    """The fields of ``_RESUME_KEYS`` (the distillation ones only with a teacher, else None)."""
    doc = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    recipe = {k: doc.get(k) for k in _RESUME_KEYS}
    if not recipe["teacher"]:
        recipe["distill_weight"] = recipe["distill_temperature"] = None
    return recipe


def _load_teacher(args: argparse.Namespace, device: torch.device):
    """The frozen teacher (eval mode, no gradients) and a tag that identifies its weights."""
    from surgery_lib.model.loading import load_clip

    clip = load_clip(args.teacher, checkpoint=args.teacher_checkpoint, device=device)
    weights = args.teacher_checkpoint
    if weights is None and args.teacher in TOY_MODELS:
        from surgery_lib.model.shipped import weights_path

        weights = weights_path(args.teacher)
    tag = sha256(Path(weights))[:12] if weights is not None else str(clip.pretrained)
    clip.model.eval().requires_grad_(False)
    return clip, tag


def _pool_batches(pool, teacher_logits, start: int, stop: int, batch: int):
    """Batches ``start … stop − 1`` from a pre-rendered pool: (images, captions, hot, teacher logits)."""
    from surgery_tools.pool import normalise_uint8

    for step in range(start, stop):
        idx = pool.indices(step, batch)
        order = np.sort(idx)  # memmap reads in file order, then back to the batch's order
        back = np.argsort(np.argsort(idx))
        images = normalise_uint8(pool.images[order][back], OPENAI_MEAN, OPENAI_STD)
        captions = [pool.captions[int(i)] for i in idx]
        hot = torch.from_numpy(pool.hot[idx])
        teacher = torch.from_numpy(teacher_logits[idx]) if teacher_logits is not None else None
        yield images, captions, hot, teacher


def train(argv: Sequence[str] | None = None) -> Path | None:
    """Run training; returns the exported weights path (or None with ``--no-export``)."""
    import open_clip
    from tqdm import tqdm

    parser = _parser()
    args = parser.parse_args(argv)
    if args.teacher and not args.pool:
        parser.error("--teacher needs --pool (the teacher scores the pool once, never inside the loop)")
    if args.out is None:
        args.out = WEIGHTS_DIR if args.arch in TOY_MODELS else Path("build") / args.arch
    steps = args.steps or DEFAULT_STEPS.get(args.arch, FALLBACK_STEPS)
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
    schedule: list[dict] = []
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        recorded = _recipe(state["recipe"]) if "recipe" in state else None
        if recorded is not None and recorded != _recipe(args):
            diff = {k: (recorded[k], v) for k, v in _recipe(args).items() if recorded[k] != v}
            raise SystemExit(f"{ckpt_path} was trained with another recipe (checkpoint, now): {diff}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
        schedule = list(state.get("schedule", [{"from_step": 0, "steps": steps}]))
        print(f"resumed {args.arch} at step {start}", file=sys.stderr)
    if not schedule or schedule[-1]["steps"] != steps:
        schedule.append({"from_step": start, "steps": steps})  # the run's length, and where it changed
    if args.stop_after is not None and not start < args.stop_after <= steps:
        raise SystemExit(f"--stop-after {args.stop_after} must lie after step {start} and by step {steps}")
    from surgery_tools.toy_data import CompositeGenerator

    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    classes = CompositeGenerator(args.cache, split="train", size=size, seed=args.seed).classes
    templates = PROMPT_TEMPLATES if args.template_variety else (CLASS_PROMPT,)
    teacher_info: dict | None = None
    if args.pool:
        from surgery_tools.pool import CompositePool

        pool = CompositePool.under(args.work, args.cache, size, args.pool, args.seed, args.augment).build()
        teacher_logits = None
        if args.teacher:
            clip, tag = _load_teacher(args, device)
            teacher_logits = pool.teacher_logits(
                args.teacher,
                clip.model,
                clip.tokenizer,
                clip.image_size,
                tag,
                device,
                _memory_format(clip.model),
            )
            hits = pool.hot[np.arange(pool.count), teacher_logits.argmax(1)]
            teacher_info = {
                "name": args.teacher,
                "weights": tag,
                "pool_top1": round(100 * float(hits.mean()), 1),
            }
            print(f"teacher {args.teacher}: top-1 {teacher_info['pool_top1']} % on the pool", file=sys.stderr)
            del clip
        loader = _pool_batches(pool, teacher_logits, start, steps, args.batch)
    else:
        data = CompositeBatches(args.cache, size, args.batch, start, steps, args.seed, args.augment)
        loader = DataLoader(
            data, batch_size=None, num_workers=args.workers, prefetch_factor=4 if args.workers else None
        )
    model.train()
    torch.set_grad_enabled(True)  # a caller's no_grad / inference mode would silently stop training
    t0 = time.monotonic()
    last_save = t0
    bar = tqdm(
        loader,
        total=steps - start,
        initial=0,
        desc=args.arch,
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s
    )
    step = start
    for images, captions, hot, *extra in bar:
        teacher = extra[0] if extra else None
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
        class_logits = scale * image_f @ class_f.t()
        loss_k = class_prompt_loss(image_f, class_f, hot, scale)
        loss = loss_c + args.class_loss_weight * loss_k
        loss_d = None
        if teacher is not None:
            loss_d = distill_loss(class_logits, teacher.to(device), args.distill_temperature)
            loss = loss + args.distill_weight * loss_d
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        postfix = {
            "loss": f"{loss.item():.3f}",
            "clip": f"{loss_c.item():.3f}",
            "cls": f"{loss_k.item():.3f}",
        }
        if loss_d is not None:
            postfix["kd"] = f"{loss_d.item():.3f}"
        bar.set_postfix(postfix, refresh=False)
        now = time.monotonic()
        timed = args.ckpt_minutes > 0 and now - last_save >= 60 * args.ckpt_minutes
        stop = step == args.stop_after
        if step % args.ckpt_every == 0 or step == steps or timed or stop:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed": elapsed + now - t0,
                "recipe": _recipe(args),
                "schedule": schedule,
            }
            tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
            torch.save(state, tmp)
            tmp.replace(ckpt_path)  # an interruption while saving leaves the previous checkpoint intact
            last_save = now
            print(f"checkpoint: step {step}/{steps}, loss {loss.item():.3f}", file=sys.stderr, flush=True)
        if stop:
            break
    elapsed += time.monotonic() - t0
    model.eval()
    if args.no_export or step == args.stop_after:
        return None
    return export(model, args, steps, elapsed, classes, teacher_info, schedule)


def export(
    model: nn.Module,
    args: argparse.Namespace,
    steps: int,
    elapsed: float,
    classes: Sequence[str],
    teacher: dict | None = None,
    schedule: Sequence[dict] | None = None,
) -> Path:
    """Write fp16 safetensors weights and a metadata JSON next to them (``schedule``: the run's length
    and the steps where a resume changed it)."""
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.arch}.safetensors"
    save_file(
        {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}, path
    )
    meta = {
        "arch": args.arch,
        "steps": steps,
        "schedule": list(schedule or [{"from_step": 0, "steps": steps}]),
        "batch": args.batch,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup": args.warmup,
        "class_loss_weight": args.class_loss_weight,
        "template_variety": args.template_variety,
        "augment": args.augment,
        "pool": args.pool,
        "teacher": teacher,
        "distill_weight": args.distill_weight if teacher else None,
        "distill_temperature": args.distill_temperature if teacher else None,
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
