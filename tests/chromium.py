"""Render an HTML file in headless Chromium (Debian's `chromium`): a screenshot, the console and
the network log. Used by tests/test_report.py and by `make report-screenshot`:

    python -m tests.chromium OUT/report.html OUT/report.png
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Chromium's own requests (update checks, accounts) have no page origin as initiator; a request of
# the page itself has the file's origin ("null" for file://).
BROWSER_INITIATOR = "not an origin"


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Rendered:
    png: Path
    console: list[str]  # console messages of the page (CSP violations, script errors)
    page_requests: list[str]  # URLs the page asked the network stack for


def render(html: Path, png: Path, width: int = 1280, height: int = 4000, timeout_s: float = 180) -> Rendered:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        netlog = Path(tmp) / "netlog.json"
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={tmp}/profile", "--enable-logging=stderr", "--v=0",
                   f"--log-net-log={netlog}", "--hide-scrollbars", f"--screenshot={png}",
                   f"--window-size={width},{height}", Path(html).resolve().as_uri()]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not png.is_file():
            raise RuntimeError(f"chromium failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
        return Rendered(png, console, page_requests(netlog))


def page_requests(netlog: Path) -> list[str]:
    """URLs of requests started on behalf of a page (not Chromium's own background requests)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log.get("events", []):
        params = event.get("params", {})
        if event["type"] == start and params.get("initiator", BROWSER_INITIATOR) != BROWSER_INITIATOR:
            urls.append(params.get("url", "?"))
    return urls


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m tests.chromium PAGE.html SHOT.png", file=sys.stderr)
        return 2
    rendered = render(Path(argv[0]), Path(argv[1]), height=6000)  # the whole demo report
    for line in rendered.console + [f"request: {url}" for url in rendered.page_requests]:
        print(line)
    print(f"screenshot: {rendered.png.resolve()}")
    return 1 if rendered.console or rendered.page_requests else 0


if __name__ == "__main__":
    sys.exit(main())
