"""Time of every method of the zoo against one vanilla image forward (ViT-B/16 or ``--tower``, random
weights; a method the tower does not run gets a row saying why).

For each batch size (default 1 and 8) at one image size (default 224 px), every method is timed
against the vanilla forward ``model.visual(x)`` of the same model and images:

* forward-only methods (every preset of ``surgery_lib.methods.METHODS``): the method's image forward
  ``dense_forward(model, x, config)`` plus what turns its tokens into per-token similarities (L2
  normalisation, then :func:`surgery_lib.maps.explain.similarity` with ``--classes`` text features,
  where feature surgery acts). Text features are random unit vectors: the text tower is not timed
  (``explain`` caches text features per label). Target: ≤ 1.10 × vanilla.
* gradient methods (every entry of ``GRADIENT_METHODS``): ``gradient_maps(model, x, text, config)``
  for ONE text, i.e. the time per text for one label (a forward with the graph kept plus one backward
  pass to the activations; each further label adds a backward pass). Target: ≤ 3 × vanilla.

Rigour as in ``bench_surgery.py`` (whose timing helpers this script reuses): each (method, batch) case
is warmed up, then ``--repeats`` vanilla and method repeats are interleaved (the order alternating
every repeat), and the ratio column is the median of the per-repeat ratios of these adjacent pairs,
so that drift in machine speed hits both alike. A first row times vanilla against itself (A/A): its
ratio shows how far from 1.00 noise alone moves a ratio on this machine in this run. The vanilla
forward and the forward-only methods run under ``torch.inference_mode()``; the gradient methods
cannot (they back-propagate) and run with autograd on; the model's parameters keep open_clip's
``requires_grad=True`` (gradients are taken with respect to activations only). The weights are random
(no download), which does not change the cost; the model is created for the image size
(``force_image_size``), since vanilla open_clip only runs at that size.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_methods.py                  # CPU, 224 px, batch 1 and 8
    .venv/bin/python benchmarks/bench_methods.py --quick          # smoke run: 2 repeats
    .venv/bin/python benchmarks/bench_methods.py --device cuda
    .venv/bin/python benchmarks/bench_methods.py --tower ViT-B-16-SigLIP   # another tower (§13)

``main(argv)`` can also be called from Python with a list of arguments; it returns 0. Progress goes to
stderr, the table to stdout. CPU timings are only meaningful on an otherwise idle machine: the header
prints the load average before the run, and the footer after it.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

# Run as a plain script, ``benchmarks/`` is on sys.path but the repository root may not be; imported
# from a file (the smoke test), neither is.
HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bench_surgery import format_table, time_interleaved  # noqa: E402

from surgery_lib.config import GradientConfig, SurgeryConfig  # noqa: E402
from surgery_lib.maps.explain import similarity  # noqa: E402
from surgery_lib.methods import GRADIENT_METHODS, METHODS, get_method  # noqa: E402
from surgery_lib.model import (  # noqa: E402
    SurgeryError,
    UnsupportedModelError,
    class_texts,
    dense_forward,
    gradient_maps,
    tower_info,
    with_vfm,
)

MODEL_NAME = "ViT-B-16"
TARGET_FORWARD = 1.10  # forward-only method / vanilla forward, at most
TARGET_GRADIENT = 3.0  # gradient method (one text) / vanilla forward, at most
QUICK_REPEATS = 2
CONTROL = "vanilla (A/A)"


@dataclass
class Row:
    method: str
    kind: str  # "control", "forward" or "gradient"
    batch: int
    vanilla_s: float
    method_s: float
    ratio: float  # median of the per-repeat method / vanilla ratios (nan: not run on this tower)
    why_not: str = ""  # why the method does not run on the tower

    @property
    def target(self) -> float | None:
        return {"forward": TARGET_FORWARD, "gradient": TARGET_GRADIENT}.get(self.kind)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Every method of the zoo against one vanilla forward (ViT-B/16, random weights)."
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--tower",
        default=MODEL_NAME,
        help="open_clip model name of the tower, random weights (default: ViT-B-16; e.g. ViT-B-16-SigLIP, "
        "EVA02-B-16, ViT-L-14-336)",
    )
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default: the tower's)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (default: 5)")
    parser.add_argument(
        "--classes", type=int, default=20, help="text features of the forward-only methods' similarity (20)"
    )
    parser.add_argument(
        "--methods", nargs="+", default=None, help="a subset of the methods (default: every method)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_REPEATS} repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, QUICK_REPEATS)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.classes < 2:
        parser.error("--classes must be >= 2 (feature surgery's class mean needs more than one text)")
    known = [*METHODS, *GRADIENT_METHODS]
    unknown = [m for m in args.methods or () if m not in known]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.methods = [m for m in known if args.methods is None or m in args.methods]
    return args


def build_model(tower: str, size: int | None, device: torch.device) -> tuple[nn.Module, int]:
    """The tower's open_clip model with random weights, created for ``size`` px inputs (vanilla open_clip
    needs that; timm towers only at their own size): ``(model, size)``."""
    torch.manual_seed(0)
    cfg = open_clip.get_model_config(tower)
    if cfg is None:
        raise SystemExit(f"unknown open_clip model {tower!r}")
    native = cfg["vision_cfg"].get("image_size", 224)
    native = int(native if isinstance(native, int) else native[0])
    size = size or native
    timm_tower = bool(cfg["vision_cfg"].get("timm_model_name"))
    if timm_tower and size != native:
        raise SystemExit(f"{tower} is a timm tower: it runs at its own size {native} px only")
    forced = {} if timm_tower or size == native else {"force_image_size": size}
    model = open_clip.create_model(tower, pretrained=None, **forced)
    patch = tower_info(model).stride[0]
    if size % patch:
        raise SystemExit(f"image size {size} is not a multiple of the patch size {patch}")
    return model.eval().to(device), size


def method_call(
    model: nn.Module, images: torch.Tensor, texts: torch.Tensor, config: SurgeryConfig | GradientConfig
) -> Callable[[], object]:
    """One call of the method: maps' worth of work for ``images`` (see the module doc)."""
    if isinstance(config, GradientConfig):  # LeGrad on SigLIP also reads its "empty" text embedding
        empty = texts[1] if tower_info(model).class_token == "pooled" else None
        return lambda: gradient_maps(model, images, texts[:1], config, empty_text_feature=empty)

    def forward() -> object:
        with torch.inference_mode(), class_texts(texts):  # ResCLIP's feedback reads the class texts
            tokens, _ = dense_forward(model, images, config)
            return similarity(F.normalize(tokens, dim=-1), texts, config)

    return forward


