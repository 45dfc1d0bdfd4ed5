"""End to end in a real headless Chromium: the explorer served on localhost by a real server
thread, driven like a user (contrast prompts, compute, stream, sweep, save, reload, load).

Needs Debian's `chromium` (apt) and the `playwright` Python package (its own browser download
is not used: Playwright drives /usr/bin/chromium). Skipped with the reason when either is
missing. Uses the built-in model when it is installed, else a tiny random model.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from werkzeug.serving import make_server

from mlux import HookedModel
from mlux.builtin import DEFAULT_MODEL, builtin_model_path
from mlux.explorer import create_app, get_state
from mlux.testing import save_tiny_model

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = os.environ.get("MLUX_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not path:
        pytest.skip("no chromium on PATH: apt-get install chromium (or set MLUX_CHROMIUM)")
    return path


def _playwright() -> tuple[Any, Any]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: pip install playwright "
                    "(it drives Debian's chromium; no browser download is needed)")
    return sync_playwright, expect


def _model(tmp: Path) -> tuple[HookedModel, dict[str, Any]]:
    """The built-in model and its own contrast set when installed, else a tiny random one."""
    try:
        builtin = builtin_model_path(DEFAULT_MODEL)
    except FileNotFoundError:
        builtin = None
    if builtin is not None:
        from mlux.toy import CONTRAST_PROMPTS, TEST_PROMPTS

        pos, neg = CONTRAST_PROMPTS["sentiment"]
        hooked = HookedModel.from_pretrained(DEFAULT_MODEL)
        layer = hooked.config.get_recommended_layers("default")[0]
        return hooked, {"positive": list(pos), "negative": list(neg), "prompt": TEST_PROMPTS[1],
                        "layer": layer, "alpha": 2}
    hooked = HookedModel.from_pretrained(str(save_tiny_model(tmp / "tiny", "llama")))
    return hooked, {"positive": ["w10 w11 w12", "w13 w14 w15", "w16 w17 w18"],
                    "negative": ["w20 w21 w22", "w23 w24 w25", "w26 w27 w28"],
                    "prompt": "w30 w31 w32", "layer": 1, "alpha": 4}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, HookedModel, dict[str, Any], Any]]:
    _chromium(), _playwright()  # skip before loading anything
    hooked, task = _model(tmp_path)
    app = create_app(hooked, vectors_dir=tmp_path / "vectors")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hooked, task, app
    finally:
        server.shutdown()
        server.server_close()


def _slow(x: Any, ctx: Any) -> None:
    time.sleep(0.02)  # paces the tiny model so the stream is visibly token by token


def test_explorer_in_chromium(served: tuple[str, HookedModel, dict[str, Any], Any],
                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium, (sync_playwright, expect) = _chromium(), _playwright()
    # CI preloads OpenBLAS for MLX; inherited by Playwright's node driver and Chromium it
    # crashes them, and this process has already loaded it, so drop it for the children.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    url, hooked, task, app = served
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1360, "height": 1000})
        ctx.set_default_timeout(20_000)
        # Offline by construction: any request leaving the test server fails the test.
        ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                  else (problems.append(f"external request {route.request.url}"),
                        route.abort()))
        page = ctx.new_page()
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        assert f"layers{hooked.num_layers}" in page.inner_text("#model-info").replace("\n", "")

        page.fill("#positive", "\n".join(task["positive"]))
        page.fill("#negative", "\n".join(task["negative"]))
        page.click("#compute")
        expect(page.locator("#vector-status")).to_contain_text("Computed")
        assert page.locator("#norms-chart rect").count() == hooked.num_layers

        page.fill("#layers", str(task["layer"]))
        page.fill("#alpha-value", str(task["alpha"]))
        page.fill("#prompt", task["prompt"])
        page.fill("#max-tokens", "24")
        page.evaluate("""() => { window.partials = new Set();
            new MutationObserver(() => { const t = document.querySelector('#out-1 .text');
              if (t && document.querySelector('#outputs').dataset.done === '0')
                window.partials.add(t.textContent); })
            .observe(document.querySelector('#outputs'),
                     {childList: true, subtree: true, characterData: true}); }""")
        with hooked.hooks({"residuals_0": _slow}):
            page.click("#generate")
            page.wait_for_selector("#outputs[data-done='1']")
        base, steered = page.inner_text("#out-0 .text"), page.inner_text("#out-1 .text")
        assert base.strip() and steered.strip() and base != steered
        assert page.evaluate("window.partials.size") >= 3, "the text did not stream in"
        assert int(page.get_attribute("#outputs", "data-token-events")) >= 3
        assert page.locator("#out-1 .text span").count() >= 3  # coloured per token

        page.click("#sweep")
        page.wait_for_selector("#sweep-chart path.line-steer")
        page.evaluate("document.querySelectorAll('textarea').forEach(t => t.scrollTop = 0)")
        page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)

        # Stop mid-stream: the browser drops the connection, the server stops generating.
        with app.app_context():
            lock = get_state().lock
        page.fill("#max-tokens", "256")
        with hooked.hooks({"residuals_0": _slow}):
            page.click("#generate")
            page.wait_for_selector("#out-1 .text:not(:empty)")
            page.click("#stop")
            expect(page.locator("#gen-status")).to_have_text("stopped")
            deadline = time.time() + 5
            while lock.locked() and time.time() < deadline:
                time.sleep(0.05)
            assert not lock.locked(), "generation went on after the browser stopped it"

        page.fill("#vector-name", "browser-e2e")
        page.click("#save")
        expect(page.locator("#vector-status")).to_contain_text("Saved as")
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        page.click(".tab[data-tab='library']")
        page.select_option("#library-list", "browser-e2e")
        page.click("#library-load")
        expect(page.locator("#vector-status")).to_contain_text("Loaded “browser-e2e”")
        assert page.input_value("#positive").split("\n") == task["positive"]
        page.screenshot(path=str(ARTIFACTS / "explorer-library.png"), full_page=True)
        ctx.close()
    assert not problems, problems
    assert hooked.active_hooks() == {}
