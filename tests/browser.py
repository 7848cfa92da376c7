"""Headless Chromium for browser tests, driven by Playwright but using Debian's ``chromium`` package.

Why not Playwright's own browser: ``playwright install`` downloads it from a CDN, which CI and the
dev machines cannot reach; Debian's package comes through apt like every other system dependency
(``.ci/run`` installs it). A missing browser is an error, not a skip: a skipped browser test would
let the search page break unnoticed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. --disable-dev-shm-usage:
# containers often have a tiny /dev/shm, which crashes renderers. --disable-gpu: there is none.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
DEFAULT_TIMEOUT_MS = 15_000
# A cold Chromium start on a busy 2-core runner can take several seconds.
LAUNCH_TIMEOUT_MS = 60_000


def chromium_path() -> str:
    """The Chromium binary to drive: ``$CHROMIUM`` if set, else Debian's ``/usr/bin/chromium``."""
    override = os.environ.get("CHROMIUM")
    candidates = (override,) if override else CHROMIUM_CANDIDATES
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = None if override else shutil.which("chromium")
    if found:
        return found
    raise RuntimeError(
        f"Chromium not found (looked for {', '.join(c for c in candidates if c)}). Browser tests use the "
        "distribution's package, not a Playwright download: run `sudo apt-get install -y chromium` "
        "(or set $CHROMIUM to a Chromium binary)."
    )


@contextmanager
def headless_page(base_url: str, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Iterator[Page]:
    """A fresh page in a fresh headless Chromium; everything is closed when the block exits.

    ``base_url`` becomes the context's base URL, so ``page.goto(base_url)`` or a relative
    ``page.goto("static/app.js")`` both work. Every wait is bounded by ``timeout_ms``, so a broken
    page fails the test in seconds instead of hanging it.
    """
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
            context.set_default_timeout(timeout_ms)
            context.set_default_navigation_timeout(timeout_ms)
            try:
                yield context.new_page()
            finally:
                context.close()
        finally:
            browser.close()


def wait_until_images_load(page: Page, selector: str, timeout_s: float = 15.0) -> None:
    """Poll from Python until every image matching ``selector`` decoded.

    ``page.wait_for_function`` is avoided on purpose: when its predicate is not true at once it polls
    with an eval inside the page, which the search page's CSP (no 'unsafe-eval') refuses.
    """
    deadline = time.monotonic() + timeout_s
    while not all(page.locator(selector).evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")):
        assert time.monotonic() < deadline, f"images {selector} did not load within {timeout_s:.0f} s"
        time.sleep(0.1)
