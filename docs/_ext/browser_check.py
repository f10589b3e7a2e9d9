"""Open built pages in headless Chromium: no broken image, no broken link; screenshots.

    python docs/_ext/browser_check.py [--site docs/_build/html] [--out docs/_screenshots]
        [PAGE ...]

By default it opens the home page, one API page and one tutorial. For each page it waits
for the load event, asks the browser for every image (one that failed to load, or drew
nothing, is broken) and every link, and checks each link to the site itself: the file it
points to must exist, and so must the anchor (``#name``) inside it. Links to other sites
are counted, not followed (the build machine has no internet). It saves a screenshot
of each page as ``<out>/<page>.png``. Chromium is Debian's ``chromium`` package, driven
through its DevTools protocol (with tornado's websocket client, installed with the docs
extra). Exit status 1 when anything is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
PAGES = ("index.html", "api/fnlearn.html", "tutorials/from-keras.html")
WIDTH, HEIGHT = 1280, 1000
# What the page reports: images that did not load, and every link's target.
REPORT = """JSON.stringify({
  broken_images: [...document.images]
      .filter(image => !image.complete || image.naturalWidth === 0)
      .map(image => image.getAttribute("src")),
  images: document.images.length,
  links: [...document.querySelectorAll("a[href]")].map(a => a.href),
  title: document.title,
})"""


def chromium() -> str:
    """The Chromium executable.

    Raises:
      FileNotFoundError: Chromium is not installed (``apt-get install chromium``).
    """
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Chromium on PATH: apt-get install -y chromium")


def start_browser(profile: Path) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium; return it and its DevTools HTTP address."""
    process = subprocess.Popen(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
         "--allow-file-access-from-files", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        match = re.search(r"DevTools listening on ws://([\d.:]+)/", line)
        if match:
            return process, f"http://{match.group(1)}"
    raise RuntimeError("Chromium exited before it listened for DevTools")


class Tab:
    """One browser tab, spoken to over the DevTools protocol."""

    def __init__(self, connection):
        self.connection = connection
        self.next_id = 0
        self.events: list[dict] = []

    async def call(self, method: str, **params) -> dict:
        """Send a command; return its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        await self.connection.write_message(json.dumps(
            {"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.connection.read_message(), 60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    async def wait_for(self, event: str, timeout: float = 60) -> None:
        """Wait until the event arrives (or has arrived)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(e.get("method") == event for e in self.events):
            message = await asyncio.wait_for(self.connection.read_message(),
                                             max(0.1, deadline - loop.time()))
            self.events.append(json.loads(message))
        self.events.clear()


def link_problem(link: str, site: Path) -> str | None:
    """Why a link to the site is broken (None if it is fine or leads elsewhere)."""
    url = urllib.parse.urlsplit(link)
    if url.scheme != "file":
        return None
    target = Path(urllib.parse.unquote(url.path))
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"{link}: no such file"
    if url.fragment and target.suffix == ".html":
        html = target.read_text(errors="replace")
        fragment = urllib.parse.unquote(url.fragment)
        if not re.search(rf"""\b(id|name)=["']{re.escape(fragment)}["']""", html):
            return f"{link}: no anchor #{fragment} in {target.relative_to(site)}"
    return None


async def check_page(address: str, site: Path, page: str, out: Path) -> list[str]:
    """Load one page, check its images and links, save its screenshot; the problems."""
    from tornado.websocket import websocket_connect

    request = urllib.request.Request(f"{address}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        target = json.load(response)
    connection = await websocket_connect(target["webSocketDebuggerUrl"],
                                         max_message_size=256 * 1024 * 1024)
    tab = Tab(connection)
    try:
        await tab.call("Page.enable")
        await tab.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                       deviceScaleFactor=1, mobile=False)
        await tab.call("Page.navigate", url=(site / page).as_uri())
        await tab.wait_for("Page.loadEventFired")
        result = await tab.call("Runtime.evaluate", expression=REPORT, returnByValue=True)
        report = json.loads(result["result"]["value"])
        shot = await tab.call("Page.captureScreenshot", format="png")
        path = out / (page.replace("/", "_").removesuffix(".html") + ".png")
        path.write_bytes(base64.b64decode(shot["data"]))
    finally:
        connection.close()
    problems = [f"{page}: broken image {src}" for src in report["broken_images"]]
    internal = [link for link in report["links"] if link.startswith("file:")]
    problems += [f"{page}: broken link {problem}" for link in sorted(set(internal))
                 if (problem := link_problem(link, site))]
    print(f"{page}: '{report['title']}', {report['images']} images, "
          f"{len(internal)} links to the site, {len(report['links']) - len(internal)} "
          f"elsewhere (not followed); {len(problems)} problems; screenshot {path}")
    return problems


async def check(site: Path, pages: list[str], out: Path) -> list[str]:
    """Check every page in one browser."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        process, address = start_browser(Path(profile))
        try:
            problems = []
            for page in pages:
                problems += await check_page(address, site, page, out)
            return problems
        finally:
            process.terminate()
            process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    """Check the pages; print the problems; exit status 1 if there are any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", default=list(PAGES),
                        help="pages, relative to the site (default: %(default)s)")
    parser.add_argument("--site", type=Path, default=DOCS / "_build" / "html")
    parser.add_argument("--out", type=Path, default=DOCS / "_screenshots")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    missing = [page for page in args.pages if not (site / page).is_file()]
    if missing:
        print(f"not built: {', '.join(missing)} under {site} (build the site first)")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    problems = asyncio.run(check(site, args.pages, args.out))
    for problem in problems:
        print("BROKEN", problem)
    print(f"{len(args.pages)} pages checked in Chromium, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("NO_AT_BRIDGE", "1")
    sys.exit(main())
