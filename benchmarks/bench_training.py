"""Cost of one training step of the project's small CLIPs, and what channels-last buys the ResNet.

One step = image tower forward + backward + AdamW update on a batch of random images at the model's
input size (the text tower is left out: it is the same in every variant). For each model the
contiguous memory format is the baseline and channels-last the variant, timed interleaved in the
same run (median of ``--repeats``), so the ratio holds on any machine. ``surgery_tools.train``
uses channels-last exactly where this shows it pays (a convolutional image tower)::

    .venv/bin/python benchmarks/bench_training.py              # toy-vit and toy-rn, batch 64
    .venv/bin/python benchmarks/bench_training.py --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import open_clip
import torch

from surgery_lib.model.shipped import TOY_MODELS, register_configs
from surgery_tools.train import _memory_format


def _step_seconds(model: torch.nn.Module, images: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    loss = model.encode_image(images, normalize=True).square().sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(TOY_MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    register_configs()
    torch.manual_seed(0)
    print("| model | batch | contiguous ms | channels-last ms | contiguous/channels-last | train uses |")
    print("|---|---:|---:|---:|---:|---|")
    for name in args.models.split(","):
        times: dict[torch.memory_format, list[float]] = {torch.contiguous_format: [], torch.channels_last: []}
        variants = {}
        for memory_format in times:
            model = open_clip.create_model(name).train()
            model.visual.to(memory_format=memory_format)
            size = model.visual.image_size
            size = size if isinstance(size, int) else size[0]
            images = torch.randn(args.batch, 3, size, size).contiguous(memory_format=memory_format)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            _step_seconds(model, images, optimizer)  # warm-up
            variants[memory_format] = (model, images, optimizer)
        for _ in range(args.repeats):
            for memory_format, (model, images, optimizer) in variants.items():
                times[memory_format].append(_step_seconds(model, images, optimizer))
        plain = statistics.median(times[torch.contiguous_format]) * 1000
        last = statistics.median(times[torch.channels_last]) * 1000
        chosen = (
            "channels-last"
            if _memory_format(variants[torch.contiguous_format][0]) == torch.channels_last
            else "contiguous"
        )
        print(f"| {name} | {args.batch} | {plain:.0f} | {last:.0f} | {plain / last:.2f} | {chosen} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
