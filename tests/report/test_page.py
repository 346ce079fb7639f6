"""``index.html`` embeds every figure the report wrote and fetches nothing; ``metrics.json`` lists them."""

from __future__ import annotations

import base64
import re
from html import escape
from html.parser import HTMLParser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Images(HTMLParser):
    """Collects every tag's attributes that may name a resource."""

    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.resources: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        self.resources += [attributes[key] for key in ("src", "href", "srcset", "data") if key in attributes]


def test_page_embeds_every_png(default_report):
    out, metrics = default_report
    parser = _Images()
    parser.feed((out / "index.html").read_text())
    pngs = sorted(path.name for path in out.glob("*.png"))
    listed = sorted(figure["file"] for figure in metrics["figures"])
    embedded = sorted(image["data-file"] for image in parser.images)
    assert pngs == listed == embedded
    assert {"eigenvalues.png", "traces.png", "spectral_densities.png", "dense_matrices.png"} <= set(pngs)
    for image in parser.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        content = (out / image["data-file"]).read_bytes()
        assert content.startswith(PNG_SIGNATURE)
        assert base64.b64decode(image["src"][len(prefix) :]) == content
        assert image["alt"]  # the caption


def test_page_refers_to_nothing_outside(default_report):
    out, _ = default_report
    page = (out / "index.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert all(resource.startswith(("data:", "#")) for resource in parser.resources)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page


def test_page_reads_summary_first(default_report):
    out, metrics = default_report
    page = (out / "index.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0] == "Summary"
    assert headings[1:] == [analysis["title"] for analysis in metrics["analyses"].values()]
    assert f"{metrics['analyses']['eigenvalues']['numbers']['hessian']['eigenvalues'][0]:.6g}" in page
    for analysis in metrics["analyses"].values():  # each status that is not ok is shown with its reason
        if analysis["status"] != "ok":
            assert f"<b>{analysis['status']}</b>: {escape(analysis['message'])}" in page
    for figure in metrics["figures"]:
        assert f"<figcaption>{escape(figure['caption'])}</figcaption>" in page
    assert "curvkit report --model mlp" in page
