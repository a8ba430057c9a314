"""`jointdit demo` in a real headless browser: Debian's chromium driven by Playwright (nothing
downloads a browser). Upload or draw an image, generate, and the page plays a video as long as
the clip, with its sound; every bad input shows its message and the next request is served.
Screenshots land in reports/test-artifacts/."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import BIN, REPO, free_port
from tests.serving_fixtures import serving
from tests.serving_inputs import png_bytes, write_bad_files
from tests.tiny_project import TINY_CLIP

pytest_plugins = ("tests.serving_fixtures",)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "reports" / "test-artifacts"
SHOWN = (
    "() => { const v = document.querySelector('#video');"
    " return (!v.hidden && v.readyState >= 1) || !document.querySelector('#error').hidden }"
)


@pytest.fixture(scope="module")
def demo(registered, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    cmd = [str(BIN / "jointdit"), "demo", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serving("jointdit demo", cmd, log, url + "/api/config", cwd=registered.root,
                 env=registered.env()):  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(demo)
    page.wait_for_selector("body[data-ready=true]")
    yield page
    page.close()


def generate(page) -> None:
    page.click("#generate")
    page.wait_for_function(SHOWN, timeout=600_000)


def shown_error(page) -> str | None:
    return page.evaluate("() => { const e = document.querySelector('#error');"
                         " return e.hidden ? null : e.textContent }")  # fmt: skip


def test_upload_generate_and_play_the_clip_with_its_sound(page, tmp_path):
    image = tmp_path / "drawn.png"
    image.write_bytes(png_bytes(seed=5))
    page.set_input_files("#file", str(image))
    page.fill("#prompt", "a red ball bouncing")
    page.fill("#seed", "3")
    page.fill("#steps", "2")
    page.select_option("#guidance", "cfg")
    generate(page)
    assert shown_error(page) is None
    duration = page.evaluate("() => document.querySelector('#video').duration")
    assert duration == pytest.approx(TINY_CLIP["duration_s"], abs=1e-3)
    assert "seed 3, 2 steps, cfg, euler; models:/jointdit@champion" in page.inner_text("#info")
    assert page.evaluate("() => document.querySelector('#sheet').naturalWidth") > 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo_generated.png"), full_page=True)
    # played to its end: the browser decoded both its pictures and its sound
    decoded = page.evaluate("""async () => {
        const v = document.querySelector('#video');
        v.muted = true;
        await v.play();
        await new Promise((done) => { if (v.ended) done(); else v.onended = done; });
        return [v.webkitVideoDecodedByteCount, v.webkitAudioDecodedByteCount];
    }""")
    assert decoded[0] > 0 and decoded[1] > 0, decoded


def test_draw_an_image_and_choose_another_alias(page):
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + 40, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + 200, box["y"] + 180, steps=10)
    page.mouse.up()
    assert page.is_checked("input[value=draw]")
    assert sorted(page.eval_on_selector_all("#alias option", "os => os.map(o => o.value)")) == [
        "candidate", "champion"]  # fmt: skip
    page.select_option("#alias", "candidate")
    page.fill("#steps", "1")
    generate(page)
    assert shown_error(page) is None
    assert page.inner_text("#info").endswith("models:/jointdit@candidate")


def test_each_bad_input_shows_its_message_and_the_next_request_is_served(page, tmp_path):
    files = write_bad_files(tmp_path / "bad")
    phrases = {
        "not_an_image": "not a PNG, JPEG or WebP image",
        "truncated_png": "truncated or corrupt PNG",
        "one_pixel": "1x1 pixels is too small",
        "bomb": "decompression bomb",
    }
    for name, phrase in phrases.items():
        page.set_input_files("#file", str(files[name]))
        generate(page)
        assert phrase in (shown_error(page) or ""), name
    page.screenshot(path=str(ARTIFACTS / "demo_refused.png"), full_page=True)
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes())
    page.set_input_files("#file", str(good))
    for field, value, phrase in (("#prompt", "la " * 34_000, "prompt is 102,000 characters"),
                                 ("#steps", "0", "steps must be between 1 and"),
                                 ("#steps", "1000000", "got 1,000,000")):  # fmt: skip
        page.fill("#prompt", "")
        page.fill("#steps", "2")
        page.fill(field, value)
        generate(page)
        assert phrase in (shown_error(page) or ""), field
    # the page offers only known choices: other values reach the server from other clients
    for fields, status, phrase in (({"guidance": "loud"}, 400, "unknown guidance 'loud'"),
                                   ({"sampler": "dpm"}, 400, "unknown sampler 'dpm'"),
                                   ({"alias": "nope"}, 404, "alias nope not found")):  # fmt: skip
        answer = page.evaluate("""async (fields) => {
            const r = await fetch('api/generate', {method: 'POST',
                body: JSON.stringify({image: 'x', ...fields})});
            return [r.status, (await r.json()).error];
        }""", fields)  # fmt: skip
        assert answer[0] == status and phrase in answer[1], (fields, answer)
    page.fill("#prompt", "")
    page.fill("#steps", "2")
    generate(page)
    assert shown_error(page) is None
    assert page.evaluate("() => document.querySelector('#video').duration") == pytest.approx(
        TINY_CLIP["duration_s"], abs=1e-3
    )


def test_a_model_that_does_not_exist_stops_the_demo_naming_it(registered):
    cmd = [str(BIN / "jointdit"), "demo", "--port", str(free_port()),
           "--model-uri", "models:/jointdit@nope"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=registered.root, env=registered.env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 1
    assert "jointdit demo: error: model models:/jointdit@nope" in proc.stderr
    assert "alias nope not found" in proc.stderr and "Traceback" not in proc.stderr
