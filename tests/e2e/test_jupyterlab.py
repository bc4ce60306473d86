"""Lesson 00 in a real browser: JupyterLab + Debian's Chromium driven by Playwright.

Runs every cell of ``notebooks/00_start_here.ipynb`` the way a learner does (Run > Run All
Cells), then checks that no cell shows an error and that the status panel rendered as a
live ipywidget, not its text fallback. A screenshot lands in ``test-artifacts/``.

Playwright drives the system Chromium through ``executable_path``; ``playwright install``
is never needed. Without a Chromium the test skips, unless ``BUSLIB_REQUIRE_BROWSER`` is
set (CI sets it): then it fails, so CI can never pass without running it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "00_start_here.ipynb"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome",
)
CHROMIUM_ARGS = [
    "--no-sandbox",  # containers and root: the sandbox needs privileges we do not have
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Lab settings for a quiet, deterministic run: no news prompt, every cell in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        path = shutil.which(candidate) if os.sep not in candidate else candidate
        if path and os.access(path, os.X_OK):
            return path
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("BUSLIB_REQUIRE_BROWSER"):
        pytest.fail(f"{reason}, and BUSLIB_REQUIRE_BROWSER is set, so the browser test must run.")
    pytest.skip(f"{reason}. Install it (Debian/Ubuntu: apt-get install chromium) to run the browser test.")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _find_chromium()
    if path is None:
        _skip_or_fail(f"No Chromium binary found (looked for {', '.join(CHROMIUM_CANDIDATES)})")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip_or_fail("The Python package playwright is not installed (pip install -e '.[test]')")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str, *, method: str = "GET", timeout: float = 5.0) -> object:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def _children(pid: int) -> set[int]:
    """Every descendant of pid (Linux /proc; elsewhere an empty set)."""
    found: set[int] = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in found]
        found.update(kids)
        frontier.extend(kids)
    return found


def _nats_servers_owned_by(pids: set[int]) -> list[str]:
    """Command lines of nats-server processes whose buslib store belongs to one of pids."""
    owned = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "nats-server" in cmd and any(f"/{pid}-" in cmd for pid in pids):
            owned.append(cmd)
    return owned


class Lab:
    """A JupyterLab server on 127.0.0.1 serving a temp copy of lesson 00."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "jupyterlab.log"

    def start(self) -> None:
        notebooks = self.root / "notebooks"
        notebooks.mkdir()
        _copy_without_outputs(NOTEBOOK, notebooks / NOTEBOOK.name)  # the browser may save; never over the repo's copy
        settings = self.root / "user-settings"
        for name, value in LAB_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = {
            **os.environ,  # NATS_URL from tests/conftest.py: the kernel uses the shared server
            "JUPYTER_RUNTIME_DIR": str(self.root / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.root / "workspaces"),
        }
        command = [
            str(Path(sys.executable).with_name("jupyter")),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={notebooks}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.root / 'workspaces'}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # only when we are root: Jupyter refuses otherwise
        self.proc = subprocess.Popen(
            command,
            cwd=notebooks,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kernels included in the final kill
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                _get_json(self.api("status"), timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start. Its log:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.2)

    def api(self, path: str) -> str:
        return f"{self.base}/api/{path}?token={self.token}"

    def kernel_pids(self) -> set[int]:
        assert self.proc is not None
        return {pid for pid in _children(self.proc.pid) if b"ipykernel" in _cmdline(pid)}

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:  # shut kernels down cleanly first, as a learner's "Shut Down" would
            for kernel in _get_json(self.api("kernels")) or []:
                _get_json(self.api(f"kernels/{kernel['id']}"), method="DELETE", timeout=10)
        except OSError:
            pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if os.name != "nt" else signal.CTRL_BREAK_EVENT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        if os.name != "nt":
            try:  # anything left in the server's own process group (it was started by us)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait(5)


def _copy_without_outputs(source: Path, target: Path) -> None:
    """Copy a notebook with outputs and counts cleared, so every output seen comes from this run."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, target)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    server = Lab(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _wait(check, *, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def test_lesson_00_runs_in_jupyterlab_without_errors_and_shows_a_live_status_widget(chromium: str, lab: Lab) -> None:
    from playwright.sync_api import sync_playwright

    nats_url = os.environ["NATS_URL"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "jupyterlab-00.png"
    kernels: set[int] = set()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{lab.base}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
            _wait_for_idle_kernel(page, timeout=45)
            news = page.get_by_role("button", name="No", exact=True)  # "Jupyter news" toast, if it shows
            if news.count():
                news.first.click()
            kernels = lab.kernel_pids()
            assert kernels or not Path("/proc").is_dir(), "a kernel process should be running for the notebook"

            n_code = page.locator(".jp-Notebook .jp-CodeCell").count()
            assert n_code >= 10, f"expected lesson 00's code cells in the page, found {n_code}"
            prompts = ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt"
            assert not any(p.strip().strip("[]:").strip() for p in page.locator(prompts).all_inner_texts()), (
                "the served copy should start with no execution counts"
            )

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            # Finished when every code cell shows an execution count ("[12]:"), none queued ("[*]:"),
            # or when a cell failed (Run All stops there). Tracebacks and any stderr render with
            # the stderr mime type in JupyterLab 4.
            errors_sel = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
            page.wait_for_function(
                """([sel, n, err]) => {
                    if (document.querySelector(err)) return true;
                    const ps = [...document.querySelectorAll(sel)].map(p => p.innerText.trim());
                    return ps.length === n && ps.every(p => /^\\[\\d+\\]:$/.test(p));
                }""",
                arg=[prompts, n_code, errors_sel],
                timeout=45_000,
            )
            _wait_for_idle_kernel(page, timeout=30)
            errors = page.locator(errors_sel)
            assert errors.count() == 0, "a cell shows an error or stderr output:\n" + "\n---\n".join(
                errors.all_inner_texts()
            )

            # Rendered by the widget manager (a .jupyter-widgets view), not the static text/html fallback.
            widget = page.locator(".jp-OutputArea-output > .jupyter-widgets.buslib-status-panel")
            fallback = page.locator('.jp-OutputArea-output[data-mime-type="text/html"]', has_text="NATS server")
            assert fallback.count() == 0, "the status panel fell back to static HTML: is the widget manager working?"
            assert widget.count() == 1, "the status panel did not render as a live ipywidget"
            widget.scroll_into_view_if_needed()
            html_view = widget.locator(".widget-html")
            _wait(lambda: nats_url in html_view.inner_text(), timeout=10, what=f"{nats_url} in the status panel")
            text = html_view.inner_text()
            assert "connected" in text and "disconnected" not in text, text

            # Live: a message published now shows up in the panel without running any cell.
            count = widget.locator("tr", has_text="LESSON00_ORDERS").locator("td").nth(2)
            before = int(count.inner_text())
            publish_one(nats_url, "lesson00.orders.created", b'{"order": "from-the-browser-test"}')
            _wait(lambda: count.inner_text().strip() == str(before + 1), timeout=15, what="the panel to count it")
            page.screenshot(path=str(shot))
        except BaseException:
            # Evidence for a failed run (CI keeps test-artifacts/).
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-00-failure.png"))
            (ARTIFACTS / "jupyterlab-00-failure.log").write_text(lab.log.read_text(errors="replace"))
            raise
        finally:
            browser.close()

    assert shot.stat().st_size > 10_000, "the screenshot should not be empty"
    lab.stop()
    _wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in kernels), timeout=15, what="the kernel to exit")
    _wait(lambda: not _nats_servers_owned_by(kernels), timeout=15, what="nats-servers started by the kernel to exit")


def _wait_for_idle_kernel(page, *, timeout: float) -> None:
    # The status bar's kernel item reads "Python 3 (ipykernel) | Idle" when the kernel is ready.
    page.wait_for_function(
        "() => (document.querySelector('#jp-main-statusbar')?.innerText || '').includes('| Idle')",
        timeout=timeout * 1000,
    )


def publish_one(url: str, subject: str, data: bytes) -> None:
    """Publish one JetStream message from this (sync) test."""
    import buslib

    async def main() -> None:
        nc = await buslib.connect(url)
        try:
            await nc.jetstream().publish(subject, data)
        finally:
            await nc.close()

    # Playwright's sync API owns this thread's event loop: run ours in another thread.
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run_capturing(main, errors))
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]


def _run_capturing(main, errors: list[BaseException]) -> None:
    import asyncio

    try:
        asyncio.run(main())
    except BaseException as err:  # handed to the test thread
        errors.append(err)
