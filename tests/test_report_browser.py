"""The rendered report.html in a real browser (headless Chromium): every epoch, every plot decoded."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _report_fixtures import make_run

from p3 import report

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install -y chromium)"),
]

# After load, count the plots the browser actually decoded and write it into the DOM.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img.plot')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  const secs = document.querySelectorAll('section[id^="epoch-"]').length;
  document.body.setAttribute('data-probe', `decoded=${ok.length} total=${imgs.length} sections=${secs}`);
});
</script>"""


def _chromium(tmp_path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"))
    out = report.render_report(report.ReportConfig(run_dir=str(run)))
    return out


def test_browser_decodes_every_plot_of_every_epoch(page, tmp_path):
    html = open(page).read()
    decoded, total, sections = _probe(html, tmp_path)
    assert sections == 3
    assert total == html.count('<img class="plot"') == 15
    assert decoded == total


def _probe(html: str, tmp_path) -> tuple[int, int, int]:
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", f"file://{probe}")
    m = re.search(r'data-probe="decoded=(\d+) total=(\d+) sections=(\d+)"', dom)
    assert m, dom[:500]
    return tuple(map(int, m.groups()))


def test_screenshot_is_not_blank(page, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1100,2400", f"file://{page}")
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1100)
    # A white page has one grey level; plots and tables give many, and plenty of ink.
    assert len(np.unique(img)) > 50
    assert (img < 200).mean() > 0.01
