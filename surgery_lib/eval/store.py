"""The evaluation's record store: one JSON line per finished image with a sha256 over the record and the run's
settings, content fingerprints of the data, the run lock; reading refuses anything that does not check
(the rules are in :mod:`surgery_lib.eval.runner`'s module doc).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

from surgery_lib.data.datasets import Dataset

# ---------------------------------------------------------------------------------------------------
# per-image records (append-only jsonl shards)


RECORD_FORMAT = "jsonl+sha256/2"
"""Written into ``run.json``: records are JSON lines, each with a ``sha256`` (see the module doc); ``/2``:
``run.json`` holds the resolved root and the classes' digest, each record its data and batch digests."""

_UNFINGERPRINTED_FORMATS = ("jsonl+sha256/1",)
"""Record formats written before the data was fingerprinted: refused (see :func:`_check_settings`)."""

RESUME_RTOL = 1e-6
RESUME_ATOL = 1e-9
"""How close two records of one image must be to count as the same record (:func:`_same_record`): the
agreement of one computation across machines and thread counts (on one machine and thread count, with
the same batch size, a recomputed record is bit-equal)."""

_FIX = "delete that line (the image is then recomputed) or use another --out"


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _strict_json(text: str) -> object:
    """``json.loads`` that refuses NaN, Infinity and numbers that overflow to infinity."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def _canonical(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _run_key(settings: dict) -> bytes:
    """What every record's checksum is bound to: the canonical JSON of ``run.json``."""
    return hashlib.sha256(_canonical(settings)).hexdigest().encode()


def _record_sha256(record: dict, key: bytes) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(key + b"\n" + _canonical(body)).hexdigest()


def _read_run_json(path: Path) -> dict:
    """The settings in ``run.json``; a ``SystemExit`` naming the file (and line) when it is broken."""
    fix = "delete the folder (or run.json) or use another --out"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SystemExit(f"{path}: not valid UTF-8 (byte {err.start}); {fix}") from None
    try:
        settings = _strict_json(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}:{err.lineno}: not valid JSON ({err.msg}); {fix}") from None
    except (ValueError, RecursionError) as err:
        raise SystemExit(f"{path}: not valid settings ({err}); {fix}") from None
    if not isinstance(settings, dict):
        raise SystemExit(f"{path}: not a JSON object of settings; {fix}")
    return settings


def _parse_record(raw: bytes, key: bytes, where: str) -> dict:
    """One verified record line (without its ``sha256``), or a ``SystemExit`` naming ``where``."""

    def refuse(problem: str) -> SystemExit:
        return SystemExit(f"{where}: {problem}; {_FIX}")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise refuse(f"not valid UTF-8 (byte {err.start})") from None
    try:
        record = _strict_json(text)
    except (ValueError, RecursionError) as err:
        raise refuse(f"not a valid JSON record ({err})") from None
    if not isinstance(record, dict):
        raise refuse("not a JSON object")
    if not isinstance(record.get("sha256"), str):
        raise refuse("the record has no sha256 checksum")
    if record["sha256"] != _record_sha256(record, key):
        raise refuse(
            "the record does not match its sha256: it was edited or damaged, or comes from another run"
        )
    index = record.get("index")
    if (
        isinstance(index, bool)
        or not isinstance(index, int)
        or index < 0
        or not isinstance(record.get("id"), str)
    ):
        raise refuse("the record has no integer image index and string image id")
    del record["sha256"]
    return record


def _same_record(a: object, b: object) -> bool:
    """Whether two records are equal, floats to :data:`RESUME_RTOL` relative (:data:`RESUME_ATOL`
    absolute); every other value (strings, integers, booleans, the structure) exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_record(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_record(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        numbers = (int, float)
        if (
            isinstance(a, bool)
            or isinstance(b, bool)
            or not (isinstance(a, numbers) and isinstance(b, numbers))
        ):
            return False
        return math.isclose(a, b, rel_tol=RESUME_RTOL, abs_tol=RESUME_ATOL)
    return type(a) is type(b) and a == b


def _read_records(parts: Path) -> dict[int, dict]:
    """Every record in ``parts/*.jsonl`` by image index, each checked against its ``sha256`` (bound to
    ``parts/../run.json``). A last line without its newline (an interrupted write) is skipped; any other
    bad line, or two different records of one image (beyond :data:`RESUME_RTOL`; the first is kept),
    raises ``SystemExit`` naming ``file:line``."""
    run_json = parts.parent / "run.json"
    if not run_json.is_file():
        raise FileNotFoundError(f"{run_json} is missing: the records in {parts} cannot be checked")
    key = _run_key(_read_run_json(run_json))
    records: dict[int, dict] = {}
    seen_at: dict[int, str] = {}
    for path in sorted(parts.glob("*.jsonl")):
        lines = path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines[:-1], start=1):  # lines[-1]: b"" or a torn last line
            where = f"{path}:{number}"
            record = _parse_record(raw, key, where)
            index = record["index"]
            if index in records:
                if not _same_record(records[index], record):
                    raise SystemExit(
                        f"{where}: a second, different record of image {index} (the first is at "
                        f"{seen_at[index]}); {_FIX}"
                    )
                continue  # the same record twice: the first one read (in file order) is kept
            records[index], seen_at[index] = record, where
    return records


def _repair(path: Path) -> None:
    """Cut a torn last line (an interrupted write) so that new records start on a line of their own."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def _append(path: Path, records: Sequence[dict], key: bytes) -> None:
    """Append ``records`` to ``path``, each with its ``sha256`` (refusing NaN or infinite values)."""
    lines = []
    for record in records:
        body = {k: v for k, v in record.items() if k != "sha256"}
        try:
            lines.append(json.dumps({**body, "sha256": _record_sha256(body, key)}, allow_nan=False) + "\n")
        except ValueError as err:
            raise SystemExit(
                f"image {body.get('index')} ({body.get('id')!r}) gave a NaN or infinite value ({err}): "
                "its record is not stored"
            ) from None
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())


def _lock(out: Path) -> IO[str]:
    """An exclusive, non-blocking ``flock`` on ``out/.lock``; a ``SystemExit`` when another run holds it."""
    path = out / ".lock"
    handle = path.open("a+")
    if fcntl is None:  # pragma: no cover
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SystemExit(
            f"{out} is in use by another evaluation (it holds the lock {path}): wait for that run to "
            "finish, or use another --out"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


# ---------------------------------------------------------------------------------------------------
# main


def _weights_fingerprint(model: nn.Module) -> str:
    """sha256 of every tensor of ``model.state_dict()`` (names, dtypes, shapes and bytes, sorted by name):
    retrained or swapped weights under the same model name and tag change it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _classes_sha256(dataset: Dataset) -> str:
    """sha256 of what every record of a dataset depends on beyond its own image: the class names, their
    prompts, the background and ignore index."""
    what = [list(dataset.class_names), list(dataset.prompts), dataset.background, dataset.ignore_index]
    return hashlib.sha256(_canonical(what)).hexdigest()


def _batch_sha256(prints: Sequence[dict]) -> str:
    """sha256 of the fingerprints of a batch's images, in order: what a record's numbers depend on."""
    return hashlib.sha256(_canonical(list(prints))).hexdigest()
