"""Real-browser test of the notebook explorer: JupyterLab 4 + ipywidgets 8, driven by headless Chromium.

The notebook under test (env ``SURGERY_BROWSER_NOTEBOOK``, default ``notebooks/00_quickstart.py``) is
copied to a tmp dir, converted with jupytext, opened in a private ``jupyter lab`` and run with
Run › Run All Cells. The explorer must follow this DOM contract:

* a ``VBox`` with DOM class ``surgery-explorer``;
* one ``Checkbox`` per boolean surgery flag, ``description`` = flag name, DOM class ``surgery-flag-<name>``;
* an ``Image(format="png")`` with DOM class ``surgery-explorer-image`` whose value is replaced on redraw;
* optionally an ``HTML`` with DOM class ``surgery-explorer-status`` whose text changes on every redraw.

The test toggles ``feature_surgery`` and checks, from the page, that the PNG shown changed. Then, where
the explorer has them (``surgery_lib.ui.widgets.Explorer`` does), it drives

* the method dropdown (DOM class ``surgery-explorer-method``): picking ``clearclip`` replaces the image
  and the flag checkboxes follow the preset (``dual_path`` off);
* the vocabulary box (``surgery-explorer-vocabulary``, a text input applied on Enter): a new vocabulary
  replaces the image;
* the A/B checkbox (``surgery-explorer-ab``): a second image (``surgery-explorer-image-b``), hidden
  before, appears beside the first.

Screenshots go to ``build/test-artifacts/browser/``.

Needs Debian's ``chromium`` and ``requirements-browser.txt`` (``.ci/install-browser.sh``) plus
``requirements-notebooks.txt``. Skips when they are missing, except with ``CI=true``, where it fails.
Never run ``playwright install``: the Debian browser is used through ``executable_path``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO

ARTIFACTS = REPO / "build" / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK_ENV = "SURGERY_BROWSER_NOTEBOOK"
DEFAULT_NOTEBOOK = "notebooks/00_quickstart.py"
FLAG = "feature_surgery"
KNOWN_FLAGS = ("dual_path", "skip_ffn", "feature_surgery")
TOTAL_BUDGET_S = 170.0  # the whole test, server start to teardown, stays under 3 minutes

# Register the marker in pyproject.toml's [tool.pytest.ini_options]:
#   markers = ["browser: real-browser test (JupyterLab + headless Chromium)"]
pytestmark = pytest.mark.browser


# --------------------------------------------------------------------------------------------- helpers
def _missing(what: str, install: str) -> None:
    """Skip locally; under CI=true a missing prerequisite is a failure that says what to install."""
    msg = f"{what} is missing; install it with: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {msg}", pytrace=False)
    pytest.skip(msg)


def _check_prerequisites() -> None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _missing(str(CHROMIUM), "apt-get install chromium chromium-driver  (or bash .ci/install-browser.sh)")
    if importlib.util.find_spec("playwright") is None:
        _missing(
            "the playwright Python package",
            ".venv/bin/pip install -r requirements-browser.txt  (never `playwright install`)",
        )
    for mod in ("jupyterlab", "jupytext", "ipywidgets", "ipykernel"):
        if importlib.util.find_spec(mod) is None:
            _missing(f"the {mod} Python package", ".venv/bin/pip install -r requirements-notebooks.txt")


def _notebook_under_test() -> Path:
    raw = os.environ.get(NOTEBOOK_ENV)
    path = Path(raw or DEFAULT_NOTEBOOK)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        if raw:  # asked for explicitly: a typo must not pass silently
            pytest.fail(f"{NOTEBOOK_ENV}={raw} does not exist ({path})", pytrace=False)
        pytest.skip(f"{DEFAULT_NOTEBOOK} does not exist yet (set {NOTEBOOK_ENV} to test another notebook)")
    return path


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self, cap: float | None = None) -> float:
        left = max(1.0, self.end - time.monotonic())
        return min(left, cap) if cap is not None else left

    def ms(self, cap: float | None = None) -> float:
        return 1000.0 * self.left(cap)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class LabServer:
    url: str
    token: str
    notebook: str  # path of the .ipynb relative to the server root (URL form)
    stem: str
    log: Path
    deadline: Deadline
    console: list[str] = field(default_factory=list)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"


def _stop(proc: subprocess.Popen) -> None:
    """Stop jupyter lab and everything it started (kernels) via its own process group."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # kernels live in the same group; make sure none survives a clean server exit either
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabServer]:
    _check_prerequisites()
    source = _notebook_under_test()
    deadline = Deadline(TOTAL_BUDGET_S)

    root = tmp_path / "root"
    try:  # keep the repo-relative location so that relative paths in the notebook still resolve
        rel = source.relative_to(REPO)
    except ValueError:
        rel = Path(source.name)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    if (REPO / "data").is_dir():
        (root / "data").symlink_to(REPO / "data", target_is_directory=True)
    copy = root / rel
    shutil.copy2(source, copy)

    env = dict(os.environ)
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "jupyter-config"),
        ("JUPYTER_DATA_DIR", "jupyter-data"),
        ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
        ("IPYTHONDIR", "ipython"),
    ):
        env[var] = str(tmp_path / sub)
        (tmp_path / sub).mkdir()
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"

    if copy.suffix != ".ipynb":
        # --set-kernel: a notebook without (or with a foreign) kernelspec would open a "Select Kernel" dialog
        subprocess.run(
            [sys.executable, "-m", "jupytext", "--to", "ipynb", "--set-kernel", "python3", str(copy)],
            check=True,
            env=env,
            capture_output=True,
            timeout=60,
        )
        copy.unlink()  # the .ipynb alone: no jupytext pairing between the two copies
        copy = copy.with_suffix(".ipynb")
    assert copy.is_file(), f"jupytext did not write {copy}"

    # Lab settings: no news / update toasts, no virtual scrolling of cells (outputs always in the DOM).
    settings = tmp_path / "lab-user-settings"
    _write_json(
        settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
        '{"fetchNews": "false", "checkForUpdates": false}',
    )
    _write_json(
        settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
        '{"windowingMode": "none"}',
    )

    port = _free_port()
    token = secrets.token_hex(16)
    log = tmp_path / "jupyter-lab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",  # empty: no old layout to restore
        f"--LabApp.user_settings_dir={settings}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: kernel state without DOM guessing
    ]
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    server = LabServer(url, token, rel.with_suffix(".ipynb").as_posix(), copy.stem, log, deadline)
    try:
        until = time.monotonic() + deadline.left(60)
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > until:
                pytest.fail(f"jupyter lab did not answer on {url}:\n{server.log_tail()}", pytrace=False)
            time.sleep(0.3)
        print(f"jupyter lab up on port {port} after {deadline.elapsed():.1f} s")
        yield server
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------------- page JS
JS_NOTEBOOK_READY = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  return !!(w && w.content && w.content.model && w.context && w.context.isReady && w.sessionContext);
}"""

JS_KERNEL_STATUS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? k.status : 'no-kernel';
}"""

