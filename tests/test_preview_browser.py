"""The live preview page in a real headless Chromium (Debian's ``chromium``, driven by Playwright for
Python): the page loads, the video updates as frames change, captions appear in the list, text
from the model is shown as text (never as HTML), and one run of caption_sources with the small
real bundle reaches the browser.

Set ``VBEDGE_PREVIEW_SCREENSHOT=docs/img/preview.png`` to save the screenshot the docs show.
"""

import os
import shutil
import threading
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from test_preview import SIZE, clip_event, context, which_frame  # noqa: E402
from vbedge.outputs.preview import PreviewOutput  # noqa: E402
from vbedge.sources import SourceEvent, SourceStats  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MALICIOUS = 'stir the <img src=x onerror="window.pwned=1"> <b>soup</b>'


@pytest.fixture(autouse=True)
def no_preview_thread_left():
    """The preview's threads (named vbedge-preview-*) are gone after each test (Playwright keeps
    threads of its own, so the check is by name)."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t.name.startswith("vbedge-preview") and t.is_alive()]
        if not left:
            return
        time.sleep(0.02)
    pytest.fail(f"threads left running: {left}")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (bash .ci/system-deps.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    with sync_api.sync_playwright() as playwright:
        # launch() gives every browser a fresh temporary profile (--user-data-dir) of its own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1100, "height": 640})
    yield page
    page.close()


# The colour of the image's bottom-right corner (away from the caption), as the browser decoded it.
CORNER_JS = """img => {
  if (!img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const g = canvas.getContext("2d");
  g.drawImage(img, 0, 0);
  const d = g.getImageData(canvas.width - 40, canvas.height - 30, 40, 30).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  const n = d.length / 4;
  return [sum[2] / n, sum[1] / n, sum[0] / n];  // BGR, as OpenCV's frames
}"""


def frame_shown(page, clips):
    """(clip, frame) the page's video shows now, told by its colour (see test_preview.colour)."""
    bgr = page.locator("img[data-source='0']").evaluate(CORNER_JS)
    if bgr is None:
        return None
    corner = np.array(bgr).reshape(1, 1, 3) * np.ones((30, 40, 3))
    for clip in clips:
        frame = which_frame(corner, clip)
        if frame is not None:
            return clip, frame
    return None


class Feeder:
    """Writes a clip of solid-colour frames every ``period`` seconds from its own thread, as the
    pipeline's consumer does."""

    def __init__(self, preview, period=0.3):
        self.preview, self.period = preview, period
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-feeder")

    def _run(self):
        while not self._stop.is_set():
            i = self.written
            self.preview.write(clip_event(i, caption=MALICIOUS if i == 1 else None))
            self.written += 1
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_the_page_shows_live_video_captions_and_stats(page, tmp_path):
    stats = SourceStats(frames_read=120, disconnects=1, reconnects=1)
    preview = PreviewOutput("http://127.0.0.1:0")
    preview.open(context(stats=lambda source_id: stats, info={"backend": "onnxruntime", "precision": "fp32"}))
    try:
        preview.source_event("cam0", SourceEvent("reconnected", "cam0 is back after 1 attempt", attempt=1))
        with Feeder(preview) as feeder:
            page.goto(preview.url)
            page.wait_for_function("document.querySelectorAll('#captions li').length >= 3", timeout=20000)

            # The video updates: the browser decodes different frames over time.
            shown = set()
            deadline = time.monotonic() + 20
            while len(shown) < 3 and time.monotonic() < deadline:
                frame = frame_shown(page, range(feeder.written + 1))
                if frame is not None:
                    shown.add(frame)
                page.wait_for_timeout(50)
            assert len(shown) >= 3, f"the video showed only {shown}"

        newest = f"cut the onion {feeder.written - 1}"
        # The page catches up with the last event written (it polls /api/state).
        page.wait_for_function("t => document.querySelector('#captions li .text').textContent === t",
                               arg=newest, timeout=20000)
        page.screenshot(path=str(tmp_path / "preview.png"), full_page=True)
        texts = page.locator("#captions li").all_inner_texts()
        captions = page.locator("#captions li .text").all_inner_texts()
        # Newest first; every text is an event's, and the model's markup is shown as text.
        assert captions[0] == newest and len(captions) == feeder.written
        assert MALICIOUS in captions
        assert page.evaluate("window.pwned") is None
        assert page.locator("#captions img, #captions b:text('soup')").count() == 0
        first = next(t for t in texts if "cut the onion 2" in t)
        assert "cut 3.25" in first and "onion 4.00" in first and "confidence 0.50" in first
        assert "chop the carrot 2" in first and "[V:3] 7.50, [V:4] 6.00" in first
        facts = page.locator(".source .facts").inner_text()
        assert "reconnects 1" in facts and "s3d" in facts and "dropped frames" in facts
        assert "cam0 is back after 1 attempt" in page.locator(".source .reports").inner_text()
        assert "onnxruntime" in page.locator("#info").inner_text()
    finally:
        page.close()   # the browser's MJPEG connection ends before the server does
        preview.close()
    saved = os.environ.get("VBEDGE_PREVIEW_SCREENSHOT")
    if saved:
        shutil.copy(tmp_path / "preview.png", saved)


def test_caption_sources_reaches_the_browser(small_bundle, page, tmp_path):
    from test_pipeline import write_video

    from vbedge.caption_job import caption_sources

    video = write_video(tmp_path / "v.avi", 40, seed=3)
    preview = PreviewOutput("http://127.0.0.1:0")
    checked = []

    def on_event(event):  # the consumer's thread (this one): the server runs, captioning waits
        if checked:
            return
        page.goto(preview.url)
        page.wait_for_function(
            "t => [...document.querySelectorAll('#captions .text')].some(e => e.textContent === t)",
            arg=event.caption, timeout=20000)
        page.wait_for_function(
            f"() => document.querySelector(\"img[data-source='0']\")?.naturalWidth === {SIZE[0]}",
            timeout=20000)
        checked.append(page.locator(".source h2").inner_text())

    result = caption_sources(small_bundle, str(video), [preview], backend="onnxruntime",
                             template="caption", stable_clips=1, on_event=on_event)
    assert result.events == 3 and checked == [str(video)]
    # Captioning ended, the server closed: the page says so.
    page.wait_for_function("document.getElementById('conn').classList.contains('down')", timeout=20000)
