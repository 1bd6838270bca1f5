"""A real headless Chromium (Debian's ``/usr/bin/chromium``) driven by playwright, for the web pages' tests.

``browser`` is one Chromium per test module (not per session: playwright's sync API keeps an event loop
running in the main thread while it lives, which the other tests would see), launched by playwright with a
fresh temporary profile (user data dir) of its own; ``page`` is a new browser context (no cookies, no cache)
and page per test. Playwright never
downloads a browser here (no ``playwright install``). Without chromium or playwright the tests FAIL and say
what to install: a browser test that skips would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("DISPY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: install it with "
                    f"'apt-get install chromium' (.ci/run does so as root), or set DISPY_TEST_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the playwright package: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                              timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh context (its own cookies), 1280x800, that fails a test on a JavaScript error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, ignore_https_errors=False)
    context.set_default_timeout(20_000)
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield new_page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA PNG (what Chromium's screenshots are) into ``(width, height, rows)``,
    each row ``width * channels`` bytes, so a test can look at what was drawn without an imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6), f"PNG depth {depth} colour type {color} not supported"
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        filter_type = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if filter_type == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filter_type == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filter_type == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif filter_type == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def distinct_colours(data: bytes) -> int:
    """How many different colours a PNG has: 1 for a blank image."""
    width, _, rows = png_pixels(data)
    channels = len(rows[0]) // width if rows else 3
    seen = {row[i:i + channels] for row in rows for i in range(0, len(row), channels)}
    return len(seen)


@pytest.fixture
def png_colours() -> Any:
    """``png_colours(png_bytes) -> int``: how many colours a screenshot has (1: blank)."""
    return distinct_colours
