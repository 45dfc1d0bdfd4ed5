"""End to end in a real headless Chromium: the explorer served on localhost by a real server
thread, driven like a user (contrast prompts, compute, stream, stop, sweep, save, reload, load),
then through the states that went wrong before (a cleared alpha box, Stop, a failed sweep,
Delete): the DOM asserted and screenshots taken, checked (PNG, size, not blank, an invalid
box's red border by its pixels) and kept in artifacts/.

Needs Debian's `chromium` (apt) and the `playwright` Python package (its own browser download
is not used: Playwright drives /usr/bin/chromium). Skipped with the reason when either is
missing. Uses the built-in model when it is installed, else a tiny random model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest

from mlux import HookedModel, web
from mlux.builtin import DEFAULT_MODEL, builtin_model_path
from mlux.explorer import create_app, get_state
from mlux.explorer.behavior_sweep import toy_behavior_sweeps, toy_scorers
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
    builtin = hooked.model_id == DEFAULT_MODEL  # its behaviours: sweep modes and column scores
    app = create_app(hooked, vectors_dir=tmp_path / "vectors",
                     sweeps=toy_behavior_sweeps() if builtin else None,
                     scorers=toy_scorers() if builtin else None)
    server = web.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hooked, task, app
    finally:
        server.shutdown()
        server.server_close()
        with app.app_context():
            get_state().close()


def _slow(x: Any, ctx: Any) -> None:
    time.sleep(0.02)  # paces the tiny model so the stream is visibly token by token


@contextlib.contextmanager
def browser_page(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 problems: list[str]) -> Iterator[Any]:
    """A page in a headless Chromium that may reach only the test server, opened on `url` and
    ready (the page says so: body[data-ready]); console errors and page errors land in
    `problems`."""
    chromium, (sync_playwright, _) = _chromium(), _playwright()
    # CI preloads OpenBLAS for MLX; inherited by Playwright's node driver and Chromium it
    # crashes them, and this process has already loaded it, so drop it for the children.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1360, "height": 1000}, accept_downloads=True)
        ctx.set_default_timeout(20_000)
        # Offline by construction: any request leaving the test server fails the test.
        ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                  else (problems.append(f"external request {route.request.url}"),
                        route.abort()))
        page = ctx.new_page()
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            yield page
        finally:
            ctx.close()


def test_explorer_in_chromium(served: tuple[str, HookedModel, dict[str, Any], Any],
                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expect = _playwright()[1]
    url, hooked, task, app = served
    problems: list[str] = []
    with browser_page(url, tmp_path, monkeypatch, problems) as page:
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
            worker = get_state().worker
        page.fill("#max-tokens", "256")
        passes: list[int] = []

        def counted(x: Any, ctx: Any) -> None:
            passes.append(1)
            _slow(x, ctx)

        with hooked.hooks({"residuals_0": counted}):
            page.click("#generate")
            page.wait_for_selector("#out-1 .text:not(:empty)")
            page.click("#stop")
            expect(page.locator("#gen-status")).to_have_text("stopped")
            worker.call(lambda: None, timeout=60)  # queued behind the generation: it has ended
            assert len(passes) < 200, "generation went on after the browser stopped it"
        assert page.is_enabled("#export")  # what was made before Stop can be exported
        # The partial text stays; no column keeps the streaming cursor.
        assert page.locator("#outputs .out").count() == 2
        assert page.locator(".out.streaming").count() == 0
        cursors = page.evaluate("[...document.querySelectorAll('.out .text')]"
                                ".map((t) => getComputedStyle(t, '::after').content)")
        assert len(cursors) == 2 and set(cursors) <= {"none", "normal"}, cursors
        checked_screenshot(page, "explorer-stopped")

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
    assert not problems, problems
    assert hooked.active_hooks() == {}


def checked_screenshot(page: Any, name: str, selector: Optional[str] = None) -> Any:
    """A screenshot taken and checked (a whole PNG of the element's or page's size, not
    blank), saved to artifacts/, and returned as an RGB image for pixel checks."""
    from PIL import Image  # matplotlib's dependency, so always installed

    data = page.locator(selector).screenshot() if selector else page.screenshot(full_page=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    width, height = struct.unpack(">II", data[16:24])
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (width, height) and width >= 20 and height >= 10, name
    if selector is None:
        assert width >= 1000 and len(image.getcolors(1 << 20) or []) > 50, f"{name} is blank"
    (ARTIFACTS / f"{name}.png").write_bytes(data)
    return image


def red_share(image: Any) -> float:
    """The share of pixels in the page's error colour (#b3261e: an invalid box's border)."""
    r, g, b = np.asarray(image, dtype=np.int32).transpose(2, 0, 1)
    return float(((abs(r - 179) < 40) & (g < 90) & (b < 90)).mean())


def test_ui_states_in_chromium(served: tuple[str, HookedModel, dict[str, Any], Any],
                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the page shows after a relative alpha, an export, a cleared alpha box, a failed
    sweep, a reload and Delete (Stop: the test above): the DOM asserted, screenshots taken
    and checked."""
    expect = _playwright()[1]
    url, hooked, task, app = served
    with app.app_context():
        library = get_state().library.root
    problems: list[str] = []
    streams: list[str] = []
    with browser_page(url, tmp_path, monkeypatch, problems) as page:
        page.on("request", lambda r: r.url.endswith("/api/stream") and streams.append(r.url))
        page.on("dialog", lambda dialog: dialog.accept())
        page.fill("#positive", "\n".join(task["positive"]))
        page.fill("#negative", "\n".join(task["negative"]))
        page.click("#compute")
        expect(page.locator("#vector-status")).to_contain_text("Computed")
        page.fill("#layers", str(task["layer"]))
        page.fill("#prompt", task["prompt"])
        page.fill("#max-tokens", "12")

        # Alpha relative to the residual norm; the prompt above the columns; a numeric scale.
        page.check("#alpha-relative")
        assert page.get_attribute("#alpha", "max") == "2"
        page.fill("#alpha-value", "0.5")
        page.click("#generate")
        page.wait_for_selector("#outputs[data-done='1']")
        expect(page.locator("#out-1 h3")).to_contain_text("alpha +0.5 × residual norm (raw ")
        expect(page.locator("#out-0 h3")).to_have_text("baseline")
        expect(page.locator("#shown-prompt")).to_contain_text(task["prompt"])
        ticks = page.locator("#colour-scale .scale-ticks span").all_inner_texts()
        assert len(ticks) == 3 and float(ticks[0]) < float(ticks[1].split()[0]) < float(ticks[2])
        with page.expect_download() as download:
            page.click("#export")
        exported = json.loads(Path(download.value.path()).read_text())
        assert exported["generation"]["request"]["alpha_unit"] == "residual"
        texts = [page.inner_text(f"#out-{i} .text") for i in (0, 1)]
        assert [r["text"] for r in exported["generation"]["result"]["rows"]] == texts
        checked_screenshot(page, "explorer-relative-alpha")

        # A cleared alpha box: refused in the page, nothing sent, the last results cleared.
        page.uncheck("#alpha-relative")
        sent = len(streams)
        page.fill("#alpha-value", "")
        page.click("#generate")
        expect(page.locator("#error")).to_contain_text("alpha: is empty")
        expect(page.locator("#gen-status")).to_have_text("failed")
        assert len(streams) == sent and page.locator("#outputs .out").count() == 0
        assert page.is_hidden("#shown-prompt") and page.is_hidden("#colour-scale")
        assert page.is_disabled("#export")
        assert red_share(checked_screenshot(page, "explorer-alpha-box", "#alpha-value")) > 0.02
        checked_screenshot(page, "explorer-cleared-alpha")

        # A sweep, then one that fails: no "sweeping…" left, the sweep's Tokens box outlined.
        page.fill("#alpha-value", str(task["alpha"]))
        page.fill("#sweep-tokens", "8")
        page.click("#sweep")
        page.wait_for_selector("#sweep-chart path.line-steer")
        expect(page.locator("#sweep-title")).to_contain_text("Change in the generated text's "
                                                             "projection")
        assert "change in projection" in page.locator("#sweep-chart .axis-label").first \
            .text_content()
        expect(page.locator("#sweep-metric")).to_contain_text("read without steering")
        expect(page.locator("#sweep-status")).to_contain_text("× the layer's residual norm")
        page.fill("#sweep-tokens", "999")
        page.click("#sweep")
        expect(page.locator("#sweep-status")).to_have_text("failed")
        expect(page.locator("#error")).to_contain_text("max_tokens")
        assert page.locator("#sweep-chart path").count() == 0  # the last chart went with it
        assert page.locator("#max-tokens.invalid").count() == 0
        assert red_share(checked_screenshot(page, "explorer-sweep-tokens", "#sweep-tokens")) > 0.02
        assert red_share(checked_screenshot(page, "explorer-max-tokens", "#max-tokens")) == 0
        checked_screenshot(page, "explorer-failed-sweep")

        # The library: an unreadable file can't be picked, the selection survives a reload,
        # and Delete clears the loaded vector.
        library.mkdir(parents=True, exist_ok=True)
        (library / "broken.safetensors").write_bytes(b"junk")
        page.fill("#vector-name", "ui-state")
        page.click("#save")
        expect(page.locator("#vector-status")).to_contain_text("Saved as")
        page.click(".tab[data-tab='library']")
        broken = page.locator("#library-list option[value='broken']")
        assert broken.is_disabled() and "unreadable" in broken.inner_text()
        assert str(tmp_path) not in page.inner_text("#library-list")
        page.select_option("#library-list", "ui-state")
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert page.input_value("#library-list") == "ui-state" and page.is_visible("#tab-library")
        page.click("#library-load")
        expect(page.locator("#vector-status")).to_contain_text("Loaded “ui-state”")
        assert page.is_enabled("#generate")
        page.click("#library-delete")
        expect(page.locator("#vector-status")).to_contain_text("Deleted “ui-state”")
        # The list came with the DELETE answer and was shown before the status said so: no
        # waiting, the vector is already gone from it (the race behind an old flake).
        assert page.locator("#library-list option[value='ui-state']").count() == 0
        assert page.is_disabled("#generate") and page.is_disabled("#sweep")
        assert page.locator("#norms-chart rect").count() == 0
        checked_screenshot(page, "explorer-deleted")
    # The two refusals the server answered (400) are the only console errors.
    assert [p for p in problems if "status of 400" not in p] == [], problems
    assert hooked.active_hooks() == {}


