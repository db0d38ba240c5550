"""Peak memory of ``surgery explain`` per input megapixel and per number of inputs.

Each case runs ``python -m surgery_lib explain IMAGES --labels pepper tank bird --method raw,surgery``
(the default model, offline) in a fresh process; its peak resident set size is the ``ru_maxrss`` that
``os.wait4`` reports for that one child (exact, no polling). A baseline process imports the command
and loads the same model with no image; the table gives each case's peak, its excess over the
baseline, that excess per input megapixel and the wall time.

Inputs are synthetic PNGs written into a temporary folder (removed at the end): smooth gradients with a
few flat rectangles, so they compress to small files but decode to the full ``W × H × 3`` bytes. The
cases: one image of 1, 6, 25 and 50 MP (3:2), and 40 inputs of 12 MP each against one such input, to
show that memory does not grow with the number of inputs. Target (issue 14): the 50 MP case at
most 1.5 GB peak.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_memory.py            # ~5 min on a 2-core CPU
    .venv/bin/python benchmarks/bench_memory.py --quick    # smoke run: tiny images, 3 inputs
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("pepper", "tank", "bird")
TARGET_MB = 1500.0  # issue 14: 50 MP, 3 labels, raw + surgery


def synthetic_png(path: Path, megapixels: float, seed: int = 0) -> tuple[int, int]:
    """A 3:2 RGB PNG of about ``megapixels``: gradients plus a few flat rectangles (cheap to write, small
    on disk, the full size once decoded). Returns ``(width, height)``."""
    width = max(16, round(math.sqrt(megapixels * 1e6 * 1.5)))
    height = max(16, round(width / 1.5))
    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.float32).astype(np.uint8)[:, None]
    pixels[..., 2] = 96
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        pixels[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 255, 3, dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=1)
    return width, height


def peak_of(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``command`` as a fresh child; its peak RSS in MB (``ru_maxrss`` of that child alone) and its
    wall time in seconds. Raises when it fails."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{log.read().decode(errors='replace')}")
    return usage.ru_maxrss / 1024.0, seconds  # Linux: kilobytes


def explain_command(images: list[Path], out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "surgery_lib",
        "explain",
        *map(str, images),
        "--labels",
        *LABELS,
        "--method",
        "raw,surgery",
        "--out",
        str(out),
    ]


BASELINE = (
    "from surgery_lib.cli import main\n"
    "from surgery_lib.model.loading import load_clip\n"
    "load_clip()\n"  # the command's default model, as the explain cases load it
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny images, 3 inputs")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    repo = Path(__file__).resolve().parents[1]
    singles = (0.05,) if args.quick else (1.0, 6.0, 25.0, 50.0)
    many_count, many_mp = (2, 0.05) if args.quick else (40, 12.0)
    rows: list[tuple[str, int, float, float, float]] = []  # case, inputs, MP each, peak MB, seconds
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        folder = Path(tmp)
        peak, seconds = peak_of([sys.executable, "-c", BASELINE], repo)
        rows.append(("baseline (import + model, no image)", 0, 0.0, peak, seconds))
        for mp in singles:
            image = folder / f"single_{mp:g}mp.png"
            width, height = synthetic_png(image, mp)
            peak, seconds = peak_of(explain_command([image], folder / f"out_{mp:g}"), repo)
            rows.append((f"1 image {width}×{height}", 1, width * height / 1e6, peak, seconds))
            image.unlink()
        images = []
        for i in range(many_count):
            images.append(folder / f"many_{i:03d}.png")
            width, height = synthetic_png(images[-1], many_mp, seed=i)
        for count in (1, many_count):
            peak, seconds = peak_of(explain_command(images[:count], folder / f"out_many_{count}"), repo)
            case = f"{count} image{'s' if count > 1 else ''} {width}×{height}"
            rows.append((case, count, width * height / 1e6, peak, seconds))
    baseline = rows[0][3]
    print(
        f"surgery explain, {len(LABELS)} labels, --method raw,surgery, default model; peak RSS per fresh "
        f"process (ru_maxrss); baseline {baseline:.0f} MB\n"
    )
    columns = (
        ("inputs", 6),
        ("MP each", 8),
        ("peak MB", 8),
        ("over baseline MB", 17),
        ("MB/MP", 6),
        ("time s", 7),
    )
    header = f"{'case':<38} " + " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    for case, count, mp, peak, seconds in rows:
        extra = peak - baseline
        per_mp = f"{extra / mp:.1f}" if mp and count == 1 else ""
        print(f"{case:<38} {count:>6} {mp:>8.2f} {peak:>8.0f} {extra:>17.0f} {per_mp:>6} {seconds:>7.1f}")
    largest = max((r for r in rows if r[1] == 1), key=lambda r: r[2])
    verdict = "✓" if largest[3] <= TARGET_MB else "✗"
    print(
        f"\nlargest single image ({largest[2]:.3g} MP): {largest[3]:.0f} MB peak, "
        f"target ≤ {TARGET_MB:.0f} MB {verdict}"
    )
    one, many = rows[-2], rows[-1]
    print(
        f"{many[1]} inputs vs 1 input of {many[2]:.3g} MP: {many[3]:.0f} MB vs {one[3]:.0f} MB peak "
        f"({many[3] / one[3]:.2f}×)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
