"""The HTML report opened in a real headless browser (Debian's chromium): the table and both
plots are in the rendered DOM, the images decode, and the screenshot is not blank."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "benchmarks", "screenshot_report.py")
BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)

pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser")
    proc = subprocess.run([sys.executable, SCRIPT, os.path.join(HERE, "golden", "report_fixture.json"),
                           "-o", str(out), "--width", "1400", "--height", "1600"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_browser_dom_has_every_table_row_and_both_plots(rendered):
    from optkit import report
    with open(os.path.join(HERE, "golden", "report_fixture.json")) as fh:
        _, rows = report.grid(json.load(fh))
    dom = open(rendered["dom"], encoding="utf-8").read()
    body_rows = re.findall(r'<tr><th scope="row">([^<]*)</th>', dom)
    assert body_rows == [r[0] for r in rows]
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', dom)
    assert imgs == ["Latency vs size, Pareto front marked", "Accuracy vs latency"]


def test_screenshot_is_not_blank(rendered):
    import matplotlib.image as mpimg
    img = mpimg.imread(rendered["png"])[..., :3]
    assert img.shape[:2] == (1600, 1400)
    # A white page has no variance; the table's text and the plots' markers must show up.
    assert np.std(img) > 0.05
    dark = (img.mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.5
    # and colour: the plots' markers (matplotlib's blue) are drawn, not only grey text
    blue = (img[..., 2] > 0.6) & (img[..., 0] < 0.3)
    assert blue.sum() > 50