_DINO: dict[int, nn.Module] = {}


def _subject(model: nn.Module, method: str, size: int) -> nn.Module:
    """What ``method`` runs on: the model, or — for a method that reads a vision foundation model
    (ProxyCLIP) — the model paired with a DINO ViT-B/8 of random weights (its real cost, VFM included)."""
    if not get_method(method).needs_vfm:
        return model
    if size not in _DINO:
        from timm.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        _DINO[size] = VisionTransformer(
            img_size=size, patch_size=8, embed_dim=768, depth=12, num_heads=12, qkv_bias=True, num_classes=0
        ).eval()
    device = next(model.parameters()).device
    return with_vfm(model, _DINO[size].to(device))


@torch.no_grad()
def _embed_dim(model: nn.Module, size: int) -> int:
    """The image embedding's width (open_clip's timm towers do not record it)."""
    device = next(model.parameters()).device
    return int(model.encode_image(torch.zeros(1, 3, size, size, device=device)).shape[-1])


def _why_not(call: Callable[[], object]) -> str:
    """Why the method does not run on this tower (its error), or "" when it runs."""
    try:
        call()
    except (UnsupportedModelError, SurgeryError) as error:  # a tower, or an input too small (SC-CLIP)
        return str(error).split(":")[0]
    return ""


def bench(args: argparse.Namespace, device: torch.device) -> list[Row]:
    model, args.size = build_model(args.tower, args.size, device)
    texts = F.normalize(
        torch.randn(args.classes, _embed_dim(model, args.size), generator=torch.Generator().manual_seed(0)),
        dim=-1,
    )
    texts = texts.to(device)
    configs = {**METHODS, **GRADIENT_METHODS}
    rows: list[Row] = []
    for batch in args.batches:
        images = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        images = images.to(device)

        def vanilla(images: torch.Tensor = images) -> object:
            with torch.inference_mode():
                return model.visual(images)

        cases: dict[str, Callable[[], object]] = {CONTROL: vanilla}
        cases.update(
            {m: method_call(_subject(model, m, args.size), images, texts, configs[m]) for m in args.methods}
        )
        for name, fn in cases.items():
            kind = "control" if name == CONTROL else "gradient" if name in GRADIENT_METHODS else "forward"
            why_not = _why_not(fn) if name != CONTROL else ""
            if why_not:
                nan = float("nan")
                rows.append(Row(name, kind, batch, nan, nan, nan, why_not))
                continue
            times = time_interleaved({"vanilla": vanilla, "method": fn}, device, args.repeats)
            ratios = [m / v for m, v in zip(times["method"], times["vanilla"], strict=True)]
            rows.append(
                Row(
                    method=name,
                    kind=kind,
                    batch=batch,
                    vanilla_s=statistics.median(times["vanilla"]),
                    method_s=statistics.median(times["method"]),
                    ratio=statistics.median(ratios),
                )
            )
            print(f"  done: {name}, batch {batch}", file=sys.stderr, flush=True)
    return rows


def table(rows: Sequence[Row]) -> str:
    headers = ("method", "kind", "batch", "vanilla ms", "method ms", "method/vanilla", "target", "check")
    cells = []
    for r in rows:
        target = r.target
        if r.why_not:
            cells.append((r.method, r.kind, str(r.batch), "", "", "", "", f"n/a: {r.why_not}"))
            continue
        cells.append(
            (
                r.method,
                r.kind,
                str(r.batch),
                f"{r.vanilla_s * 1e3:.1f}",
                f"{r.method_s * 1e3:.1f}",
                f"{r.ratio:.3f}",
                "" if target is None else f"≤ {target:.2f}",
                "" if target is None else ("PASS" if r.ratio <= target else "FAIL"),
            )
        )
    return format_table(headers, cells)


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def header(device: torch.device, args: argparse.Namespace) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    quick = "   [--quick]" if args.quick else ""
    return "\n".join(
        [
            f"date:      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"torch:     {torch.__version__}   open_clip: {open_clip.__version__}",
            f"python:    {platform.python_version()}",
            f"device:    {device} ({name})",
            f"threads:   {torch.get_num_threads()}",
            f"load avg:  {load()} (1, 5, 15 min; before the run)",
            f"model:     {args.tower}, random weights, {args.size or 'native'} px, float32",
            f"texts:     {args.classes} random text features (forward-only methods); 1 (gradient methods)",
            f"repeats:   {args.repeats} interleaved pairs per case (median, after 1 warm-up call){quick}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(header(device, args))
    print(flush=True)
    rows = bench(args, device)
    print("Every method against one vanilla forward model.visual(x) of the same images")
    print(table(rows))
    print(
        "(ms: medians; method/vanilla: median of the ratios of interleaved repeat pairs; forward: the "
        "dense forward + similarity; gradient: one text, forward + one backward)"
    )
    print()
    print(f"load avg:  {load()} (after the run)")
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
