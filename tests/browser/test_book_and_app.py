"""Real-browser tests of `make book` (the static book opens from the file system: index, a notebook page
with its figures, search) and `make app` (Voilà serves the explorer without code; toggling a control
changes the image). Headless Debian chromium through Playwright; skipped locally when missing, failed
under CI=true (like test_browser.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI, REPO

from surgery_lib.ui.app import voila_command, write_app_notebook
from surgery_lib.ui.book import build_book
from surgery_lib.ui.notebooks import run_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "build" / "test-artifacts" / "browser"
JS_SRC_CHANGED = """([sel, old]) => {
  const e = document.querySelector(sel);
  return e && e.getAttribute('src') !== old;
}"""


def _browser(pw):
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing: bash .ci/install-browser.sh"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return pw.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
    )


@pytest.fixture(scope="module")
def playwright():
    sync = pytest.importorskip("playwright.sync_api")
    with sync.sync_playwright() as pw:
        yield pw


def test_the_book_opens_from_the_file_system(browser, tmp_path: Path) -> None:
    executed = tmp_path / "executed"
    env = {"SURGERY_LIMIT": "2", "HF_HUB_OFFLINE": "1"}
    run_notebook(
        REPO / "notebooks" / "00_quickstart.py", executed, executed / "figures", timeout=600, env=env
    )
    index = build_book(executed, tmp_path / "book")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(index.as_uri())
    assert "CLIP Surgery" in page.title()
    page.click("text=00 · Quickstart", timeout=10_000)
    page.wait_for_load_state()
    assert page.url.endswith("00_quickstart.html")
    images = page.locator("img")
    assert images.count() >= 1
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert max(widths) > 100, widths  # the figures load from the book's own folder
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "book_page.png"))
    page.goto(index.parent.joinpath("search.html").as_uri() + "?q=surgery")
    page.wait_for_selector("#search-results li", timeout=20_000)
    assert page.locator("#search-results li").count() >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser(playwright):
    """Headless Chromium; skips (or fails under CI) before any server is started."""
    browser = _browser(playwright)
    try:
        yield browser
    finally:
        browser.close()


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's process group (SIGTERM, then SIGKILL) and what it started in groups of its
    own (Jupyter kernels)."""
    try:
        import psutil

        below = psutil.Process(server.pid).children(recursive=True)
    except Exception:  # psutil missing, or the server is gone already
        below = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    for process in below:
        with contextlib.suppress(Exception):
            process.kill()


@pytest.fixture
def app_url(browser, tmp_path: Path) -> Iterator[str]:
    """The app's Voilà server on 127.0.0.1 (asks for ``browser`` first: a missing Chromium skips
    before anything is started); its process group is always stopped afterwards."""
    pytest.importorskip("voila")
    port = _free_port()
    notebook = write_app_notebook(tmp_path / "app")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg")}
    log = tmp_path / "voila.log"
    with open(log, "wb") as out:  # a file, not a pipe nobody reads (a full pipe blocks the server)
        server = subprocess.Popen(
            voila_command(notebook, port),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while server.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"voila did not answer on 127.0.0.1:{port} in 60 s:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        else:
            pytest.fail(f"voila exited with status {server.returncode}:\n{log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        _stop(server)


def test_the_app_serves_the_explorer_and_a_toggle_redraws(browser, app_url: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url, timeout=120_000)
    image = page.locator(".surgery-explorer-image").first
    image.wait_for(state="visible", timeout=180_000)
    assert "load_clip(" not in page.content()  # the code cells' sources are not on the page
    before = image.get_attribute("src")
    page.locator(".surgery-flag-feature_surgery input").first.click()
    page.wait_for_function(
        JS_SRC_CHANGED,
        arg=[".surgery-explorer-image", before],
        timeout=120_000,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_after_toggle.png"))
