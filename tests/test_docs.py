"""The documentation site: ``mkdocs build --strict`` passes, its numbers come from benchmarks/results, and it renders.

The build is the one ``make docs`` runs, into a temporary folder: a broken link,
an unresolved API reference, a benchmark result file, section or table that a
page asks for and no longer exists — each fails the strict build, so it fails
here. The rendered index and one guide are then opened in headless Chromium
(Debian's ``chromium``, as in ``tests/test_report_browser.py``): the page must
load with the theme's stylesheet and every image must decode.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
    pytest.importorskip(module, reason="the docs extra is not installed (pip install -e '.[docs]'; make setup does)")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by ``mkdocs build --strict`` (what ``make docs`` runs), in a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(page: Path) -> str:
    """The page's text, tags removed and whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))).split())


def test_every_page_of_the_nav_is_built(site):
    for page in ("index.html", "getting-started.html", "concepts.html", "transfer-verdict.html",
                 "guide/fine-tuning.html", "guide/named-entities.html", "reference/api.html", "reference/cli.html"):
        assert (site / page).is_file(), page


def test_guide_tables_are_the_benchmark_results(site):
    """A number in the NER guide is the one in benchmarks/results/ner/summary.md, and the page names its source."""
    rows = [r for r in (RESULTS / "ner" / "summary.md").read_text(encoding="utf-8").splitlines()
            if r.startswith("| crf |")]
    measured = rows[0].split("|")[2].strip()  # the CRF's entity F1 at the smallest budget, e.g. "59.5 ± 7.9"
    page = _text(site / "guide" / "named-entities.html")
    assert measured in page
    assert "benchmarks/results/ner/summary.md" in page


def test_benchmark_plots_are_copied_unchanged(site):
    plot = "ner/f1_vs_sentences.png"
    built = site / "benchmarks" / "results" / plot
    assert built.read_bytes() == (RESULTS / plot).read_bytes()
    assert 'src="../benchmarks/results/ner/f1_vs_sentences.png"' in (site / "guide" / "named-entities.html").read_text()


def test_json_values_are_read_at_build_time(site):
    ratio = json.loads((RESULTS / "data_efficiency" / "throughput.json").read_text())["ratio"]
    assert f"runs at {ratio:.2f} of the raw" in _text(site / "benchmarks.html")


def test_a_missing_result_fails_the_build():
    """The hook refuses what benchmarks/results does not hold, naming it (strict build: a failure)."""
    from mkdocs.exceptions import PluginError

    hook = _hook("results")
    page = SimpleNamespace(file=SimpleNamespace(src_uri="guide/x.md"))
    with pytest.raises(PluginError, match="no benchmark result 'nope/summary.md'"):
        hook.on_page_markdown('{{ results("nope/summary.md") }}', page=page, config=None, files=None)
    with pytest.raises(PluginError, match="no section starting with 'No such section'"):
        hook.on_page_markdown('{{ results("ner/summary.md", section="No such section") }}', page=page, config=None,
                              files=None)
    with pytest.raises(PluginError, match="no value at 'missing'"):
        hook.on_page_markdown('{{ value("data_efficiency/throughput.json", "missing") }}', page=page, config=None,
                              files=None)


def test_cli_reference_has_every_command_with_its_example(site):
    import typer.main

    from transferkit.cli.main import app

    page = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    for name, command in typer.main.get_command(app).commands.items():
        assert f'id="transferkit-{name}"' in page, name
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert f"<code>{opt}</code>" in page, (name, opt)
    assert page.count("<strong>Examples</strong>") >= 16


def test_api_reference_renders_the_docstrings(site):
    page = _text(site / "reference" / "api.html")
    for name in ("fit", "compare", "rank", "load", "Predictor", "TrainConfig"):
        assert re.search(rf"\b{name}\b", page), name
    assert "Adapt backbone to data with strategy" in page.replace("``", "")


# --- the rendered pages in a real browser ---------------------------------------------------------------------

PROBE = ("<script>window.addEventListener('load', () => { const b = document.body; "
         "b.setAttribute('data-images', JSON.stringify([...document.images].map(i => i.complete ? i.naturalWidth : -1)));"
         "const h = document.querySelector('.md-header');"
         "b.setAttribute('data-header', h ? getComputedStyle(h).position : 'none');"
         "const t = document.querySelector('article h1'); b.setAttribute('data-h1', t ? t.textContent : ''); });"
         "</script>")


def rendered(page: Path) -> dict:
    """What Chromium made of ``page``: its images' natural widths, the header's CSS position, the title."""
    probe = page.with_name(f"probe-{page.name}")  # beside the page, so its relative links still resolve
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = {k: re.search(rf'data-{k}="([^"]*)"', dom) for k in ("images", "header", "h1")}
    assert all(found.values()), f"the page did not finish loading in Chromium: {dom[:300]!r}"
    return {"images": json.loads(html.unescape(found["images"].group(1))),
            "header": found["header"].group(1), "h1": html.unescape(found["h1"].group(1))}


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (make setup installs Debian's chromium)")
@pytest.mark.parametrize("page, title, images", [
    ("index.html", "transferkit", 1),
    ("guide/named-entities.html", "Named entities", 1),
])
def test_pages_render_in_chromium_with_their_images(site, page, title, images):
    shown = rendered(site / page)
    assert shown["h1"].startswith(title), shown["h1"]
    assert shown["header"] in ("sticky", "fixed"), "the theme's stylesheet did not apply"
    n = len(re.findall(r"<img\b", (site / page).read_text(encoding="utf-8")))
    assert n >= images and len(shown["images"]) == n
    assert all(w > 100 for w in shown["images"]), shown["images"]
