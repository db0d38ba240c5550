"""Shared fixtures: tiny open_clip models built in the tests (no downloads), and where the repository and
the golden reference files are.

Test folders: ``unit/`` (fast; ``make test-fast``), ``integration/`` (training, evaluation runs, shipped
models), ``golden/`` (exact agreement with reference outputs), ``notebooks/`` (executes notebooks),
``browser/`` (JupyterLab in headless Chromium). Slow tests carry the ``slow`` marker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The modules whose tests compare numbers between two computations (batched vs one by one, resumed vs
# fresh, ours vs a reference): `make test-threads` runs them (marker `numeric`) with 1, 2 and 4 threads
# and under ATEN_CPU_CAPABILITY=default and avx2, so that thread- or CPU-dependent exactness is caught.
NUMERIC_MODULES = (
    "golden/test_golden.py",
    "golden/test_zoo_golden.py",
    "golden/test_protocols_golden.py",
    "integration/test_eval_store.py",
    "integration/test_eval_store_v3.py",
    "integration/test_eval_methods.py",
    "unit/test_surgery.py",
    "unit/test_features.py",
    "unit/test_text_encoding.py",
    "unit/test_timm_towers.py",
    "unit/test_fuzz.py",
    "unit/test_inputs.py",
    "unit/test_segmentation.py",
    "unit/test_protocol_options.py",
    "unit/test_multimodal_sam.py",
    "unit/test_zoo_config.py",
    "unit/test_metrics.py",
    "unit/test_pamr.py",
    "unit/test_introspection.py",
    "unit/test_analysis.py",
    "integration/test_hf_towers.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of ``NUMERIC_MODULES`` ``numeric``."""
    tests = Path(__file__).resolve().parent
    numeric = {tests / name for name in NUMERIC_MODULES}
    for item in items:
        if Path(item.fspath) in numeric:
            item.add_marker(pytest.mark.numeric)


def golden_files(env: str, default: Path, pattern: str = "*.pt") -> list[Path]:
    """The golden files ``pattern`` in the folder named by ``$env`` (default ``default``).

    A missing or empty folder skips the calling module with the reason, except under ``CI=true``,
    where it fails: CI always has the golden files beside the repository.
    """
    folder = Path(os.environ.get(env) or default)
    files = sorted(folder.glob(pattern))
    if not files:
        reason = f"no golden files {pattern} in {folder} (set {env})"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return files


def golden_dir() -> Path:
    """``$SURGERY_GOLDEN_DIR``, default ``../shared/golden`` beside the repository."""
    return Path(os.environ.get("SURGERY_GOLDEN_DIR") or REPO.parent / "shared" / "golden")


_SAVED_CACHE_DIR: list[str | None] = []


def pytest_configure(config: pytest.Config) -> None:
    """The persistent feature cache (``$SURGERY_CACHE_DIR``) in a temporary folder for the whole run,
    set before collection: tests never read or write the user's cache; subprocesses (notebooks)
    inherit the variable."""
    _SAVED_CACHE_DIR.append(os.environ.get("SURGERY_CACHE_DIR"))
    os.environ["SURGERY_CACHE_DIR"] = tempfile.mkdtemp(prefix="surgery_test_cache_")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary feature cache and restore ``$SURGERY_CACHE_DIR``."""
    if not _SAVED_CACHE_DIR:
        return
    shutil.rmtree(os.environ.get("SURGERY_CACHE_DIR", ""), ignore_errors=True)
    saved = _SAVED_CACHE_DIR.pop()
    if saved is None:
        os.environ.pop("SURGERY_CACHE_DIR", None)
    else:
        os.environ["SURGERY_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic toy-data cache (``tests/toy_cache.py``) for the data and training tests."""
    from toy_cache import build_toy_cache

    return build_toy_cache(tmp_path_factory.mktemp("toy_cache"))


