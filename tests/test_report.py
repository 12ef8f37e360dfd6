"""report.json -> table / Markdown / CSV (golden text), HTML and plots.

The fixtures under tests/golden/ are fixed report.json documents (an optimize report with ok,
skipped and failed cells; a bench report). Regenerate the goldens after an intended change with
OPTKIT_UPDATE_GOLDEN=1 and review the diff.
"""
import csv
import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from optkit import report
from optkit.cli import cli
from optkit.errors import UserError

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
UPDATE = os.environ.get("OPTKIT_UPDATE_GOLDEN") == "1"


def _fixture(name):
    with open(os.path.join(GOLDEN, name), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture
def optimize_report():
    return _fixture("report_fixture.json")


@pytest.fixture
def bench_report():
    return _fixture("bench_fixture.json")


def _golden(name, text):
    path = os.path.join(GOLDEN, name)
    if UPDATE:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    with open(path, encoding="utf-8", newline="") as fh:
        assert text == fh.read(), f"{name} differs from the golden file (OPTKIT_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("fixture, fmt, golden", [
    ("report_fixture.json", "table", "report.txt"),
    ("report_fixture.json", "md", "report.md"),
    ("report_fixture.json", "csv", "report.csv"),
    ("bench_fixture.json", "table", "bench.txt"),
    ("bench_fixture.json", "md", "bench.md"),
    ("bench_fixture.json", "csv", "bench.csv"),
])
def test_renderings_match_golden_text(fixture, fmt, golden):
    _golden(golden, report.render(_fixture(fixture), fmt))


def test_lesson14_layout_has_variants_as_columns_and_the_four_rows_first(optimize_report):
    header, rows = report.grid(optimize_report)
    assert header == ["", "baseline", "pruned 75%", "separable"]
    assert [r[0] for r in rows[:4]] == ["Parameters", "Accuracy", "Train time/epoch", "Inference time/step"]
    titles = [r[0] for r in rows[4:]]
    # then size, gzip size (and accuracy) and latency per runtime, per artifact kind
    assert titles[:4] == ["TFLite size", "TFLite gzip size", "TFLite accuracy", "TFLite latency (litert)"]
    assert "ONNX latency (onnxruntime)" in titles and "TFLite int8 latency (litert)" in titles
    assert report.lesson14_table(optimize_report).splitlines()[0].split() == ["baseline", "pruned", "75%", "separable"]


def test_skipped_and_failed_cells_show_their_status(optimize_report):
    cells = {r[0]: r[1:] for r in report.grid(optimize_report)[1]}
    assert cells["TensorRT size"][0] == "skipped: TensorRT needs an NVIDIA GPU"
    assert cells["TensorRT latency"][0] == "skipped"
    assert cells["ONNX size"][1].startswith("failed: parity: max_abs 0.31")
    assert cells["Parameters"][2] == "failed: training diverged (loss nan)"
    assert cells["Accuracy"][2] == "failed"
    assert cells["TFLite int8 size"][0] == report.DASH  # baseline has no int8 artifact: nothing to say


def test_csv_keeps_whole_reasons_and_parses_back(optimize_report):
    rows = list(csv.reader(io.StringIO(report.render(optimize_report, "csv"))))
    by_title = {r[0]: r[1:] for r in rows[1:]}
    assert by_title["ONNX size"][1] == "failed: parity: max_abs 0.31 > 1e-4 | top-1 agreement 0.62"
    assert by_title["TFLite gzip size"] == ["3.44 MB", "1.17 MB", report.DASH]


def test_bench_report_has_one_row_per_result(bench_report):
    header, rows = report.grid(bench_report)
    assert header[:2] == ["Artifact", "Runtime"] and len(rows) == 3
    assert rows[1][header.index("Accuracy")] == "agree 93.75%"
    assert rows[2][header.index("Status")].startswith("skipped: TensorRT needs")


@pytest.mark.parametrize("xy, front", [
    ([(1, 5), (2, 3), (3, 4), (4, 1)], [0, 1, 3]),       # (3,4) is beaten by (2,3)
    ([(1, 1), (2, 2), (3, 3)], [0]),                     # one point dominates all
    ([(2, 2), (2, 2), (1, 3)], [2, 0]),                  # duplicates kept once
    ([], []),
])
def test_pareto_front_keeps_only_undominated_points(xy, front):
    assert report.pareto_front(xy) == front


def test_write_plots_draws_nonblank_pngs(optimize_report, tmp_path):
    import matplotlib.image as mpimg
    paths = report.write_plots(optimize_report, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["latency_vs_size.png", "accuracy_vs_latency.png"]
    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert np.std(img[..., :3]) > 0.02  # drawn on, not a blank canvas
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".optkit-")]  # no temp files left