# Executed = every non-empty code cell has an execution count, no [*] prompt, kernel idle -- or an error.
JS_RUN_STATE = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.widgets;
  let pending = 0, running = 0, errors = [];
  for (const c of cells) {
    if (c.model.type !== 'code' || !c.model.sharedModel.getSource().trim()) continue;
    if (c.model.executionCount === null) pending++;
    const prompt = c.node.querySelector('.jp-InputArea-prompt');
    if (prompt && prompt.textContent.includes('*')) running++;
    const outs = c.model.outputs;
    for (let i = 0; i < outs.length; i++) {
      const o = outs.get(i);
      if (o.type === 'error') {
        const j = o.toJSON();
        errors.push(j.ename + ': ' + j.evalue + '\\n' + (j.traceback || []).slice(-4).join('\\n'));
      }
    }
  }
  return {kernel: k ? k.status : 'no-kernel', pending, running, errors};
}"""

JS_IMAGE = """async (img) => {
  const src = img.getAttribute('src') || '';
  if (!src) return {src, b64: ''};
  const buf = new Uint8Array(await (await fetch(src)).arrayBuffer());
  let s = '';
  for (let i = 0; i < buf.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
  }
  return {src, b64: btoa(s)};
}"""

# Strip ANSI colour codes from tracebacks before printing them.
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------------------------- test
def _dismiss_dialogs(page) -> None:
    """Accept a modal JupyterLab dialog (e.g. 'Select Kernel') if one is open."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        text = dialog.first.inner_text()[:200].replace("\n", " ")
        print(f"accepting dialog: {text}")
        dialog.first.locator(".jp-Dialog-button.jp-mod-accept").first.click()


