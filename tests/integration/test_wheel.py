"""The library as users install it: a wheel built from pyproject.toml, installed non-editable into a fresh
virtual environment, loads the shipped model and explains an image from any folder, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the sources (no stale build/ folder can leak into it)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(REPO / "surgery_lib", src / "surgery_lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("surgery_lib-*.whl")
    return path


def test_wheel_holds_configs_weights_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("toy-vit-v2", "toy-vit", "toy-rn"):
        assert f"surgery_lib/model/configs/{model}.json" in names
        assert f"surgery_lib/model/weights/{model}.safetensors" in names
        assert f"surgery_lib/model/weights/{model}.json" in names
    assert not any(n.startswith(("surgery_tools/", "tests/", "notebooks/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "surgery = surgery_lib.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_works_offline_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    # The dependencies (torch, open_clip, ...) come from this environment's site-packages, added as a
    # plain path: its .pth files (the editable install of the checkout) are not processed.
    deps = sysconfig.get_paths()["purelib"]
    env = {
        **os.environ,
        "PYTHONPATH": f"{target}{os.pathsep}{deps}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    env.pop("SURGERY_DATA_DIR", None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = (
        "import surgery_lib, numpy as np; from PIL import Image\n"
        f"assert surgery_lib.__file__.startswith({str(target)!r}), surgery_lib.__file__\n"
        "clip = surgery_lib.load_clip()\n"
        "image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))\n"
        "batch = surgery_lib.preprocess_images([image], size=clip.image_size)\n"
        "result = surgery_lib.explain(clip.model, clip.tokenizer, batch, ['dog', 'car'])\n"
        "print(clip.name, tuple(result.maps.shape))\n"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "toy-vit-v2"  # the default model
    image = work / "photo.png"
    save = code.split("clip =")[0] + "image = Image.fromarray(np.zeros((40, 50, 3), np.uint8))\n"
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", save + f"image.save({str(image)!r})"],
        cwd=work,
        env=env,
        check=True,
    )
    command = [str(venv / "bin" / "python"), "-m", "surgery_lib", "explain", str(image), "--labels", "dog"]
    done = subprocess.run(
        [*command, "--out", str(work / "out")], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (work / "out").glob("*.png")) == [
        "photo_dog_raw.png",
        "photo_dog_surgery.png",
    ]
