"""The HTML report in a real browser: headless Chromium opens report.html from disk with the network
blocked, and the test asserts no request beyond the file itself, no failed request, no console error, no
script, every <svg> drawn with a non-zero size, every table-of-contents anchor resolving; it takes a
full-page screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated
JSON on file descriptors 3 and 4), so no extra Python package and no open port is needed. The network
is blocked three ways: a proxy that does not exist, a host resolver that resolves nothing, and
``Network.setBlockedURLs`` for every network scheme; each request the page makes is recorded anyway.
A negative control proves the harness sees what it must reject.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from report_fixtures import EVIL_LABEL, EVIL_LAYER, fixed_result, real_audit_report, real_report

from initdiag import report

pytestmark = pytest.mark.tools

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
                 if p), None)
TIMEOUT_S = 30.0
WIDTH = 1000
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]
PROBE = """(() => {
  const svgs = [...document.querySelectorAll('svg')].filter(s => !s.parentElement.closest('svg'))
    .map(s => { const r = s.getBoundingClientRect(); return {width: r.width, height: r.height}; });
  const toc = [...document.querySelectorAll('nav#toc a')].map(a => a.getAttribute('href'));
  const anchors = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const missing = anchors.filter(h => !h.startsWith('#') || !document.getElementById(h.slice(1)));
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  return {svgs, toc, missing, scripts: document.scripts.length,
          duplicateIds: ids.filter((id, i) => ids.indexOf(id) !== i),
          images: [...document.images].map(i => i.getAttribute('src')),
          handlers: [...document.querySelectorAll('*')].flatMap(e => [...e.attributes])
                      .filter(a => a.name.startsWith('on')).map(a => a.name),
          sections: [...document.querySelectorAll('main > section')].map(s => s.id),
          text: document.body.innerText,
          svgText: [...document.querySelectorAll('svg text')].map(t => t.textContent).join('\\n'),
          height: document.documentElement.scrollHeight};
})()"""


@dataclass
class PageVisit:
    """What one page load produced."""

    url: str
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""

    @property
    def foreign_requests(self) -> list[str]:
        """Requests for anything but the page itself (inline ``data:`` URLs are part of the page)."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


