"""The 'look' of a dataset and a run: the ``view`` page, its thumbnail cache, and the report's maps and gallery.

One ChronoMID demo store (10 synthetic mice, weekly slices) with ``diffstats_absolute`` on one slice per week
and a logistic fit on it; the page and the report are checked as files, and rendered in headless Chromium
when playwright and a chromium binary are installed (skipped otherwise).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from classifiers.evaluate import fit_model
from classifiers.report import write_report
from classifiers.viewer import view_path, write_view
from extractors.diffstats import DiffStats
from extractors.images import ImageLoader
from extractors.runner import run_extraction
from extractors.thumbnails import Thumbnailer, difference_to_rgb, grey_to_uint8
from store.sql import query
from store.thumbnails import THUMBNAILS_DIR
from tests._demo_stores import core_copy, demo_store

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLICE = 5
SUBJECTS = 2


class _OneSlice(DiffStats):
    """diffstats of one slice per week only, to keep the fixture short."""

    def units(self, store, dataset):
        units = super().units(store, dataset)
        return units.filter(pc.equal(units.column("slice"), SLICE))


@pytest.fixture(scope="module")
def look(tmp_path_factory):
    """(store, run id): chronomid with diffstats_absolute of one slice and a logistic run on it."""
    shared = demo_store(tmp_path_factory, "chronomid")
    store = core_copy(shared, tmp_path_factory.mktemp("look") / "store")
    summary = run_extraction(_OneSlice(reference="absolute", workers=1), store, dataset="chronomid", progress=False)
    assert summary.failed == 0 and summary.written > 50
    result = fit_model(store, "logistic", dataset="chronomid", features="diffstats_absolute", folds=3, n_boot=0,
                       progress=False)
    return store, result.run_id


def _raw_identifiers(store) -> set[str]:
    """PatientID, PatientName and patient folder names of the demo's DICOM files (what must never be shown)."""
    import pydicom

    from store.pixels import dataset_root

    root = dataset_root(store, "chronomid")
    found = set()
    for path in sorted(root.rglob("*.dcm"))[::40]:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(header.PatientID), str(header.PatientName), f"{path.relative_to(root).parts[0]}/"}
    return found


def test_view_page_shows_timelines_and_pairs_and_reuses_its_thumbnails(look):
    store, run_id = look
    first = write_view(store, "chronomid", subjects=SUBJECTS, reference="absolute", progress=False)
    assert first.path == view_path(store, "chronomid") == store.root / "views" / "chronomid" / "index.html"
    page = first.path.read_text()
    subjects = sorted(r["subject"] for r in query(store, "SELECT DISTINCT subject FROM scans WHERE dataset = "
                                                         "'chronomid'").to_pylist())[:SUBJECTS]
    expected = query(store, "SELECT count(*) AS n FROM pairs WHERE dataset = 'chronomid' AND reference_mode = "
                            f"'absolute' AND subject IN ('{subjects[0]}', '{subjects[1]}')").to_pylist()[0]["n"]
    scans = query(store, f"SELECT count(*) AS n FROM scans WHERE subject IN ('{subjects[0]}', '{subjects[1]}')"
                  ).to_pylist()[0]["n"]
    assert (first.subjects, first.pairs, first.scans) == (SUBJECTS, expected, scans) and expected > 100
    assert page.count('<div class="subject"') == SUBJECTS and page.count('<div class="pair"') == expected
    assert all(f"S-{s[:8]}" in page for s in subjects)
    for control in ("f-label", "f-split", "f-run", "f-right"):
        assert f'id="{control}"' in page
    labels = {r["label"] for r in query(store, f"SELECT DISTINCT label FROM scans WHERE subject IN ('{subjects[0]}', "
                                               f"'{subjects[1]}')").to_pylist()}
    assert run_id in page and all(f'<option value="{label}">' in page for label in labels)
    for raw in _raw_identifiers(store):
        assert raw not in page, f"raw identifier {raw!r} on the view page"
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == scans + 3 * expected  # timelines + (reference, comparison, difference) per pair
    assert all((first.path.parent / s).resolve().is_file() for s in set(sources))
    cached = sorted((store.root / THUMBNAILS_DIR).iterdir())
    assert first.written == len(cached) == scans + expected and first.reused == 0  # one file per scan and pair
    stamps = {p.name: p.stat().st_mtime_ns for p in cached}

    second = write_view(store, "chronomid", subjects=SUBJECTS, reference="absolute", progress=False)
    assert second.written == 0 and second.reused == first.written
    assert {p.name: p.stat().st_mtime_ns for p in (store.root / THUMBNAILS_DIR).iterdir()} == stamps
    assert second.path.read_text() == page


