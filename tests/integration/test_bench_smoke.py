"""The benchmark script still runs against the current API (a smoke run; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "bench_surgery.py"


def _script(name: str):
    """Import benchmarks/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke_run(capsys):
    module = _script("bench_surgery")
    assert (
        module.main(["--quick", "--repeats", "1", "--sizes", "32", "--batches", "2", "--classes", "3"]) == 0
    )
    out = capsys.readouterr().out
    assert "surgery/vanilla" in out and "naive/ours memory" in out
    assert "|      32 |     2 |" in out


def test_explorer_benchmark_smoke_run(capsys):
    module = _script("bench_explorer")
    assert module.main(["--model", "toy-vit", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| architecture toggle |" in out and "× vanilla forward" in out


def test_training_benchmark_smoke_run(capsys):
    module = _script("bench_training")
    assert module.main(["--batch", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| toy-rn | 2 |" in out and out.rstrip().endswith("channels-last |")
    assert "| toy-vit | 2 |" in out and "| contiguous |" in out


def test_methods_benchmark_smoke_run(capsys):
    module = _script("bench_methods")
    assert module.main(["--quick", "--repeats", "1", "--size", "32", "--batches", "2", "--classes", "3"]) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("|")]
    rows = {(c[0], c[2]): c for c in cells[2:]}  # (method, batch) -> the row's cells
    assert cells[0][:3] == ["method", "kind", "batch"] and "method/vanilla" in cells[0]
    assert set(rows) == {(m, "2") for m in ("vanilla (A/A)", *module.METHODS, *module.GRADIENT_METHODS)}
    assert rows[("surgery", "2")][1] == "forward" and rows[("surgery", "2")][6] == "≤ 1.10"
    assert rows[("chefer", "2")][1] == "gradient" and rows[("chefer", "2")][6] == "≤ 3.00"


@pytest.mark.slow
def test_memory_benchmark_quick_run():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_memory.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "baseline" in done.stdout and "MB" in done.stdout
