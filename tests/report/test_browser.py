"""The page as a person sees it: headless Chromium loads every image and fetches nothing from the network.

Needs Chromium (``.ci/run`` installs Debian's ``chromium`` and sets ``CURVKIT_REQUIRE_BROWSER=1``,
which turns a missing browser into a failure; elsewhere the test is skipped without one). The
screenshot is kept in pytest's temporary directory; with ``CURVKIT_SCREENSHOT=path`` it is also
copied there (``docs/images/report.png`` is made that way).
"""

from __future__ import annotations

import os
import shutil

import pytest
from browser import Browser, find_chromium

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = find_chromium()
    if executable is None:
        if os.environ.get("CURVKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("CURVKIT_REQUIRE_BROWSER=1 but no Chromium found (apt-get install chromium).")
        pytest.skip("no Chromium on this machine (.ci/run installs it)")
    return executable


def test_page_in_a_browser(chromium, default_report, tmp_path_factory):
    out, metrics = default_report
    index = out / "index.html"
    screenshot = tmp_path_factory.mktemp("browser") / "report.png"
    with Browser(chromium) as browser:
        browser.open(index)
        images = browser.evaluate(
            "Array.from(document.images).map(i => ({file: i.dataset.file, complete: i.complete, "
            "width: i.naturalWidth, height: i.naturalHeight}))"
        )
        first_heading = browser.evaluate("document.querySelector('h2').textContent")
        requested = browser.requested_urls()
        failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
        browser.screenshot(screenshot)
    assert sorted(image["file"] for image in images) == sorted(f["file"] for f in metrics["figures"])
    for image in images:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
    assert first_heading == "Summary"
    assert requested[0] == index.resolve().as_uri()
    assert all(url.startswith("data:image/png;base64,") for url in requested[1:]), [u[:80] for u in requested]
    assert failed == []
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE) and screenshot.stat().st_size > 10_000
    if os.environ.get("CURVKIT_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["CURVKIT_SCREENSHOT"])