class Browser:
    """Headless Chromium, spoken to over the DevTools protocol on a pipe."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        to_child_r, self._out = os.pipe()
        self._in, from_child_w = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become fds 3 (commands) and 4 (replies)
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--disable-dev-shm-usage", "about:blank"]
        self.log = profile / "chromium.log"
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(args, preexec_fn=wire, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self._pending: list[dict[str, Any]] = []

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, EOFError):
            self.call("Browser.close", timeout=5)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        os.close(self._out)
        os.close(self._in)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from Chromium (its log: {self.log})")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise EOFError(f"Chromium closed the DevTools pipe (its log: {self.log})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = TIMEOUT_S) -> dict[str, Any]:
        """Send a command and wait for its answer; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self._pending.append(reply)

    def events_until(self, session: str, method: str, timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
        """Every event of ``session`` up to and including the first ``method`` event."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            event = self._pending.pop(0) if self._pending else self._receive(deadline)
            if event.get("sessionId") != session:
                continue
            seen.append(event)
            if event.get("method") == method:
                return seen

    def drain(self, session: str) -> list[dict[str, Any]]:
        """The events of ``session`` received so far (after a command round trip they are all in)."""
        self.call("Runtime.evaluate", {"expression": "0"}, session)
        mine = [e for e in self._pending if e.get("sessionId") == session]
        self._pending = [e for e in self._pending if e.get("sessionId") != session]
        return mine

    def visit(self, path: Path, screenshot: bool = False) -> PageVisit:
        """Load ``path`` in a fresh tab with the network blocked; record requests, failures, errors."""
        visit = PageVisit(path.resolve().as_uri())
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Network", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=session)
            self.call("Network.setBlockedURLs", {"urls": BLOCKED}, session)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": WIDTH, "height": 800, "deviceScaleFactor": 1, "mobile": False}, session)
            self.call("Page.navigate", {"url": visit.url}, session)
            events = self.events_until(session, "Page.loadEventFired")
            visit.probe = self.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True},
                                    session)["result"]["value"]
            if screenshot:
                size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                shot = self.call("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session)
                visit.screenshot = base64.b64decode(shot["data"])
            events += self.drain(session)
        finally:
            self.call("Target.closeTarget", {"targetId": target})
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                visit.failed.append(f"{params.get('errorText')} ({params.get('blockedReason', '')})")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                visit.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                visit.errors.append(str(params["exceptionDetails"].get("text")))
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                visit.errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
        return visit


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    chrome = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        chrome.call("Browser.getVersion", timeout=60)  # first start can be slow on a loaded machine
        yield chrome
    finally:
        chrome.close()


def assert_clean(visit: PageVisit) -> None:
    """The checks every report page must pass in the browser."""
    probe = visit.probe
    assert visit.foreign_requests == [], "the report asked for something beyond itself"
    assert visit.failed == [], "a request failed"
    assert visit.errors == [], "console errors or warnings"
    assert probe["scripts"] == 0 and probe["handlers"] == [] and probe["images"] == []
    assert probe["svgs"], "no figure"
    for i, box in enumerate(probe["svgs"]):
        assert box["width"] > 50 and box["height"] > 50, f"svg #{i} is drawn at {box}"
    assert probe["toc"] and all(h.startswith("#") for h in probe["toc"])
    assert probe["missing"] == [], "links that resolve to no element"
    assert probe["duplicateIds"] == [], "an id used twice makes anchors ambiguous"
    assert probe["toc"] == [f"#{s}" for s in probe["sections"]], "the contents list every section, in order"


def check_screenshot(visit: PageVisit, path: Path) -> None:
    from PIL import Image

    path.write_bytes(visit.screenshot)
    image = Image.open(io.BytesIO(visit.screenshot))
    assert image.width == WIDTH and image.height >= visit.probe["height"] - 1
    histogram = image.convert("L").histogram()
    assert sum(histogram[:100]) > 0, "the screenshot shows no dark pixel"
    assert sum(histogram[:200]) > 0.01 * image.width * image.height, "the page is nearly blank"


def test_cnn_report_in_browser(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = real_report(tmp_path_factory)
    visit = browser.visit(out / "report.html", screenshot=True)
    assert_clean(visit)
    probe = visit.probe
    assert probe["sections"] == ["summary", "accuracy", "loss", "signal", "units", "findings", "methods",
                                 "provenance"]
    # accuracy, training loss, forward, backward, a heatmap pair each, and page 1's two copies
    assert len(probe["svgs"]) == 1 + 1 + 2 + 2 + 2
    assert "Verdict summary" in probe["text"] and "Accuracy comparison" in probe["text"]
    for text in ("zeros", "he", "theory (thin dashed)", "0 Conv2d", "11 Linear", "training step", "epoch"):
        assert text in probe["svgText"], f"{text!r} is not in the figures"
    check_screenshot(visit, out / "browser-screenshot.png")


def test_audit_report_in_browser(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = real_audit_report(tmp_path_factory)
    visit = browser.visit(out / "report.html", screenshot=True)
    assert_clean(visit)
    assert "layers" in visit.probe["sections"] and "accuracy" not in visit.probe["sections"]
    assert EVIL_LAYER in visit.probe["text"], "a hostile layer name shows as text"
    check_screenshot(visit, out / "browser-screenshot.png")


def test_hostile_names_stay_text_in_browser(browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(report.render_html(report.build_context(fixed_result(evil=True))), encoding="utf-8")
    visit = browser.visit(path)
    assert_clean(visit)
    assert EVIL_LAYER in visit.probe["text"] and EVIL_LABEL in visit.probe["text"]


def test_harness_sees_what_it_must_reject(browser: Browser, tmp_path: Path) -> None:
    """Negative control: a page that breaks every rule is caught on every count."""
    (tmp_path / "other.css").write_text("p { color: red }")
    path = tmp_path / "bad.html"
    path.write_text('<html><head><link rel="stylesheet" href="other.css"></head><body>'
                    '<nav id="toc"><a href="#nowhere">x</a></nav><img src="http://example.com/x.png">'
                    '<svg width="0" height="0"></svg><script>console.error("boom")</script></body></html>')
    visit = browser.visit(path)
    assert any(u.endswith("/other.css") for u in visit.foreign_requests)
    assert "http://example.com/x.png" in visit.foreign_requests
    assert visit.failed and any("boom" in e for e in visit.errors)
    assert visit.probe["missing"] == ["#nowhere"] and visit.probe["scripts"] == 1
    assert visit.probe["svgs"] == [{"width": 0, "height": 0}]
