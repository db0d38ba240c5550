"""Speed and memory benchmark of CLIP Surgery against vanilla open_clip (ViT-B/16, random weights).

What it measures, all in one run, printed as plain-text tables that can be pasted into a note:

1. Image forward. For each image size × batch: the vanilla forward ``model.visual(x)`` against the
   surgery forward ``dense_forward(model, x, SurgeryConfig.paper())``, the median time of each and
   the ratio surgery / vanilla, checked against the reference target ratio ≤ 1.10. Each case is
   warmed up first, then vanilla and surgery repeats are interleaved (the order alternates every
   repeat) so that machine noise hits both alike; the ratio column is the median of the per-repeat
   ratios of these adjacent pairs. Vanilla open_clip only runs at the size the model was created
   for, so every size gets its own model (``force_image_size=size``) and both forwards run on that
   same model; the weights are random, which does not change the cost.
   ``--gpu-throughput`` replaces the sizes × batches grid by batch 64 at 224 px and batch 16 at
   448 px and adds a table of throughput (images/s) of vanilla and surgery.

2. Feature surgery at 448 px geometry (1 + 28·28 = 785 tokens, D = 512) for 20 and 171 classes:
   time and peak memory of ``feature_surgery`` (O(B·N·T)) against ``feature_surgery_naive``
   (materialises the B×N×T×D product like the reference code), and the memory ratio naive / ours,
   checked against the target ≥ 100×. Inputs are random normalised tensors of the right shapes.
   Each timing repeat runs the call in a loop long enough to be above timer resolution.

Peak memory. On CPU it is measured with ``torch.profiler.profile(profile_memory=True)``: the
profiler records every allocation and free of torch's CPU allocator with a timestamp; the peak is
the maximum of their running sum over the call, i.e. the most bytes the call held at once (inputs
excluded, output included). The alternative, ``ru_maxrss`` of a fresh process, was tried and
rejected: it is exact only for the large naive case, and for our form (about 1 MB) it reads page
faults of the allocator and threads instead (about 5 MB), which would understate the ratio ~5×.
On CUDA the peak is ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``,
minus what was allocated before the call.

Everything runs under ``torch.inference_mode()``; ``--dtype float16`` wraps the forwards and the
feature-surgery calls in ``torch.autocast(device_type, dtype=torch.float16)`` (weights stay float32;
the feature-surgery inputs are then float16, as the tokens of an autocast forward are).

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_surgery.py                  # CPU, default grid (~5 min, 2 cores)
    .venv/bin/python benchmarks/bench_surgery.py --quick --sizes 224 --batches 1   # smoke run
    .venv/bin/python benchmarks/bench_surgery.py --device cuda --dtype float16 --gpu-throughput

``main(argv)`` can also be called from Python with a list of arguments; it returns 0. Progress goes
to stderr, the tables to stdout. CPU timings are only meaningful on an otherwise idle machine: with
other processes on the same cores the thread pools stall and times can grow several-fold.
"""

import argparse
import contextlib
import datetime
import math
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
from torch.profiler import ProfilerActivity, profile

# Run as a plain script, ``benchmarks/`` is on sys.path but the repository root may not be.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from surgery_lib.config import SurgeryConfig  # noqa: E402
from surgery_lib.maps.features import feature_surgery, feature_surgery_naive  # noqa: E402
from surgery_lib.model import dense_forward  # noqa: E402

MODEL_NAME = "ViT-B-16"
PATCH_SIZE = 16
EMBED_DIM = 512
FEATURE_IMAGE_SIZE = 448
TARGET_TIME_RATIO = 1.10  # surgery / vanilla image forward, at most
TARGET_MEMORY_RATIO = 100.0  # naive / ours peak memory of feature surgery, at least
GPU_THROUGHPUT_CASES: tuple[tuple[int, int], ...] = ((224, 64), (448, 16))  # (image size, batch)
WARMUP = 1  # untimed calls of each function before the timed repeats
FEATURE_MIN_SECONDS = 0.05  # each feature-surgery timing repeat loops at least this long
QUICK_REPEATS = 2
QUICK_FEATURE_MIN_SECONDS = 0.005


@dataclass
class ForwardRow:
    size: int
    batch: int
    vanilla_s: float
    surgery_s: float
    ratio: float  # median of the per-repeat surgery / vanilla ratios


