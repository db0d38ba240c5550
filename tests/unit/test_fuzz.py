"""Property-based fuzzing (hypothesis) of the library's inputs: images, labels, configs, evaluation records.

Each property: a clear error of a documented type, or a well-formed result; inputs and models unchanged;
an evaluation record is never read back changed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import assert_unchanged, make_vit, snapshot
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from surgery_lib.config import ATTENTION_KINDS, REDUNDANT_FEATURES, SurgeryConfig
from surgery_lib.eval import runner
from surgery_lib.maps.explain import encode_image_tokens, explain
from surgery_lib.maps.images import ImageInputError, preprocess_images, to_rgb
from surgery_lib.model.surgery import SurgeryError

pytestmark = pytest.mark.slow  # property tests: in make test, not in make test-fast


def fuzz(examples: int) -> settings:
    """Bounded runs (each file stays well under a minute on two cores); no example database on disk."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


MODEL = make_vit()  # 8 blocks (the paper depth fits), 32 px, 4×4 tokens
TOKENIZER = open_clip.get_tokenizer("ViT-B-16")
IMAGES = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---- images -----------------------------------------------------------------------------------------

DTYPES = [np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]
SIDES = st.integers(0, 40)
SHAPES = st.one_of(
    st.tuples(SIDES, SIDES),
    st.tuples(SIDES, SIDES, st.sampled_from([1, 2, 3, 4, 5])),
    st.tuples(st.sampled_from([1, 3, 4]), SIDES, SIDES),
    st.tuples(st.integers(0, 3)),
    st.tuples(st.integers(1, 2), st.integers(1, 20), st.integers(1, 20), st.integers(1, 4)),
)


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(SHAPES)
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
        return draw(
            hnp.arrays(dtype, shape, elements=st.one_of(st.floats(0, 1, width=dtype.itemsize * 8), elements))
        )
    return draw(hnp.arrays(dtype, shape))


PIL_MODES = [
    "1",
    "L",
    "P",
    "RGB",
    "RGBA",
    "LA",
    "PA",
    "I",
    "I;16",
    "F",
    "CMYK",
    "YCbCr",
    "HSV",
    "LAB",
    "RGBX",
]


@st.composite
def pil_images(draw):
    mode = draw(st.sampled_from(PIL_MODES))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    image = Image.new(mode, size, color=draw(st.integers(0, 255)) if mode in ("L", "P", "1") else None)
    if mode == "P" and draw(st.booleans()):
        image.info["transparency"] = 0
    return image


@st.composite
def tensors(draw):
    array = draw(hnp.arrays(np.dtype(draw(st.sampled_from([np.uint8, np.float32]))), draw(SHAPES)))
    return torch.from_numpy(np.ascontiguousarray(array))


def _same(a, b) -> bool:
    if isinstance(a, Image.Image):
        return a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes()
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) or (a.is_floating_point() and bool(torch.equal(a.isnan(), b.isnan())))
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _copy(x):
    return x.copy() if isinstance(x, (Image.Image, np.ndarray)) else x.clone()


@fuzz(150)
@given(st.one_of(arrays(), pil_images(), tensors()), st.sampled_from([16, 24, (16, 24)]))
def test_images_are_preprocessed_or_refused_clearly(image, size):
    before = _copy(image)
    try:
        batch = preprocess_images(image, size=size)
    except (ImageInputError, TypeError, ValueError) as error:
        assert str(error)  # a message, not a bare exception
    else:
        hw = (size, size) if isinstance(size, int) else size
        assert batch.shape == (1, 3, *hw) and batch.dtype == torch.float32
        assert torch.isfinite(batch).all()
        assert to_rgb(image).mode == "RGB"
    assert _same(image, before)


# ---- labels -----------------------------------------------------------------------------------------

LABEL = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["cat", "dog", "🐶", "狗", " ", "", "a b", "$\\foo$", "traffic light", "x" * 200]),
)


@fuzz(40)
@given(st.lists(LABEL, max_size=4), st.booleans())
def test_labels_give_one_map_each_or_a_clear_error(labels, as_tuple):
    before = snapshot(MODEL)
    given_labels = tuple(labels) if as_tuple else list(labels)
    try:
        result = explain(MODEL, TOKENIZER, IMAGES, given_labels, size=(8, 8))
    except (ValueError, TypeError) as error:  # LabelTooLongError is a ValueError
        assert str(error)
    else:
        assert result.labels == list(labels)
        assert result.maps.shape == (1, 8, 8, len(labels))
        assert torch.isfinite(result.maps).all() and torch.isfinite(result.similarity).all()
    assert_unchanged(MODEL, before)


