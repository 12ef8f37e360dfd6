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

pytestmark = [pytest.mark.unit,  # needs no TensorFlow (make test-unit)
              pytest.mark.skipif(BROWSER is None, reason="chromium not installed (apt-get install chromium)")]


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


def test_per_layer_int8_plot_renders_in_the_browser(tmp_path):
    """An int8 artifact with a --quant-report diagnosis gets its own plot: bars per layer, worst
    on top, in the page the browser renders."""
    import matplotlib.image as mpimg

    with open(os.path.join(HERE, "golden", "report_fixture.json")) as fh:
        doc = json.load(fh)
    art = next(a for v in doc["variants"] for a in v["artifacts"] if a["quantize"] == "int8")
    art["quantization"] = {
        "backend": "tflite", "calibration": {"method": "minmax", "samples": 100}, "float_layers": ["wide"],
        "layers": [{"name": "wide", "op": "CONV_2D", "snr_db": 44.2, "rmse": 5.1, "channel_snr_db": 0.0},
                   {"name": "conv3", "op": "CONV_2D", "snr_db": 1.5, "rmse": 4.9, "channel_snr_db": 1.2},
                   {"name": "head", "op": "FULLY_CONNECTED", "snr_db": 30.1, "rmse": 0.02, "channel_snr_db": 31.0}]}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(doc))
    proc = subprocess.run([sys.executable, SCRIPT, str(path), "-o", str(tmp_path), "--width", "1400",
                           "--height", "2400"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shot = json.loads(proc.stdout)
    dom = open(shot["dom"], encoding="utf-8").read()
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', dom)
    quant = [i for i in imgs if i.startswith("Per-layer int8 error:")]
    assert quant == ["Per-layer int8 error: pruned 75% · TFLite int8"]
    img = mpimg.imread(shot["png"])[..., :3]
    assert np.std(img) > 0.05
