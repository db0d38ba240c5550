"""``make app`` as a process: SIGTERM to the app stops its Voila server and the kernels with it
(issue 24 item 18). Servers listen on 127.0.0.1 only and every process group started is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")
def test_sigterm_to_the_app_stops_its_voila_server(tmp_path):
    pytest.importorskip("voila")
    pytest.importorskip("psutil")
    port = _free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
    }
    command = [sys.executable, "-m", "surgery_lib.ui.app", "--port", str(port), "--folder", str(tmp_path)]
    app = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and app.poll() is None:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"the app did not answer on 127.0.0.1:{port} (exit status {app.poll()})")
        servers = _children(app.pid)
        assert servers, "the app started no server process"
        os.kill(app.pid, signal.SIGTERM)  # the app only, not its process group
        app.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in servers):
            time.sleep(0.2)
        assert not [pid for pid in servers if _alive(pid)], "the voila server outlived the app"
    finally:
        for pid in [app.pid, *servers]:
            _kill_group(pid)
        app.wait(timeout=10)


def test_the_app_forwards_a_signal_to_its_server_group(tmp_path):
    """The app's serve(): SIGTERM to the app reaches the server's process group, which it waits for,
    and a process the server started in a group of its own (as Jupyter starts kernels) ends too."""
    script = tmp_path / "server.py"
    script.write_text(
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True)\n"  # like a Jupyter kernel: a process group of its own
        "open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}')\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "time.sleep(60)\n"
    )
    pids = tmp_path / "pids"
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import importlib.util, sys\n"  # app.py alone: no torch import, a fast start
        f"spec = importlib.util.spec_from_file_location('app', {str(REPO / 'surgery_lib/ui/app.py')!r})\n"
        "app = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(app)\n"
        "serve = app.serve\n"
        f"sys.exit(serve([sys.executable, {str(script)!r}, {str(pids)!r}], grace=3.0))\n"
    )
    app = subprocess.Popen([sys.executable, str(runner)], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (pids.is_file() and pids.read_text().count(" ")):
            time.sleep(0.05)
        server, grandchild = (int(x) for x in pids.read_text().split())
        os.kill(app.pid, signal.SIGTERM)
        assert app.wait(timeout=10) == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_alive(server) or _alive(grandchild)):
            time.sleep(0.05)
        assert not _alive(server) and not _alive(grandchild)
    finally:
        _kill_group(app.pid)
        app.wait(timeout=10)
        if pids.is_file():
            for pid in pids.read_text().split():
                _kill_group(int(pid))