def test_thumbnails_are_the_pixels_the_features_saw(look):
    from PIL import Image

    store, _ = look
    thumbnailer = Thumbnailer(store, "chronomid")
    row = query(store, "SELECT * FROM scans WHERE dataset = 'chronomid' ORDER BY scan_id LIMIT 1").to_pylist()[0]
    path = thumbnailer.scan(row)
    assert path.name.startswith(row["pixel_sha256"]) and path.read_bytes().startswith(PNG_MAGIC)
    loader = ImageLoader(store, "chronomid", thumbnailer.recipe)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), grey_to_uint8(loader.image(row)))
    diff = np.zeros((4, 4), np.float32)
    diff[0, 0], diff[1, 1] = 1.0, -1.0
    rgb = difference_to_rgb(diff)
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 255) and tuple(rgb[2, 2]) == (255,) * 3


def test_report_has_embedding_map_gallery_and_a_link_to_the_view(look):
    store, run_id = look
    view = write_view(store, "chronomid", subjects=1, reference="absolute", progress=False)
    path = write_report(store, run_id)
    page = path.read_text()
    assert "<h2>Embedding maps</h2>" in page and "<h2>Worst and best units</h2>" in page
    embedding = path.parent / "embedding_0.png"
    assert embedding.read_bytes().startswith(PNG_MAGIC) and embedding.stat().st_size > 5000
    gallery = re.findall(r'<img src="(gallery_[^"]+)"', page)
    assert len(gallery) == 6 * 3  # 3 worst + 3 best pairs: reference, comparison, difference
    assert all((path.parent / name).read_bytes().startswith(PNG_MAGIC) for name in gallery)
    assert page.count("worst ") >= 3 and "p(true)" in page
    href = re.search(r'<a id="view-link" href="([^"]+)"', page).group(1)
    assert (path.parent / href).resolve() == view.path.resolve()
    for raw in _raw_identifiers(store):
        assert raw not in page


def test_cli_view_writes_the_page(look, cli):
    store, _ = look
    done = cli("view", "--dataset", "chronomid", "--subjects", "1", "--reference", "absolute", store=store)
    assert done.returncode == 0, done.stderr
    assert "view written:" in done.stdout and "1 subjects" in done.stdout and "from the cache" in done.stdout
    bad = cli("view", "--dataset", "chronomid", "--reference", "sideways", store=store)
    assert bad.returncode == 2 and "reference" in bad.stderr


def _chromium():
    """A launched headless Chromium (playwright + the system's chromium), or skip."""
    playwright = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium binary on PATH")
    return playwright, executable


def _render(browser, url: str, shot: Path, actions=None) -> dict:
    """Open ``url``, run ``actions(page)``, screenshot to ``shot``; console errors, broken images, requests."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="load")
    if actions:
        actions(page)
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                           ".map(i => i.getAttribute('src'))")
    images = page.evaluate("document.images.length")
    page.screenshot(path=str(shot))
    count = page.evaluate("document.getElementById('count') ? document.getElementById('count').textContent : ''")
    page.close()
    return {"errors": errors, "broken": broken, "images": images, "count": count,
            "remote": [r for r in requests if not r.startswith("file:")]}


def test_view_and_report_render_in_headless_chromium(look, tmp_path):
    playwright, executable = _chromium()
    store, run_id = look
    view = write_view(store, "chronomid", subjects=SUBJECTS, reference="absolute", progress=False)
    report = write_report(store, run_id)

    def wrong_test_units(page):
        page.select_option("#f-run", "0")
        page.select_option("#f-split", "test")
        page.select_option("#f-right", "wrong")

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            shown = _render(browser, view.path.as_uri(), tmp_path / "view.png")
            filtered = _render(browser, view.path.as_uri(), tmp_path / "filtered.png", wrong_test_units)
            judged = _render(browser, report.as_uri(), tmp_path / "report.png")
        finally:
            browser.close()
    for result in (shown, filtered, judged):
        assert result["errors"] == [] and result["broken"] == [] and result["remote"] == []
    assert shown["images"] == view.scans + 3 * view.pairs
    assert shown["count"] == f"{SUBJECTS} subjects, {view.pairs} pairs shown"
    subjects, pairs = map(int, re.match(r"(\d+) subjects, (\d+) pairs shown", filtered["count"]).groups())
    assert subjects <= SUBJECTS and pairs < view.pairs  # the filter hides the rest
    assert judged["images"] >= 6 * 3 + 1
    for name in ("view.png", "filtered.png", "report.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 20_000
