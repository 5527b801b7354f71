"""xrayfeat.report.writer in a real browser: a wide report fits a 1280 px laptop screen.

A report with several runs, every baseline, long class names, seed spreads and
two external evaluations per run is opened in headless Chromium at 1280×900.
JavaScript run in the page measures it after load and writes the result into
the page, which ``--dump-dom`` returns. Skipped where no Chromium is installed
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_report import _external, add_external, add_figure, enrich, make_run, operating_points
from xrayfeat.report.writer import write_report

CLASSES = ("normal_chest_radiograph", "bacterial_pneumonia_confirmed", "viral_pneumonia_confirmed",
           "covid19_positive_by_pcr")
WIDTH, HEIGHT = 1280, 900

# Measures the page after load: horizontal overflow of the document, each table against the viewport and the
# scrolling box it sits in, each comparison table against its own box, each image against the viewport.
_PROBE = """<script>
window.addEventListener("load", function () {
  var view = document.documentElement.clientWidth, found = {view: view, inner: window.innerWidth,
    page: document.documentElement.scrollWidth, tables: [], compare: [], images: []};
  function scroller(el) {
    for (var p = el.parentElement; p; p = p.parentElement) {
      var o = getComputedStyle(p).overflowX;
      if (o === "auto" || o === "scroll") return p;
    }
    return null;
  }
  document.querySelectorAll("table").forEach(function (t, i) {
    var r = t.getBoundingClientRect(), box = scroller(t);
    var boxed = box !== null && box.getBoundingClientRect().left >= 0 && box.getBoundingClientRect().right <= view;
    if (r.left < 0 || r.right > view) {
      if (!boxed) found.tables.push(i + " (" + (t.className || "table") + "): right edge " + Math.round(r.right));
    }
    if (t.classList.contains("compare") && box !== null && box.scrollWidth > box.clientWidth) {
      var last = t.querySelector("thead th:last-child");
      found.compare.push(i + ": " + box.scrollWidth + " px wide in a " + box.clientWidth + " px box, "
                         + JSON.stringify(last ? last.textContent : "") + " off screen");
    }
  });
  document.querySelectorAll("img").forEach(function (img, i) {
    var r = img.getBoundingClientRect();
    if (r.right > view) found.images.push(img.alt + ": right edge " + Math.round(r.right));
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(found);
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH (chromium, chromium-browser or google-chrome); Debian: apt-get install chromium")


def _browse(browser: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=60, check=False)


def _wide_report(root: Path) -> Path:
    """Four runs of one four-class task, every baseline, seed spreads, two external evaluations each."""
    folders = []
    for i, (backbone, layer) in enumerate([("vgg16", "block5_pool"), ("inception_v3", "mixed10"),
                                           ("vgg16", "block4_pool"), ("inception_v3", "mixed9")]):
        run = make_run(root / "runs", f"four-class-{backbone}-{layer}-imagenet-seed{i}", classes=CLASSES,
                       backbone=backbone, layer=layer, baselines=("logreg", "svm", "pixels"))
        enrich(run, positive=None, accuracy_seeds=[0.56, 0.64, 0.7, 0.76])
        if i == 0:
            add_figure(run, "gradcam", (1600, 500))  # wider than the window: it must scale down
        for site in ("hospital_b_external_site", "hospital_c_other_country"):
            head = _external(0.61, (0.52, 0.7), classes=CLASSES)
            head["operating_points"] = operating_points(CLASSES)
            add_external(run, site, head=head, classes=CLASSES,
                         baselines={b: _external(0.6, (0.5, 0.7), classes=CLASSES) for b in ("logreg", "svm")})
        folders.append(run)
    return Path(write_report(folders, root / "report")["html"])


def test_wide_report_fits_1280_pixels(tmp_path):
    browser = _chromium()
    report = _wide_report(tmp_path)
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    done = _browse(browser, probed, tmp_path / "profile", "--dump-dom")
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"{browser} returned no measurement (exit {done.returncode}): {done.stderr[-2000:]}"
    found = json.loads(html.unescape(match.group(1)))
    assert found["view"] <= WIDTH == found["inner"], found  # the window really is 1280 px wide
    problems = ([f"the page is {found['page']} px wide in a {found['view']} px window"]
                if found["page"] > found["view"] else [])
    problems += [f"table {t} outside the window and not in a scrolling box" for t in found["tables"]]
    problems += [f"comparison table {t}" for t in found["compare"]]
    problems += [f"image {i} outside the window" for i in found["images"]]
    if problems:
        shot = tmp_path / "report-1280.png"
        _browse(browser, report, tmp_path / "profile", f"--screenshot={shot}")
        pytest.fail(f"{report} at {WIDTH} px: " + "; ".join(problems) + f" (screenshot: {shot})")
