"""`cai report` rendered in a real headless Chromium (Debian's ``chromium``), driven over the
Chrome DevTools protocol: no console errors, every plot drawn, the sample browser filters.
A screenshot is saved in the test's tmp dir (and copied to ``$CAI_REPORT_SCREENSHOT`` if set)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.cli import app
from tests.quality_runs import scripted_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


class Page:
    """The smallest CDP client: one page target over a websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "")[:500])
        return found


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="cai-chromium-")
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("chromium did not start its DevTools endpoint")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    yield port
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(profile, ignore_errors=True)


def _open(port: int, url: str) -> Page:
    import urllib.request

    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
    page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
    for domain in ("Page", "Runtime", "Log"):
        page.call(f"{domain}.enable")
    page.call("Page.navigate", url=url)
    page.wait_for("Page.loadEventFired")
    return page


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    import asyncio

    root = tmp_path_factory.mktemp("report")
    asyncio.run(scripted_run(root / "run-a"))
    asyncio.run(scripted_run(root / "run-b", seed=1))
    train = root / "dpo"
    train.mkdir()
    log = [
        {"step": s, "loss": 0.7 - 0.05 * s, "rewards/margins": 0.1 * s, "rewards/accuracies": min(1, 0.5 + 0.1 * s)}
        for s in range(1, 8)
    ] + [{"step": 7, "eval_loss": 0.45}]
    (train / "trainer_log.json").write_text(json.dumps(log))
    out = root / "report.html"
    result = CliRunner().invoke(
        app, ["report", str(root / "run-a"), str(root / "run-b"), str(train), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_report_is_self_contained(report_file: Path):
    page = report_file.read_text(encoding="utf-8")
    # nothing fetched at view time (XML namespace names are identifiers, never fetched)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//|<link|@import|url\(\s*[\"']?(?:https?:)?//", page)
    assert "<script src" not in page and page.count("<svg") >= 8
    assert (report_file.parent / "run-a" / "report.json").exists()


@needs_chromium
def test_report_in_headless_chromium(browser: int, report_file: Path, tmp_path: Path):
    page = _open(browser, report_file.as_uri())
    plots = page.js("""[...document.querySelectorAll('figure.plot')].map(f => {
        const s = f.querySelector('svg'); const r = s ? s.getBoundingClientRect() : {width: 0, height: 0};
        return {name: f.dataset.plot, w: r.width, h: r.height, marks: s ? s.querySelectorAll('path, use, rect').length : 0};
    })""")
    names = [p["name"] for p in plots]
    for name in (
        "funnel",
        "dropped",
        "principles",
        "lengths",
        "margins",
        "throughput",
        "training-loss",
        "training-rewards",
    ):
        assert name in names, names
    assert names.count("funnel") == 2  # two runs side by side
    for p in plots:
        assert p["w"] > 100 and p["h"] > 50 and p["marks"] > 5, p
    assert "Runs side by side" in page.js("document.body.innerText")
    assert "2 preference pairs kept" in page.js("document.querySelector('.headline').innerText")

    visible = "[...document.querySelectorAll('.sample')].filter(e => e.style.display !== 'none')"
    total = page.js(f"{visible}.length")
    assert total == 10  # 5 samples x 2 runs

    def choose(select: str, value: str) -> list[str]:
        page.js(
            f"(() => {{ const s = document.getElementById('{select}'); s.value = {json.dumps(value)}; "
            "s.dispatchEvent(new Event('change')); })()"
        )
        return page.js(f"{visible}.map(e => e.dataset.outcome + '/' + e.dataset.reasons)")

    shown = choose("f-reason", "repeated_ngrams")
    assert len(shown) == 2 and all("|repeated_ngrams|" in s for s in shown)
    choose("f-reason", "")
    shown = choose("f-outcome", "pair kept")
    assert len(shown) == 4 and all(s.startswith("pair kept/") for s in shown)
    assert page.js("document.getElementById('shown').textContent") == "showing 4 of 10 samples"
    assert page.js("document.querySelectorAll('.sample ins').length") > 0  # the word diff
    choose("f-outcome", "")
    choose("f-run", "run-b")
    assert page.js(f"{visible}.length") == 5
    choose("f-run", "")

    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"])
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("CAI_REPORT_SCREENSHOT"):
        Path(os.environ["CAI_REPORT_SCREENSHOT"]).write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
    assert page.errors() == []


def test_report_bad_source_is_a_clear_error(tmp_path: Path):
    # a folder report cannot read is bad input: the CLI boundary exits 2 (it was 1 before the
    # boundary existed) with the error's own message
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and f"error: {tmp_path / 'nope'}: no such folder" in result.output
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "trainer_log.json").write_text("{bad")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "t")])
    assert result.exit_code == 2 and "trainer_log.json: not JSON (line 1" in result.output
    assert "Traceback" not in result.output