def _wait_kernel_idle(page, deadline: Deadline, cap: float, what: str) -> None:
    until = time.monotonic() + deadline.left(cap)
    status = "?"
    while time.monotonic() < until:
        _dismiss_dialogs(page)
        status = page.evaluate(JS_KERNEL_STATUS)
        if status == "idle":
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"kernel not idle {what} (status {status!r})")


def _run_all_cells(page) -> str:
    """Run › Run All Cells through the menu bar; the command registry if the menu cannot be used."""
    try:
        page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5}, timeout=5000)
        page.get_by_role("menuitem", name=re.compile(r"^Run$")).first.click(timeout=5000)
        page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).first.click(timeout=5000)
        return "menu Run › Run All Cells"
    except Exception as exc:  # a changed menu layout must not hide the explorer check
        print(f"menu failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); using the command")
        page.keyboard.press("Escape")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        return "command notebook:run-all-cells"


def _wait_executed(page, deadline: Deadline) -> None:
    until = time.monotonic() + deadline.left()
    stable = 0
    state: dict = {}
    while time.monotonic() < until:
        _dismiss_dialogs(page)
        state = page.evaluate(JS_RUN_STATE)
        if state["errors"]:
            tb = ANSI.sub("", "\n---\n".join(state["errors"]))
            raise AssertionError(f"a notebook cell raised:\n{tb}")
        done = state["kernel"] == "idle" and state["pending"] == 0 and state["running"] == 0
        stable = stable + 1 if done else 0
        if stable >= 3:  # idle on three polls in a row: not just a gap between two cells
            return
        page.wait_for_timeout(300)
    raise AssertionError(f"notebook did not finish executing in time: {state}")


def _read_image(img, deadline: Deadline) -> tuple[str, bytes]:
    """The image's src and the PNG bytes behind it, fetched in the page (retried: a redraw may revoke it)."""
    last: Exception | None = None
    for _ in range(5):
        try:
            got = img.evaluate(JS_IMAGE, timeout=deadline.ms(20))
            return got["src"], base64.b64decode(got["b64"])
        except Exception as exc:
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"could not read the explorer image from the page: {last}")


def _decode(png: bytes) -> tuple[tuple[int, int], bytes]:
    from PIL import Image

    assert png.startswith(b"\x89PNG\r\n\x1a\n"), f"explorer image is not a PNG (starts {png[:8]!r})"
    with Image.open(io.BytesIO(png)) as im:
        rgba = im.convert("RGBA")
        return rgba.size, rgba.tobytes()


def _status_text(explorer) -> str | None:
    status = explorer.locator(".surgery-explorer-status")
    return status.first.inner_text() if status.count() else None


