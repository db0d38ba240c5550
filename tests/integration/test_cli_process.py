"""The ``surgery`` command as a process: one line and exit 2 for bad input, ``--debug`` shows the
traceback (the unit tests call ``surgery_lib.cli.main`` in-process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "surgery_lib", "explain", str(missing), "--labels", "cat"]
    plain = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [f"surgery explain: error: {missing}: no such image file"]
    debug = subprocess.run(
        [*command[:3], "--debug", *command[3:]],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr and str(missing) in debug.stderr