def test_new_user_journey_in_chromium(served: tuple[str, HookedModel, dict[str, Any], Any],
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26, items 3-8, as a new user meets them: placeholders in empty charts, how many
    prompts of each side were used, layer specs, a fresh seed per click (shown, and repeatable),
    unknown-token warnings, per-column scores, the sweep charting the change from baseline with
    real tick labels (rates: 0-100% with Wilson intervals), and Export after Stop that holds
    what is needed to run it again. Every wait is on the page's state or a response."""
    expect = _playwright()[1]
    url, hooked, task, app = served
    problems: list[str] = []
    with browser_page(url, tmp_path, monkeypatch, problems) as page:
        # Empty charts say what will appear there.
        expect(page.locator("#norms-chart .placeholder")).to_contain_text("no vector yet")
        expect(page.locator("#sweep-chart .placeholder")).to_contain_text("no sweep yet")
        checked_screenshot(page, "explorer-empty")
        assert len(page.input_value("#prompt").split()) > 1  # a default prompt worth sweeping

        positive, negative = task["positive"], task["negative"][:2]
        page.fill("#positive", "\n".join(positive))
        page.fill("#negative", "\n".join(negative))
        page.click("#compute")
        expect(page.locator("#vector-status")).to_contain_text(
            f"{len(positive)} positive + 2 negative prompts used")
        assert len(page.locator("#norms-chart text.tick").all_text_contents()) >= 3

        # A layer spec in the one grammar: a range, highlighted in the norms chart.
        page.fill("#layers", "1-2")
        expect(page.locator("#norms-chart rect.selected")).to_have_count(2)
        page.fill("#prompt", task["prompt"])
        page.fill("#max-tokens", "10")
        page.fill("#temperature", "1")

        def run() -> tuple[str, str]:
            with page.expect_response(lambda r: r.url.endswith("/api/stream")):
                page.click("#generate")
            page.wait_for_selector("#outputs[data-done='1']")
            status = page.inner_text("#gen-status")
            seed = status.rsplit("seed ", 1)[1]
            return seed, page.inner_text("#out-1 .text")

        first, second = run(), run()
        assert first[0] != second[0], "the same seed on two clicks"
        page.fill("#seed", first[0])
        assert run() == first  # the shown seed repeats the run
        page.fill("#seed", "")
        # Each column is scored: perplexity, and on the built-in model its behaviours.
        scores = page.locator("#outputs .out .scores").all_inner_texts()
        assert len(scores) == 2 and all("perplexity" in s for s in scores), scores

        # Compare mode: a score per column, so degenerate text stands out.
        page.check("#compare-mode")
        page.fill("#compare-alphas", "-2, 2, 40")
        page.fill("#temperature", "0")
        page.click("#generate")
        page.wait_for_selector("#outputs[data-done='1']")
        scores = page.locator("#outputs .out .scores").all_inner_texts()
        assert len(scores) == 4 and all("perplexity" in s for s in scores), scores
        # Alpha 40 breaks the text: its column is flagged by its perplexity; the baseline never.
        assert "degenerate" not in scores[0], scores
        if hooked.model_id == DEFAULT_MODEL:  # (a tiny random model's text is noise anyway)
            assert "likely degenerate" in scores[3], scores
        checked_screenshot(page, "explorer-compare-scores")
        page.uncheck("#compare-mode")

        # A prompt of words the model does not know: the library's warning, on the page.
        page.fill("#prompt", "zzzq qqqz")
        page.click("#generate")
        page.wait_for_selector("#outputs[data-done='1']")
        expect(page.locator("#warnings")).to_contain_text("unknown")
        checked_screenshot(page, "explorer-warning")
        page.fill("#prompt", task["prompt"])

        # The projection sweep: the change from baseline, with tick labels in one format.
        page.select_option("#sweep-mode", "projection")
        page.fill("#alpha-value", str(task["alpha"]))
        page.click("#sweep")
        page.wait_for_selector("#sweep-chart path.line-steer")
        expect(page.locator("#sweep-title")).to_contain_text("steered − baseline")
        labels = page.locator("#sweep-chart text.tick").all_text_contents()
        assert len(labels) >= 3
        assert len({len(t.split(".")[1]) if "." in t else 0 for t in labels}) == 1, labels
        expect(page.locator("#sweep-metric")).to_contain_text("steered minus baseline")
        checked_screenshot(page, "explorer-projection-sweep")
        modes = page.locator("#sweep-mode option").all_inner_texts()
        if "behavior:happy" in modes:  # the built-in model: rates on a 0-100% axis, intervals
            page.select_option("#sweep-mode", "behavior:happy")
            with page.expect_response(lambda r: r.url.endswith("/api/sweep")):
                page.click("#sweep")
            page.wait_for_selector("#sweep-chart line.ci", state="attached")
            labels = page.locator("#sweep-chart text.tick").all_text_contents()
            assert labels[0] == "0%" and labels[-1] == "100%", labels
            expect(page.locator("#sweep-title")).to_contain_text("Wilson")
            checked_screenshot(page, "explorer-behaviour-sweep")

        # Export after Stop: the partial run, the seed used and how the vector was made.
        page.fill("#max-tokens", "256")
        page.fill("#temperature", "1")
        with hooked.hooks({"residuals_0": _slow}):
            page.click("#generate")
            page.wait_for_selector("#out-1 .text:not(:empty)")
            page.click("#stop")
            expect(page.locator("#gen-status")).to_contain_text("stopped · seed ")
        assert page.is_enabled("#export")
        with page.expect_download() as download:
            page.click("#export")
        exported = json.loads(Path(download.value.path()).read_text())
        generation = exported["generation"]
        assert generation["stopped"] is True
        seed = int(page.inner_text("#gen-status").rsplit("seed ", 1)[1])
        assert generation["request"]["seed"] == seed
        assert generation["request"]["prompt"] == task["prompt"]
        assert generation["request"]["layers"] == "1-2"
        assert exported["vector"]["source"]["computed_from"]["negative"] == negative
        assert exported["sweep"]["request"]["mode"] in modes
        checked_screenshot(page, "explorer-export-after-stop")
    assert [p for p in problems if "status of 4" not in p] == [], problems
    assert hooked.active_hooks() == {}