def _shoot(page, explorer, stem: str, tag: str) -> list[Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    paths = [ARTIFACTS / f"{stem}-{tag}.png", ARTIFACTS / f"{stem}-{tag}-page.png"]
    if explorer is not None:
        # JupyterLab scrolls the notebook inside its own panel: grow the window so the explorer fits
        box = explorer.bounding_box(timeout=5000)
        view = page.viewport_size or {"width": 1400, "height": 1000}
        if box and box["height"] + 250 > view["height"]:
            page.set_viewport_size({"width": view["width"], "height": min(4000, int(box["height"]) + 300)})
            page.wait_for_timeout(300)
        explorer.scroll_into_view_if_needed(timeout=5000)
        explorer.screenshot(path=str(paths[0]), timeout=10000)
    else:
        paths = paths[1:]
    page.screenshot(path=str(paths[-1]), timeout=10000)
    for p in paths:
        print(f"screenshot: {p}")
    return paths


def _wait_replaced(page, img, src_before: str, dl: Deadline, what: str) -> tuple[str, bytes]:
    """Wait until ``img`` shows a new blob after ``what`` and the redraw settles; its src and PNG bytes."""
    t0 = time.monotonic()
    page.wait_for_function(
        "([el, old]) => el.src !== old && el.src.startsWith('blob:') && el.complete",
        arg=[img.element_handle(), src_before],
        timeout=dl.ms(60),
    )
    _wait_kernel_idle(page, dl, 60, f"after {what}")
    src, png = _read_image(img, dl)
    for _ in range(10):  # src unchanged for 0.6 s
        page.wait_for_timeout(600)
        if img.get_attribute("src") == src:
            break
        src, png = _read_image(img, dl)
    print(f"image replaced {time.monotonic() - t0:.1f} s after {what}")
    return src, png


def _assert_new_pixels(before: bytes, after: bytes, what: str) -> None:
    assert before != after, f"the PNG after {what} is byte-identical to the one before"
    assert _decode(before) != _decode(after), f"the PNG after {what} decodes to the same pixels"


def _drive_method_vocabulary_ab(page, explorer, img, lab: LabServer) -> None:
    """The method dropdown, the vocabulary box and the A/B mode, each checked from the page."""
    dl = lab.deadline
    method = explorer.locator(".surgery-explorer-method select").first
    if not method.count():
        print("no method dropdown (surgery-explorer-method): skipping the method / vocabulary / A/B checks")
        return
    options = method.locator("option").all_inner_texts()
    assert "clearclip" in options, f"the method dropdown offers {options}, not clearclip"
    dual = explorer.locator(
        "input[type=checkbox].surgery-flag-dual_path, .surgery-flag-dual_path input[type=checkbox]"
    ).first

    # the method dropdown: clearclip (single path, last block), its preset shown by the checkboxes
    _wait_kernel_idle(page, dl, 20, "before the method change")
    src, png = _read_image(img, dl)
    method.select_option("clearclip")
    src_method, png_method = _wait_replaced(page, img, src, dl, "picking clearclip")
    _assert_new_pixels(png, png_method, "picking clearclip")
    assert method.input_value() == "clearclip", f"the dropdown shows {method.input_value()!r}"
    assert dual.count() and not dual.is_checked(), (
        "dual_path did not follow the clearclip preset (single path)"
    )
    _shoot(page, explorer, lab.stem, "method-clearclip")

    # the vocabulary box: the labels alone instead of the source's class list
    vocabulary = explorer.locator(".surgery-explorer-vocabulary input").first
    labels = explorer.locator(".surgery-explorer-labels input").first
    assert vocabulary.count(), "no vocabulary box (DOM class surgery-explorer-vocabulary)"
    old = vocabulary.input_value()
    new = labels.input_value() if labels.count() else "cat, dog, car"
    if [v.strip() for v in new.split(",")] == [v.strip() for v in old.split(",")]:
        new += ", car, horse"
    vocabulary.fill(new)
    vocabulary.press("Enter")
    _, png_vocab = _wait_replaced(page, img, src_method, dl, "the vocabulary change")
    _assert_new_pixels(png_method, png_vocab, "the vocabulary change")
    print(f"vocabulary {old[:60]!r}... -> {new!r}; status {_status_text(explorer)!r}")
    _shoot(page, explorer, lab.stem, "vocabulary")

    # A/B: a second image appears beside the first
    ab = explorer.locator(
        "input[type=checkbox].surgery-explorer-ab, .surgery-explorer-ab input[type=checkbox]"
    )
    img_b = explorer.locator("img.surgery-explorer-image-b, .surgery-explorer-image-b img").first
    assert ab.count(), "no A/B checkbox (DOM class surgery-explorer-ab)"
    assert not img_b.is_visible(), "the B image is visible before A/B is turned on"
    ab.first.click()
    page.wait_for_function(
        "(el) => el.src.startsWith('blob:') && el.complete && el.naturalWidth > 0 && el.offsetParent",
        arg=img_b.element_handle(timeout=dl.ms(30)),
        timeout=dl.ms(60),
    )
    _wait_kernel_idle(page, dl, 60, "after turning A/B on")
    assert ab.first.is_checked() and img_b.is_visible(), "the B image did not appear"
    _, png_b = _read_image(img_b, dl)
    _assert_new_pixels(png_vocab, png_b, "turning A/B on (B is another method)")
    box_a, box_b = img.bounding_box(), img_b.bounding_box()
    assert box_a and box_b and box_b["x"] >= box_a["x"] + 0.5 * box_a["width"], (
        f"B is not beside A: A {box_a}, B {box_b}"
    )
    print(f"A/B on: A {box_a}, B {box_b}; status {_status_text(explorer)!r}")
    _shoot(page, explorer, lab.stem, "ab")


def test_explorer_toggle_redraws_image(lab: LabServer) -> None:
    from playwright.sync_api import sync_playwright

    dl = lab.deadline
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
            timeout=60_000,
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: lab.console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: lab.console.append(f"pageerror: {e}"))
            explorer = None
            try:
                page.set_default_timeout(30_000)
                page.goto(f"{lab.url}/lab/tree/{lab.notebook}?reset&token={lab.token}", timeout=dl.ms(60))
                page.wait_for_function(JS_NOTEBOOK_READY, timeout=dl.ms(60))
                _wait_kernel_idle(page, dl, 60, "after opening the notebook")
                print(f"notebook open, kernel idle after {dl.elapsed():.1f} s")

                how = _run_all_cells(page)
                t_run = time.monotonic()
                _wait_executed(page, dl)
                print(f"ran all cells via {how} in {time.monotonic() - t_run:.1f} s")

                explorer = page.locator(".surgery-explorer").first
                try:
                    explorer.wait_for(state="visible", timeout=dl.ms(30))
                except Exception as exc:
                    raise AssertionError(
                        "the notebook ran but no element with DOM class surgery-explorer is visible "
                        "(does it display the explorer VBox as its cell's result?)"
                    ) from exc
                img = explorer.locator("img.surgery-explorer-image, .surgery-explorer-image img").first
                page.wait_for_function(
                    "(el) => el.src.startsWith('blob:') && el.complete && el.naturalWidth > 0",
                    arg=img.element_handle(timeout=dl.ms(30)),
                    timeout=dl.ms(30),
                )
                flags = [f for f in KNOWN_FLAGS if explorer.locator(f".surgery-flag-{f}").count()]
                print(f"explorer rendered; flag checkboxes present: {flags}")
                flag = explorer.locator(f".surgery-flag-{FLAG}").first
                assert flag.count(), f"no element with DOM class surgery-flag-{FLAG} in the explorer"
                assert FLAG in flag.inner_text(), f"checkbox description is {flag.inner_text()!r}, not {FLAG}"
                box = explorer.locator(
                    f"input[type=checkbox].surgery-flag-{FLAG}, .surgery-flag-{FLAG} input[type=checkbox]"
                ).first

                _wait_kernel_idle(page, dl, 20, "before the toggle")
                src_before, png_before = _read_image(img, dl)
                status_before = _status_text(explorer)
                checked_before = box.is_checked()
                _shoot(page, explorer, lab.stem, "before")

                t_toggle = time.monotonic()
                box.click()
                page.wait_for_function(
                    "([el, old]) => el.src !== old && el.src.startsWith('blob:') && el.complete",
                    arg=[img.element_handle(), src_before],
                    timeout=dl.ms(60),
                )
                _wait_kernel_idle(page, dl, 60, "after the toggle")
                src_after, png_after = _read_image(img, dl)
                for _ in range(10):  # let a multi-step redraw settle: src unchanged for 0.6 s
                    page.wait_for_timeout(600)
                    if img.get_attribute("src") == src_after:
                        break
                    src_after, png_after = _read_image(img, dl)
                print(f"image replaced {time.monotonic() - t_toggle:.1f} s after the toggle")
                status_after = _status_text(explorer)
                _shoot(page, explorer, lab.stem, "after")

                assert box.is_checked() != checked_before, f"{FLAG} checkbox did not change state"
                assert src_after != src_before, "image src did not change after the toggle"
                h_before = hashlib.sha256(png_before).hexdigest()[:16]
                h_after = hashlib.sha256(png_after).hexdigest()[:16]
                print(f"sha256 before {h_before} ({len(png_before)} B), after {h_after} ({len(png_after)} B)")
                assert png_before != png_after, "the new PNG is byte-identical to the old one"
                (size_b, px_b), (size_a, px_a) = _decode(png_before), _decode(png_after)
                assert (size_b, px_b) != (size_a, px_a), "the new PNG decodes to the same pixels"
                if status_before is not None:
                    print(f"status before {status_before!r}, after {status_after!r}")
                    assert status_after != status_before, "status text did not change on redraw"

                _drive_method_vocabulary_ab(page, explorer, img, lab)
            except BaseException:
                try:
                    _shoot(page, None, lab.stem, "failure")
                except Exception as exc:
                    print(f"no failure screenshot: {exc}")
                print("browser console (last 30 messages):\n" + "\n".join(lab.console[-30:]))
                print("jupyter lab log tail:\n" + lab.log_tail())
                raise
        finally:
            browser.close()
    print(f"browser test done in {dl.elapsed():.1f} s")
