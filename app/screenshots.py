"""Screenshots of every lab view for the README, taken with headless Chromium.

    python -m app.screenshots --out app/screenshots                 # the bundled models
    python -m app.screenshots --out /tmp/shots --bundle fashion-mnist --steps 5   # or a bundle folder

Starts ``python -m app`` on a free port (survey off), opens each tab, runs its action
with the defaults (fewer steps with ``--steps``), waits for the results and saves
``sampling.png``, ``inspector.png``, ``attack.png``, ``attack-batch.png`` (the batch
mode), ``stability.png``, ``models.png``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_args: Sequence[str], port: int, run_dir: Path, log_path: Path,
                 extra: Sequence[str] = ()) -> subprocess.Popen:
    """``python -m app`` in its own process group; waits until /healthz answers."""
    import httpx

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "app", *model_args, "--port", str(port), "--run-dir", str(run_dir),
                             "--no-survey", *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the lab exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the lab did not start within 180 s:\n{log_path.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# a finished run's status line ends "... in 1.2 s" / "in 350 ms"; the loading tracker says "processing"
DONE_JS = ("([sel, old]) => { const e = document.querySelector(sel); if (!e) return false; const t = e.innerText; "
           "return t !== old && /in [0-9.]+ m?s/.test(t) && !/processing|queue/.test(t); }")


def wait_image(page, selector: str, timeout_ms: int) -> None:
    """Wait until an <img> under ``selector`` has loaded pixels."""
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel + ' img')].some(i => i.complete && i.naturalWidth > 0)",
        arg=selector, timeout=timeout_ms)


def run_and_wait(page, button: str, status: str, image: str, timeout_ms: int) -> None:
    """Click ``button``, wait for the ``status`` Markdown to change and ``image`` to load."""
    before = page.inner_text(status)
    page.click(button)
    page.wait_for_function(DONE_JS, arg=[status, before], timeout=timeout_ms)
    wait_image(page, image, timeout_ms)
    page.wait_for_timeout(500)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def take(url: str, out: Path, steps: int | None, timeout_s: int) -> list[Path]:
    """Drive every tab of the lab at ``url`` and save one screenshot per view."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    ms = timeout_s * 1000
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#sample-run", timeout=ms)
        page.wait_for_timeout(1000)  # the page-load refresh fills the controls

        if steps is not None:
            page.locator("#sample-steps input").fill(str(steps))
        run_and_wait(page, "#sample-run", "#sample-status", "#sample-stability", ms)
        saved.append(out / "sampling.png")
        page.screenshot(path=saved[-1], full_page=True)

        open_tab(page, "Gradient inspector")
        run_and_wait(page, "#inspect-run", "#inspect-status", "#inspect-gallery", ms)
        saved.append(out / "inspector.png")
        page.screenshot(path=saved[-1], full_page=True)

        open_tab(page, "Targeted PGD")
        run_and_wait(page, "#attack-run", "#attack-status", "#attack-gallery", ms)
        saved.append(out / "attack.png")
        page.screenshot(path=saved[-1], full_page=True)
        run_and_wait(page, "#batch-run", "#batch-status", "#batch-grid", ms)
        saved.append(out / "attack-batch.png")
        page.locator("#batch-run").scroll_into_view_if_needed()
        page.screenshot(path=saved[-1], full_page=True)

        open_tab(page, "Stability")
        if steps is not None:
            page.locator("#stability-steps input").fill(str(steps))
        run_and_wait(page, "#stability-run", "#stability-status", "#stability-plot", ms)
        saved.append(out / "stability.png")
        page.screenshot(path=saved[-1], full_page=True)

        open_tab(page, "Models")
        page.get_by_text("Load other models").click()
        page.wait_for_timeout(500)
        saved.append(out / "models.png")
        page.screenshot(path=saved[-1], full_page=True)
        browser.close()
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.screenshots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "app" / "screenshots", help="folder for the PNG files")
    parser.add_argument("--bundle", default=None,
                        help="a shipped bundle's name or a bundle folder (default: the default shipped bundle)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps for the runs (default: the lab's)")
    parser.add_argument("--url", default=None, help="use a lab already running at this URL instead of starting one")
    parser.add_argument("--timeout", type=int, default=600, help="seconds to wait for each view (default 600)")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: install Debian's chromium package")
    if args.url:
        saved = take(args.url, args.out, args.steps, args.timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="rcg-shots-") as tmp:
            port = free_port()
            proc = start_server(["--bundle", args.bundle] if args.bundle else [], port, Path(tmp),
                                Path(tmp) / "server.log", ["--threads", "2"])
            try:
                saved = take(f"http://127.0.0.1:{port}/", args.out, args.steps, args.timeout)
            finally:
                stop_server(proc)
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
