"""Text-feature speed: the 85-template prompt ensemble per class, full context vs short context vs cached.

On a ViT-B/16-sized text tower with random weights (``open_clip.create_model('ViT-B-16',
pretrained=None)``; random weights cost the same as real ones), one thread by default, it prints in
one run:

1. **full context**: today's reference, ``model.encode_text`` of one class's 85 prompts over all 77
   positions, one forward per class;
2. **short context**: ``text_features(..., use_cache=False)`` one class at a time (the 85 prompts cut
   to the longest one's end token, :func:`surgery_lib.model.text_encoding.encode_prompts`), and all
   classes in one batched call, per class;
3. **disk cache**: ``text_features`` of the same classes after :func:`clear_text_cache` (a fresh
   process: the memory cache and the remembered weights hash are gone, the entries are on disk),
   per class, the weights hash included (it is paid once per process and model), and that hash alone;
4. **memory cache**: the same call again;

the ratios full / short and full / disk, and the largest |difference| between the short and the full
computation, per prompt and per ensemble. The disk cache lives in a temporary folder (the user's cache
is not touched). Timings are medians over ``--repeats`` (the full context runs once per class: it is
the slow one). Other processes on the machine disturb the timings: run it alone.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_text.py                  # ViT-B-16, 3 classes, 1 thread (~2 min)
    .venv/bin/python benchmarks/bench_text.py --classes 1 --model ViT-B-32   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import open_clip
import torch

CLASSES = ("traffic light", "cat", "pepper", "a small red and white lighthouse", "tank", "bird")


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _median(action: Callable[[], object], repeats: int) -> float:
    return statistics.median(_timed(action) for _ in range(repeats))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip config name (random weights)")
    parser.add_argument("--classes", type=int, default=3, help=f"classes timed (at most {len(CLASSES)})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["SURGERY_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_text_cache_")
    os.environ.pop("SURGERY_NO_CACHE", None)

    from surgery_lib.maps.feature_cache import text_weights_hash
    from surgery_lib.maps.text import PROMPT_TEMPLATES, clear_text_cache, text_features
    from surgery_lib.model.text_encoding import encode_prompts, short_context_plan

    model = open_clip.create_model(args.model, pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    classes = list(CLASSES[: args.classes])
    prompts = {c: tokenizer([t.format(c) for t in PROMPT_TEMPLATES]) for c in classes}
    print(f"{args.model}, random weights, {args.threads} thread(s), {len(PROMPT_TEMPLATES)} templates")
    print(f"path: {short_context_plan(model).reason}")
    print(
        "longest prompt per class (tokens): "
        + ", ".join(f"{c!r} {int(p.argmax(-1).max()) + 1}" for c, p in prompts.items())
    )

    with torch.no_grad():
        text_features(model, tokenizer, classes[:1], use_cache=False)  # warm-up
        full_feats, full_times = {}, []
        for c in classes:
            start = time.perf_counter()
            full_feats[c] = model.encode_text(prompts[c], normalize=True).float()
            full_times.append(time.perf_counter() - start)
        short_times = [
            _median(lambda c=c: text_features(model, tokenizer, [c], use_cache=False), args.repeats)
            for c in classes
        ]
        batched = _median(lambda: text_features(model, tokenizer, classes, use_cache=False), args.repeats)

        prompt_diff = max(
            float((encode_prompts(model, prompts[c]) - full_feats[c]).abs().max()) for c in classes
        )
        reference = torch.stack([_ensemble(full_feats[c]) for c in classes])
        ensemble_diff = float(
            (text_features(model, tokenizer, classes, use_cache=False) - reference).abs().max()
        )

        clear_text_cache()
        cold_store = _timed(lambda: text_features(model, tokenizer, classes))  # computes and writes
        disk_times, hash_times, memory_times = [], [], []
        for _ in range(args.repeats):
            clear_text_cache()
            disk_times.append(_timed(lambda: text_features(model, tokenizer, classes)))
            memory_times.append(_timed(lambda: text_features(model, tokenizer, classes)))
            clear_text_cache()
            hash_times.append(_timed(lambda: text_weights_hash(model)))

    n = len(classes)
    full = statistics.median(full_times)
    short = statistics.median(short_times)
    disk = statistics.median(disk_times) / n
    rows = [
        ("full context (encode_text, 77 positions)", full, 1.0),
        ("short context, one class a call", short, full / short),
        (f"short context, {n} classes in one call", batched / n, full / (batched / n)),
        ("first call with the cache (compute + write)", cold_store / n, full / (cold_store / n)),
        ("disk cache, fresh memory (incl. weights hash)", disk, full / disk),
        ("memory cache", statistics.median(memory_times) / n, full / (statistics.median(memory_times) / n)),
    ]
    print(f"\n{'text features of one class (85 prompts)':<50} {'seconds':>10} {'full / this':>12}")
    for name, seconds, ratio in rows:
        print(f"{name:<50} {seconds:>10.4f} {ratio:>11.1f}×")
    hashing = statistics.median(hash_times)
    print(f"\nweights hash of the text tower (once per process and model): {hashing:.3f} s")
    print(f"max |short − full|: per prompt {prompt_diff:.2e}, per ensemble {ensemble_diff:.2e}")
    return 0


def _ensemble(feats: torch.Tensor) -> torch.Tensor:
    """The prompt ensemble of normalised prompt features ``(P, D)`` -> ``(D,)``."""
    mean = feats.mean(dim=0)
    return mean / mean.norm()


if __name__ == "__main__":
    raise SystemExit(main())
