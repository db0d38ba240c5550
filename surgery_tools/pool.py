"""A pre-rendered pool of training composites, and a teacher's class logits for it, both computed once.

``python -m surgery_tools.train --pool N`` draws its batches from a pool of ``N`` composites rendered
once into a folder under ``--work`` instead of rendering them on the fly, so the data pipeline costs
nothing inside the training loop; ``--teacher NAME`` (distillation) also scores every pool composite
with the frozen teacher once, so the teacher never runs inside the loop either. Layout::

    <work>/pool-<size>px-<N>-s<seed>[-aug]-<cache fingerprint>/
        images.npy                  uint8 (N, size, size, 3), composite i of CompositeGenerator(seed)
        objects.npy                 int16 (N, 3): class ids in paste order, -1 padded
        pool.json                   what the pool is and how much of it is written ("done")
        teacher-<name>-<sha>.npy    float32 (N, C): the teacher's zero-shot class logits
        teacher-<name>-<sha>.json   the same for the teacher file

Both are written in chunks and record their progress, so an interrupted build continues where it
stopped; a finished pool or teacher file is reused as is. The folder name holds a fingerprint of the
cache's training cut-outs and backgrounds, so a changed cache gets a new pool.

Order: sample ``i`` (batch ``s`` holds samples ``s·B … s·B + B − 1``) is pool composite
``perm_e[i mod N]`` with ``e = i // N`` and ``perm_e`` a permutation drawn from ``(seed, e)``: every
epoch visits each composite once, in a new order, and batch ``s`` is the same whatever was resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

POOL_VERSION = 1
MAX_OBJECTS = 3
CHUNK = 1024  # composites rendered between two progress records
TEACHER_BATCH = 128


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json(path: Path, doc: dict) -> None:
    """Write atomically (a crash leaves the old file or the new one, never half of one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def cache_fingerprint(cache_dir: Path) -> str:
    """sha256 (hex) of the names and bytes of the cache's training cut-outs and backgrounds."""
    cache_dir = Path(cache_dir)
    digest = hashlib.sha256()
    for root in (cache_dir / "cutouts" / "train", cache_dir / "backgrounds" / "train"):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(cache_dir)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class CompositePool:
    """``count`` composites ``0 … count − 1`` of ``CompositeGenerator(cache_dir, "train", size, seed=seed,
    augment=augment)``, rendered once into ``folder`` (see the module docstring)."""

    def __init__(
        self, folder: Path, cache_dir: Path, size: int, count: int, seed: int, augment: bool = False
    ) -> None:
        if count < 1:
            raise ValueError(f"the pool needs at least one composite, got {count}")
        self.folder, self.cache_dir = Path(folder), Path(cache_dir)
        self.size, self.count, self.seed, self.augment = size, count, seed, augment
        self._perms: dict[int, np.ndarray] = {}
        self.classes: list[str] = []

    @classmethod
    def under(
        cls, work: Path, cache_dir: Path, size: int, count: int, seed: int, augment: bool = False
    ) -> CompositePool:
        """The pool's folder under ``work``, named after what it holds."""
        fingerprint = cache_fingerprint(cache_dir)[:12]
        name = f"pool-{size}px-{count}-s{seed}{'-aug' if augment else ''}-{fingerprint}"
        return cls(Path(work) / name, cache_dir, size, count, seed, augment)

    # ---------------------------------------------------------------------------------------- build
    def _spec(self) -> dict:
        return {
            "version": POOL_VERSION,
            "size": self.size,
            "count": self.count,
            "seed": self.seed,
            "augment": self.augment,
            "max_objects": MAX_OBJECTS,
        }

    def build(self, chunk: int = CHUNK) -> CompositePool:
        """Render what is missing (all of it, the rest after an interruption, or nothing); returns self."""
        from surgery_tools.toy_data import CompositeGenerator

        generator = CompositeGenerator(
            self.cache_dir, split="train", size=self.size, seed=self.seed, augment=self.augment
        )
        self.classes = list(generator.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        manifest = self.folder / "pool.json"
        spec = {**self._spec(), "classes": self.classes}
        done = 0
        if manifest.is_file():
            doc = json.loads(manifest.read_text())
            if {k: doc.get(k) for k in spec} != spec:
                raise ValueError(f"{self.folder} holds a different pool ({doc}); remove it or change --work")
            done = int(doc["done"])
        if done >= self.count:
            self._open()
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        shape = (self.count, self.size, self.size, 3)
        fresh = done == 0
        images = np.lib.format.open_memmap(
            self.folder / "images.npy", mode="w+" if fresh else "r+", dtype=np.uint8, shape=shape
        )
        objects = np.lib.format.open_memmap(
            self.folder / "objects.npy",
            mode="w+" if fresh else "r+",
            dtype=np.int16,
            shape=(self.count, MAX_OBJECTS),
        )
        if images.shape != shape or objects.shape != (self.count, MAX_OBJECTS):
            raise ValueError(f"{self.folder}: pool files do not match pool.json; remove the folder")
        if fresh:
            _write_json(manifest, {**spec, "done": 0})
        t0 = time.monotonic()
        _log(f"pool: rendering composites {done} … {self.count - 1} into {self.folder}")
        while done < self.count:
            stop = min(done + chunk, self.count)
            for i in range(done, stop):
                composite = generator.sample(i)
                images[i] = np.asarray(composite.image, dtype=np.uint8)
                ids = [index[label] for label in composite.labels]
                objects[i] = ids + [-1] * (MAX_OBJECTS - len(ids))
            images.flush()
            objects.flush()
            done = stop
            _write_json(manifest, {**spec, "done": done})
            _log(f"pool: {done}/{self.count} composites ({time.monotonic() - t0:.0f} s)")
        del images, objects
        self._open()
        return self

    def _open(self) -> None:
        doc = json.loads((self.folder / "pool.json").read_text())
        self.classes = list(doc["classes"])
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        objects = np.load(self.folder / "objects.npy")
        self.hot = np.zeros((self.count, len(self.classes)), dtype=np.float32)
        self.captions: list[str] = []
        from surgery_tools.toy_data import _caption

        for i, row in enumerate(objects):
            ids = [int(k) for k in row if k >= 0]
            self.hot[i, ids] = 1.0
            self.captions.append(_caption([self.classes[k] for k in ids]))

    # ------------------------------------------------------------------------------------- sampling
    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch, 5]).permutation(self.count)
        return self._perms[epoch]

    def indices(self, step: int, batch: int) -> np.ndarray:
        """Pool composites of batch ``step`` (see the module docstring)."""
        samples = np.arange(step * batch, (step + 1) * batch, dtype=np.int64)
        return np.array([self._perm(int(s // self.count))[s % self.count] for s in samples])

    # -------------------------------------------------------------------------------------- teacher
    def teacher_logits(
        self,
        name: str,
        model: torch.nn.Module,
        tokenizer: Callable,
        image_size: int,
        tag: str,
        device: torch.device | str = "cpu",
        memory_format: torch.memory_format = torch.contiguous_format,
        batch: int = TEACHER_BATCH,
    ) -> np.ndarray:
        """``(count, C)`` float32: the frozen teacher's zero-shot logits (its logit scale times the cosine
        of its image feature with its prompt-ensemble class features) for every pool composite, resized
        to the teacher's ``image_size`` with the reference transform. Computed once (resumably) and
        stored as ``teacher-<name>-<tag>.npy``; ``tag`` identifies the teacher's weights."""
        from PIL import Image

        from surgery_lib.maps.images import reference_transform
        from surgery_lib.maps.text import text_features

        stem = self.folder / f"teacher-{name}-{tag}"
        path, progress = stem.with_suffix(".npy"), stem.with_suffix(".json")
        spec = {"teacher": name, "tag": tag, "image_size": image_size, "classes": self.classes}
        done = 0
        if progress.is_file():
            doc = json.loads(progress.read_text())
            if {k: doc.get(k) for k in spec} != spec:
                raise ValueError(f"{progress} was written for another teacher; remove it")
            done = int(doc["done"])
        shape = (self.count, len(self.classes))
        if done >= self.count:
            return np.load(path)
        logits = np.lib.format.open_memmap(
            path, mode="w+" if done == 0 else "r+", dtype=np.float32, shape=shape
        )
        if done == 0:
            _write_json(progress, {**spec, "done": 0})
        model.eval()
        transform = reference_transform(image_size)
        t0 = time.monotonic()
        _log(f"pool: teacher {name} on composites {done} … {self.count - 1}")
        with torch.no_grad():
            texts = text_features(model, tokenizer, self.classes).to(device)
            scale = model.logit_scale.exp().clamp(max=100)
            while done < self.count:
                stop = min(done + batch, self.count)
                images = torch.stack([transform(Image.fromarray(self.images[i])) for i in range(done, stop)])
                images = images.to(device, memory_format=memory_format)
                features = model.encode_image(images, normalize=True).float()
                logits[done:stop] = (scale * features @ texts.t()).cpu().numpy()
                logits.flush()
                done = stop
                _write_json(progress, {**spec, "done": done})
                if done % (batch * 40) == 0 or done == self.count:
                    _log(f"pool: teacher {done}/{self.count} ({time.monotonic() - t0:.0f} s)")
        del logits
        return np.load(path)


def normalise_uint8(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> normalised float32 ``(B, 3, H, W)`` (the same as ``train._to_tensor``)."""
    array = torch.from_numpy(np.ascontiguousarray(images).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    return (array - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