# ---- configs ----------------------------------------------------------------------------------------

ODD = [None, 1, 0, 1.0, "yes", "", b"vv", [], np.int64(2), np.bool_(True), True, False, -1, 3, 99]
FIELD_VALUES = {
    "attention": st.one_of(st.sampled_from(ATTENTION_KINDS), st.sampled_from(["VV", "q k", *ODD[:6]])),
    "dual_path": st.one_of(st.booleans(), st.sampled_from(ODD)),
    "skip_ffn": st.one_of(st.booleans(), st.sampled_from(ODD)),
    "depth": st.one_of(st.integers(-3, 12), st.sampled_from(ODD)),
    "feature_surgery": st.one_of(st.booleans(), st.sampled_from(ODD)),
    "redundant_features": st.one_of(st.sampled_from(REDUNDANT_FEATURES), st.sampled_from(ODD)),
}


@st.composite
def config_fields(draw):
    known = {f.name for f in dataclasses.fields(SurgeryConfig)}
    chosen = draw(st.sets(st.sampled_from(sorted(set(FIELD_VALUES) & known))))
    return {name: draw(FIELD_VALUES[name]) for name in sorted(chosen)}


@fuzz(120)
@given(config_fields())
def test_configs_are_valid_or_refused(fields):
    try:
        config = SurgeryConfig(**fields)
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    assert config.attention in ATTENTION_KINDS and config.redundant_features in REDUNDANT_FEATURES
    assert isinstance(config.depth, int) and not isinstance(config.depth, bool) and config.depth >= 0
    for name in ("dual_path", "skip_ffn", "feature_surgery"):
        assert isinstance(getattr(config, name), bool)
    before = snapshot(MODEL)
    try:
        tokens, grid = encode_image_tokens(MODEL, IMAGES, config)
    except SurgeryError as error:  # a depth beyond the 8 blocks
        assert "blocks" in str(error) and config.depth > 8
    else:
        assert tokens.shape == (1, 1 + grid[0] * grid[1], 32) and torch.isfinite(tokens).all()
    assert_unchanged(MODEL, before)


# ---- evaluation records -------------------------------------------------------------------------------

SETTINGS = {"task": "explain", "dataset": "composites", "record_format": runner.RECORD_FORMAT}
RECORDS = [
    {"pairs": [{"class": "nut", "iou": 0.598960910440376, "sc": 39.866816997528076, "hit": 1.0}],
     "skipped": [], "index": 0, "id": "00000"},
    {"pairs": [{"class": "bird", "iou": 0.02903072644644916, "sc": -2.5e-07, "hit": 0.0}],
     "skipped": ["tank"], "index": 1, "id": "00001"},
    {"pairs": [], "skipped": [], "index": 2, "id": "ünïcode/0002"},
]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("records")
    (out / "parts").mkdir()
    (out / "run.json").write_text(json.dumps(SETTINGS))
    runner._append(out / "parts" / "rank0.jsonl", RECORDS, runner._run_key(SETTINGS))
    assert runner._read_records(out / "parts") == {r["index"]: r for r in RECORDS}
    return out


EDITS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("swap-digit"), st.integers(0, 10**6), st.integers(0, 9)),
)


def _damage(data: bytes, edit) -> bytes:
    kind, at, arg = edit
    if not data:
        return arg if kind == "insert" else data
    at %= len(data) + (kind == "insert")
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ arg]) + data[at + 1 :]
    if kind == "delete":
        return data[:at] + data[at + arg :]
    if kind == "insert":
        return data[:at] + arg + data[at:]
    if kind == "truncate":
        return data[:at]
    digits = [i for i, c in enumerate(data) if chr(c).isdigit()]
    if not digits:
        return data
    i = digits[at % len(digits)]
    return data[:i] + str(arg).encode() + data[i + 1 :]


@fuzz(300)
@given(edits=st.lists(EDITS, min_size=1, max_size=3))
def test_edited_records_are_refused_or_dropped_never_changed(store, edits):
    shard = store / "parts" / "rank0.jsonl"
    original = shard.read_bytes()
    data = original
    for edit in edits:
        data = _damage(data, edit)
    assume(data != original)
    shard.write_bytes(data)
    try:
        records = runner._read_records(store / "parts")
    except SystemExit as refused:
        message = str(refused)
        assert f"{shard}:" in message and "delete that line" in message
    else:
        for index, record in records.items():  # what is read is exactly what was written
            assert record == RECORDS[index]
        # a lost record is recomputed by the run: only a torn or missing line may lose one
        assert set(records) <= {0, 1, 2}
    finally:
        shard.write_bytes(original)
