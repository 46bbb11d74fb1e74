"""``report.html``: written by every build, self-contained, every plot loads in a browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from reco_fast.build.report_html import curves, render_html
from tests.helpers import require, run_python

IMAGES = ("roc", "pr", "calibration", "sweep", "importance", "device", "traffic", "speed")
SECTIONS = (
    "Model quality",
    "Calibration",
    "Click rate and volume by confidence threshold (cut at 0.7)",
    "Feature importances",
    "Click rates by device and traffic source",
    "Business impact",
    "Compiled model vs scikit-learn",
)
IMG = re.compile(r'<img src="([^"]*)"')


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def page(built) -> str:
    return (built.path / "report.html").read_text(encoding="utf-8")


def test_build_writes_report_html_beside_report_md(built, page):
    assert (built.path / "report.md").is_file()
    assert "report.html" in built.metadata["files"]  # checksummed like every artifact file
    for section in SECTIONS:
        assert section in page, section
    report = json.loads((built.path / "report.json").read_text())
    assert f"{report['metrics']['auc']:.3f}" in page
    assert f"{report['business_impact']['incremental_revenue_per_year']:,.0f}" in page


def test_report_html_is_self_contained(page):
    lowered = page.lower()
    for needle in ("http://", "https://", "<script", "<link", "@import", "url(", "src=//"):
        assert needle not in lowered, needle
    for src in IMG.findall(page):
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.skipif(not has_matplotlib(), reason="matplotlib (the report extra) not installed")
def test_report_html_has_every_plot(page):
    assert len(IMG.findall(page)) == len(IMAGES)
    assert "Plots omitted" not in page


def test_without_matplotlib_the_page_has_tables_and_a_note(built, monkeypatch):
    report = json.loads((built.path / "report.json").read_text())
    pred = pd.read_csv(built.path / "realtime_recommendation_predictions.csv")
    points = curves(pred["recommendation_clicked"], pred["click_probability"])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = render_html(report, points)
    assert "<img" not in page
    assert "Plots omitted: matplotlib is not installed" in page
    for section in SECTIONS:
        assert section in page, section
    assert "<table>" in page


def test_curves_are_consistent_with_the_report(built):
    report = json.loads((built.path / "report.json").read_text())
    pred = pd.read_csv(built.path / "realtime_recommendation_predictions.csv")
    c = curves(pred["recommendation_clicked"], pred["click_probability"])
    at = {s["threshold"]: s for s in c["sweep"]}
    for row in report["thresholds"]:
        assert at[row["threshold"]]["shown"] == row["shown"]
    assert sum(b["count"] for b in c["calibration"]) == report["split"]["test"]
    assert c["roc"]["fpr"][0] == 0.0 and c["roc"]["tpr"][-1] == 1.0


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


COUNT_IMAGES = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.title = "images " + ok.length + "/" + imgs.length;
});
</script>"""


def test_every_image_loads_in_headless_chromium(page, tmp_path):
    browser = _chromium()
    if browser is None:
        require("chromium", "apt-get install chromium")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", COUNT_IMAGES + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", proc.stdout)
    assert title, proc.stdout[:500]
    n = len(IMG.findall(page))
    assert title.group(1) == f"images {n}/{n}", title.group(1)


@pytest.mark.skipif(not has_matplotlib(), reason="matplotlib (the report extra) not installed")
def test_rendering_leaves_the_callers_matplotlib_state_alone(built):
    """No process-wide side effect: the caller's backend and pyplot's figures are untouched."""
    code = (
        "import json, sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import matplotlib.pyplot as plt\n"
        "import pandas as pd\n"
        "from reco_fast.build.report_html import curves, render_html\n"
        f"root = {str(built.path)!r}\n"
        "report = json.load(open(root + '/report.json'))\n"
        "pred = pd.read_csv(root + '/realtime_recommendation_predictions.csv')\n"
        "page = render_html(report, curves(pred['recommendation_clicked'], pred['click_probability']))\n"
        "assert '<img' in page\n"
        "print(matplotlib.get_backend(), plt.get_fignums())\n"
    )
    done = run_python(
        code,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg", "[]"]
