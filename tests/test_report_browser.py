"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``, installed by ``make setup``).

A copy of the report gets a script that, once the page has loaded, writes every
image's natural width into the DOM; Chromium's ``--dump-dom`` returns it. An
image that fails to decode has width 0.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from transferkit.api import compare, fit

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (make setup installs Debian's chromium)")

PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-images', "
         "JSON.stringify([...document.images].map(i => i.complete ? i.naturalWidth : -1))));</script>")


def image_widths(report, tmp_path) -> tuple[int, list[int]]:
    """(number of <img> tags in the report, natural width of each image as Chromium loaded it)."""
    source = report.read_text(encoding="utf-8")
    probe = tmp_path / f"probe-{report.parent.name}.html"
    probe.write_text(source.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, f"the page did not finish loading in Chromium: {dom[:300]!r}"
    return len(re.findall(r"<img\b", source)), json.loads(html.unescape(found.group(1)))


def test_fit_report_images_all_load_in_chromium(tiny_images, tmp_path):
    fit("small-cnn:16", tiny_images, "finetune", epochs=2, out=tmp_path / "bundle", progress=False)
    n, widths = image_widths(tmp_path / "bundle" / "report.html", tmp_path)
    assert n >= 3 and len(widths) == n  # learning curve, confusion matrix, features by class
    assert all(w > 100 for w in widths), widths


def test_compare_report_images_all_load_in_chromium(tiny_images, tmp_path):
    compare("small-cnn:16", tiny_images, ["finetune"], seeds=2, labels_per_class=[4, 8], baselines=[],
            epochs=1, out=tmp_path / "cmp", progress=False)
    n, widths = image_widths(tmp_path / "cmp" / "report.html", tmp_path)
    assert n >= 1 and len(widths) == n
    assert all(w > 100 for w in widths), widths


def test_probe_detects_a_broken_image(tmp_path):
    """The check can fail: an image whose data is not a PNG has width 0."""
    page = tmp_path / "bad" / "report.html"
    page.parent.mkdir()
    page.write_text('<html><body><img src="data:image/png;base64,bm90IGFuIGltYWdl"></body></html>', encoding="utf-8")
    assert image_widths(page, tmp_path) == (1, [0])