@dataclass
class FeatureRow:
    classes: int
    batch: int
    ours_s: float
    naive_s: float
    ours_bytes: int
    naive_bytes: int
    max_abs_diff: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time and memory of CLIP Surgery against vanilla open_clip (ViT-B/16, random weights)."
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="float16 runs the forwards under torch.autocast(device, float16) (default: float32)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (default: 5)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="image sizes in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="image-forward batch sizes")
    parser.add_argument(
        "--feature-batch", type=int, default=1, help="batch of the feature-surgery benchmark (default: 1)"
    )
    parser.add_argument(
        "--classes", type=int, nargs="+", default=[20, 171], help="class counts T for feature surgery"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_REPEATS} repeats, short loops"
    )
    parser.add_argument(
        "--gpu-throughput",
        action="store_true",
        help="image forward at batch 64 / 224 px and batch 16 / 448 px (ignores --sizes and --batches) "
        "and print throughput in images/s",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = QUICK_REPEATS
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    for size in args.sizes:
        if size % PATCH_SIZE != 0:
            parser.error(f"image size {size} is not a multiple of the patch size {PATCH_SIZE}")
    return args


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer read after it covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` for float16, nothing for float32."""
    if dtype == torch.float16:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def time_once(fn: Callable[[], object], device: torch.device, loops: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``loops`` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / loops


def loops_for(fn: Callable[[], object], device: torch.device, min_seconds: float) -> int:
    """How many back-to-back calls of ``fn`` take at least ``min_seconds`` (at least 1)."""
    once = time_once(fn, device)
    return max(1, math.ceil(min_seconds / max(once, 1e-9)))


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    loops: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """Per-repeat seconds per call of each function, after ``WARMUP`` untimed calls of each.

    Within a repeat every function is timed once, over ``loops[name]`` back-to-back calls (default
    1); the order alternates between repeats, so that drift in machine speed hits all alike.
    """
    for fn in fns.values():
        for _ in range(WARMUP):
            fn()
    synchronize(device)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(time_once(fns[name], device, (loops or {}).get(name, 1)))
    return times


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most bytes held at once by the allocations made during one call of ``fn`` (see module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu and cuda only, not {device.type}")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # silence kineto's start/stop log lines on stderr
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # One "[memory]" event per allocation (nbytes > 0) and per free (nbytes < 0) of the CPU allocator.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def build_model(size: int, device: torch.device) -> nn.Module:
    """ViT-B/16 with random weights, created for ``size`` px inputs (vanilla open_clip needs that)."""
    model = open_clip.create_model(MODEL_NAME, pretrained=None, force_image_size=size)
    return model.eval().to(device)


def bench_image_forward(
    cases: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype, repeats: int
) -> list[ForwardRow]:
    """Vanilla ``model.visual`` against the surgery ``dense_forward`` for each (size, batch)."""
    config = SurgeryConfig.paper()
    models: dict[int, nn.Module] = {}
    rows: list[ForwardRow] = []
    for size, batch in cases:
        if size not in models:
            torch.manual_seed(0)
            models[size] = build_model(size, device)
        model = models[size]
        images = torch.randn(batch, 3, size, size, device=device)

        def vanilla(model: nn.Module = model, images: torch.Tensor = images) -> object:
            with autocast_context(device, dtype):
                return model.visual(images)

        def surgery(model: nn.Module = model, images: torch.Tensor = images) -> object:
            with autocast_context(device, dtype):
                return dense_forward(model, images, config)

        times = time_interleaved({"vanilla": vanilla, "surgery": surgery}, device, repeats)
        ratios = [s / v for s, v in zip(times["surgery"], times["vanilla"], strict=True)]
        rows.append(
            ForwardRow(
                size=size,
                batch=batch,
                vanilla_s=statistics.median(times["vanilla"]),
                surgery_s=statistics.median(times["surgery"]),
                ratio=statistics.median(ratios),
            )
        )
        print(f"  done: image forward {size} px, batch {batch}", file=sys.stderr, flush=True)
    return rows


def bench_feature_surgery(
    classes: Sequence[int],
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    min_seconds: float,
) -> list[FeatureRow]:
    """``feature_surgery`` against ``feature_surgery_naive`` at 448 px geometry for each class count."""
    tokens = 1 + (FEATURE_IMAGE_SIZE // PATCH_SIZE) ** 2
    rows: list[FeatureRow] = []
    for t in classes:
        gen = torch.Generator().manual_seed(t)
        image_tokens = F.normalize(torch.randn(batch, tokens, EMBED_DIM, generator=gen), dim=-1)
        text_features = F.normalize(torch.randn(t, EMBED_DIM, generator=gen), dim=-1)
        image_tokens, text_features = image_tokens.to(device, dtype), text_features.to(device, dtype)

        def ours(
            image_tokens: torch.Tensor = image_tokens, text_features: torch.Tensor = text_features
        ) -> object:
            with autocast_context(device, dtype):
                return feature_surgery(image_tokens, text_features)

        def naive(
            image_tokens: torch.Tensor = image_tokens, text_features: torch.Tensor = text_features
        ) -> object:
            with autocast_context(device, dtype):
                return feature_surgery_naive(image_tokens, text_features)

        diff = (ours().float() - naive().float()).abs().max().item()  # also the warm-up of the memory runs
        ours_bytes = peak_memory_bytes(ours, device)
        naive_bytes = peak_memory_bytes(naive, device)
        loops = {"ours": loops_for(ours, device, min_seconds), "naive": loops_for(naive, device, min_seconds)}
        times = time_interleaved({"ours": ours, "naive": naive}, device, repeats, loops)
        rows.append(
            FeatureRow(
                classes=t,
                batch=batch,
                ours_s=statistics.median(times["ours"]),
                naive_s=statistics.median(times["naive"]),
                ours_bytes=ours_bytes,
                naive_bytes=naive_bytes,
                max_abs_diff=diff,
            )
        )
        print(f"  done: feature surgery, {t} classes", file=sys.stderr, flush=True)
    return rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown-style table with right-aligned, padded columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return "\n".join(lines)


def check(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def forward_table(rows: Sequence[ForwardRow]) -> str:
    headers = ("size px", "batch", "vanilla ms", "surgery ms", "surgery/vanilla", "target", "check")
    cells = [
        (
            str(r.size),
            str(r.batch),
            f"{r.vanilla_s * 1e3:.1f}",
            f"{r.surgery_s * 1e3:.1f}",
            f"{r.ratio:.3f}",
            f"≤ {TARGET_TIME_RATIO:.2f}",
            check(r.ratio <= TARGET_TIME_RATIO),
        )
        for r in rows
    ]
    return format_table(headers, cells)


def throughput_table(rows: Sequence[ForwardRow]) -> str:
    headers = ("size px", "batch", "vanilla img/s", "surgery img/s", "surgery/vanilla throughput")
    cells = [
        (
            str(r.size),
            str(r.batch),
            f"{r.batch / r.vanilla_s:.1f}",
            f"{r.batch / r.surgery_s:.1f}",
            f"{1.0 / r.ratio:.3f}",
        )
        for r in rows
    ]
    return format_table(headers, cells)


def feature_table(rows: Sequence[FeatureRow]) -> str:
    headers = (
        "classes",
        "batch",
        "ours ms",
        "naive ms",
        "naive/ours time",
        "ours peak MiB",
        "naive peak MiB",
        "naive/ours memory",
        "target",
        "check",
        "max |diff|",
    )
    mib = 2.0**20
    cells = []
    for r in rows:
        memory_ratio = r.naive_bytes / r.ours_bytes if r.ours_bytes > 0 else math.inf
        cells.append(
            (
                str(r.classes),
                str(r.batch),
                f"{r.ours_s * 1e3:.3f}",
                f"{r.naive_s * 1e3:.1f}",
                f"{r.naive_s / r.ours_s:.0f}×",
                f"{r.ours_bytes / mib:.2f}",
                f"{r.naive_bytes / mib:.1f}",
                f"{memory_ratio:.0f}×",
                f"≥ {TARGET_MEMORY_RATIO:.0f}×",
                check(memory_ratio >= TARGET_MEMORY_RATIO),
                f"{r.max_abs_diff:.1e}",
            )
        )
    return format_table(headers, cells)


def header(device: torch.device, dtype: torch.dtype, args: argparse.Namespace) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    quick = "   [--quick]" if args.quick else ""
    lines = [
        f"date:      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"torch:     {torch.__version__}   open_clip: {open_clip.__version__}",
        f"python:    {platform.python_version()}",
        f"device:    {device} ({name})",
        f"threads:   {torch.get_num_threads()}",
        f"dtype:     {'float16 (autocast)' if dtype == torch.float16 else 'float32'}",
        f"model:     {MODEL_NAME}, random weights; surgery config: SurgeryConfig.paper()",
        f"repeats:   {args.repeats} (median, after {WARMUP} warm-up call){quick}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.gpu_throughput:
        cases = list(GPU_THROUGHPUT_CASES)
    else:
        cases = [(size, batch) for size in args.sizes for batch in args.batches]
    min_seconds = QUICK_FEATURE_MIN_SECONDS if args.quick else FEATURE_MIN_SECONDS

    start = time.perf_counter()
    print(header(device, dtype, args))
    print(flush=True)
    with torch.inference_mode():
        forward_rows = bench_image_forward(cases, device, dtype, args.repeats)
        print(
            "Image forward: vanilla model.visual(x) vs surgery dense_forward(model, x, SurgeryConfig.paper())"
        )
        print(forward_table(forward_rows))
        print("(ms: medians; surgery/vanilla: median of the ratios of interleaved repeat pairs)")
        print(flush=True)
        if args.gpu_throughput:
            print("Throughput (images/s, from the median times above)")
            print(throughput_table(forward_rows))
            print(flush=True)
        feature_rows = bench_feature_surgery(
            args.classes, args.feature_batch, device, dtype, args.repeats, min_seconds
        )
    tokens = 1 + (FEATURE_IMAGE_SIZE // PATCH_SIZE) ** 2
    print(
        f"Feature surgery at {FEATURE_IMAGE_SIZE} px ({tokens} tokens, D = {EMBED_DIM}): "
        "ours = feature_surgery, naive = feature_surgery_naive"
    )
    print(feature_table(feature_rows))
    memory_method = (
        "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler CPU allocations"
    )
    print(f"(peak: most bytes held at once during one call, inputs excluded, via {memory_method})")
    print()
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