TEXT_CFG = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter non-trivial random values (open_clip zero-inits some, e.g. biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            scale = 0.5 if p.ndim == 1 else p.shape[-1] ** -0.5
            p.copy_(
                torch.randn(p.shape, generator=gen) * scale
                + (1.0 if "ln" in name and "weight" in name else 0.0)
            )
    return model.eval()


def make_vit(
    block_type: str = "default", layers: int = 8, image_size: int = 32, seed: int = 0, **extra
) -> open_clip.CLIP:
    """A tiny ViT CLIP: patch 8, width 64, 2 heads, ``layers`` blocks (8: the paper depth 6 fits)."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        layers=layers,
        width=64,
        head_width=32,
        patch_size=8,
        image_size=image_size,
        block_type=block_type,
        **extra,
    )
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=TEXT_CFG, quick_gelu=True)
    return _randomise(model, seed)


def make_rn(seed: int = 0) -> open_clip.CLIP:
    """A tiny ModifiedResNet CLIP: widths 8..64 channels, one bottleneck per stage, 64 px input."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=64, image_size=64)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=TEXT_CFG, quick_gelu=True)
    return _randomise(model, seed)


MODEL_FACTORIES = {
    "vit-mha": lambda: make_vit("default"),
    "vit-custom": lambda: make_vit("custom"),
    "vit-layerscale": lambda: make_vit("default", ls_init_value=0.5),
    "rn": make_rn,
}


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def any_model(request) -> tuple[str, open_clip.CLIP]:
    """Each tiny model kind in turn."""
    return request.param, MODEL_FACTORIES[request.param]()


@pytest.fixture(params=["vit-mha", "vit-custom", "vit-layerscale"])
def vit_model(request) -> open_clip.CLIP:
    return MODEL_FACTORIES[request.param]()


@pytest.fixture(scope="session")
def tokenizer():
    """open_clip's ViT-B-16 tokenizer (stateless: one for the whole session)."""
    return open_clip.get_tokenizer("ViT-B-16")


def _weights_checksum(model: torch.nn.Module) -> list[float]:
    return [float(v.double().sum()) for v in model.state_dict().values() if v.is_floating_point()]


def _shared_shipped(name: str):
    """A shipped model loaded once per session; the session fails at its end if a test changed it."""
    from surgery_lib.model.loading import load_clip

    loaded = load_clip(name)  # shipped weights: offline
    before = _weights_checksum(loaded.model)
    yield loaded
    assert _weights_checksum(loaded.model) == before, f"a test changed the shared {name} weights"
    assert_unchanged(loaded.model, loaded.model.state_dict())  # and left no hook or forward override


@pytest.fixture(scope="session")
def toy_vit():
    """The shipped ``toy-vit`` (``LoadedCLIP``), shared by the whole session: never modify it."""
    yield from _shared_shipped("toy-vit")


@pytest.fixture(scope="session")
def toy_rn():
    """The shipped ``toy-rn`` (``LoadedCLIP``), shared by the whole session: never modify it."""
    yield from _shared_shipped("toy-rn")


@pytest.fixture(scope="session")
def composites3():
    """``example_images("composites", limit=3)``: 31 class names, images nut; bird; pepper, tank, bird."""
    from surgery_lib.data.shipped import example_images

    return example_images("composites", limit=3)


def native_size(model: open_clip.CLIP) -> int:
    size = model.visual.image_size
    return int(size if isinstance(size, int) else size[0])


def random_images(
    model: open_clip.CLIP, batch: int = 2, hw: tuple[int, int] | None = None, seed: int = 1
) -> torch.Tensor:
    n = native_size(model)
    h, w = hw or (n, n)
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of the state dict, parameters and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}


def assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"hook left on {type(m).__name__}"
        assert "forward" not in m.__dict__, f"forward override left on {type(m).__name__}"


def photo(size: tuple[int, int] = (40, 30), seed: int = 0):
    """A random RGB ``PIL.Image`` of ``size`` (W, H)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def photo_png(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """:func:`photo` saved as a PNG at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(size, seed).save(path)
    return path


def explain_cli(*args: str) -> int:
    """``surgery explain ARGS --model toy-vit`` in-process; its exit status."""
    from surgery_lib.cli import main

    return main(["explain", *args, "--model", "toy-vit"])


def one_line_error(capsys: pytest.CaptureFixture, *names: str) -> str:
    """The command's stderr is one ``surgery explain: error: ...`` line naming each of ``names``."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("surgery explain: error: ") and "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]