def test_points_skip_artifacts_that_did_not_run(optimize_report):
    labels = [p["label"] for p in report.points(optimize_report)]
    assert labels == ["baseline · TFLite", "baseline · ONNX", "pruned 75% · TFLite", "pruned 75% · TFLite int8"]


def test_html_is_self_contained(optimize_report):
    page = report.render(optimize_report, "html")
    assert page.startswith("<!DOCTYPE html>") and '<table id="report-table">' in page
    assert page.count('<img alt="') == 2 and page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<th scope=\"row\">TFLite int8 latency (litert)</th>" in page
    assert '<td class="status">skipped: TensorRT needs an NVIDIA GPU</td>' in page


def test_render_rejects_unknown_format_and_non_reports(optimize_report):
    with pytest.raises(UserError, match="unknown report format 'pdf'"):
        report.render(optimize_report, "pdf")
    with pytest.raises(UserError, match="not an optkit report"):
        report.render({"hello": 1}, "md")


# --- the CLI ------------------------------------------------------------------------------------

def test_report_command_writes_the_file_atomically(tmp_path):
    out = tmp_path / "r.md"
    res = CliRunner().invoke(cli, ["report", os.path.join(GOLDEN, "report_fixture.json"),
                                   "--format", "md", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == report.render(_fixture("report_fixture.json"), "md")
    assert sorted(os.listdir(tmp_path)) == ["r.md"]


def test_report_command_picks_the_format_from_the_suffix(tmp_path):
    out = tmp_path / "r.csv"
    res = CliRunner().invoke(cli, ["report", os.path.join(GOLDEN, "bench_fixture.json"), "-o", str(out)])
    assert res.exit_code == 0
    assert out.read_text(encoding="utf-8").startswith("Artifact,Runtime,Threads,Batch,p50")


def test_report_command_prints_the_table_by_default():
    res = CliRunner().invoke(cli, ["report", os.path.join(GOLDEN, "report_fixture.json")])
    assert res.exit_code == 0 and res.stdout == report.lesson14_table(_fixture("report_fixture.json"))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON report"),
    ('{"schema": 1, "other": []}', "not an optkit report"),
    ('{"schema": 2, "variants": []}', "schema 2 is newer"),
])
def test_bad_report_files_are_one_line_errors_with_exit_2(tmp_path, content, message):
    import subprocess
    import sys
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "out.md"
    proc = subprocess.run([sys.executable, "-m", "optkit.cli", "report", str(bad), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_bench_report_plots_the_raw_sample_distribution(bench_report, tmp_path):
    import matplotlib.image as mpimg
    paths = report.write_plots(bench_report, str(tmp_path))
    # no accuracy in this bench report: size/latency and the distribution of the two ok results
    assert [os.path.basename(p) for p in paths] == ["latency_vs_size.png", "latency_distribution.png"]
    img = mpimg.imread(paths[1])
    assert np.std(img[..., :3]) > 0.02


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_honour_the_umask(optimize_report, tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = report.write_plots(optimize_report, str(tmp_path))
        paths.append(report.write_text("x\n", str(tmp_path / "report.md")))
    finally:
        os.umask(old)
    for p in paths:
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask, p


def test_markdown_notes_become_html_and_markup_in_them_is_escaped():
    page = report.markdown_html("## Notes\n\n- kept: `jit`\n- layer <class 'X'> & more")
    assert "<h2>Notes</h2>" in page and "<li>kept: <code>jit</code></li>" in page
    assert "&lt;class 'X'&gt; &amp; more" in page and "<class" not in page


def test_footnotes_say_what_the_per_step_and_per_epoch_rows_measure():
    doc = {"plan": {"batch_size": 32}, "data": {"train": 1400},
           "env": {"packages": {"tensorflow": "2.21.0"}},
           "variants": [{"name": "Naive", "train_time_per_epoch_s": 5.0, "inference_ms_per_step": 3.0,
                         "accuracy": 0.8, "details": {"accuracy_n": 300, "inference": {
                             "batch": 32, "path": "keras_io.predict (compiled tf.function)"}}}]}
    notes = report.footnotes(doc)
    assert "1400 training images at batch 32 = 44 steps" in notes[0] and "TensorFlow 2.21.0" in notes[0]
    assert "batch of 32 images" in notes[1] and "batch 1" in notes[1]
    assert "100/n points" in notes[2]
    assert report.grid(doc)[1][1][0] == "Accuracy (n=300 test images)"
