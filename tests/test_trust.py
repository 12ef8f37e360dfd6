"""The main job a user can trust (issue 13), on a trained user-style model with a small labelled
set: recipes never hand back something worse than the baseline, steps that cannot apply are
refused or skipped up front, Ctrl-C stops the run within seconds and --resume picks it up, and
stderr carries optkit's lines only."""
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import user_models

NOISE = re.compile(r"^[IWEF][0-9]{4} |absl::|cuInit|fully_quantize|Warning:|WARNING:", re.M)


def _optkit(*args, **kw):
    return subprocess.run([sys.executable, "-m", "optkit.cli", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The 'unit' user model (Keras 3, inputs in [0, 1], global pooling head) and 240 of its images."""
    m = user_models.get("unit")
    folder = tmp_path_factory.mktemp("small")
    with np.load(m.npz) as z:
        np.savez(folder / "d240.npz", x=z["x"][:240], y=z["y"][:240])
    return m.path, str(folder / "d240.npz")


def test_a_non_empty_output_folder_is_refused_without_resume_or_force(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    run = _optkit("optimize", "model.keras", "--step", "prune", "-o", str(tmp_path))
    assert run.returncode == 2 and "--resume" in run.stderr and "--force" in run.stderr
    run = _optkit("optimize", "model.keras", "-o", str(tmp_path), "--resume", "--force")
    assert run.returncode == 2 and "not both" in run.stderr


def test_an_explicit_step_that_does_not_apply_exits_2_before_training(small, tmp_path):
    model, data = small
    out = tmp_path / "run"
    run = _optkit("optimize", model, "--data", data, "--step", "pooling", "-o", str(out), timeout=300)
    assert run.returncode == 2, run.stderr
    assert "optkit: error: --step pooling does not apply" in run.stderr and "Flatten" in run.stderr
    assert "epoch" not in run.stderr and not [p for p in out.iterdir() if p.is_dir()]   # nothing trained


@pytest.mark.slow
def test_edge_int8_recipe_selects_an_artifact_within_a_point_of_the_baseline(small, tmp_path):
    model, data = small
    out = tmp_path / "run"
    run = _optkit("optimize", model, "--data", data, "--recipe", "edge-int8", "-o", str(out), timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    baseline = report["variants"][0]
    selected = report["selected"]
    assert selected["accuracy"] >= baseline["accuracy"] - 0.01
    assert os.path.exists(selected["path"]) and selected["latency_ms"] > 0
    assert f"selected: {selected['variant']} {selected['artifact']}" in run.stdout
    # The pooling step has no Flatten head to rewrite here: skipped with its reason, and the
    # steps after it build on the baseline.
    pooling = report["variants"][1]
    assert pooling["status"] == "skipped" and "Flatten" in pooling["reason"]
    for v in report["variants"][2:]:
        verdict = v["details"]["verdict"]
        assert verdict["drop_points"] is not None                  # judged against the baseline's model
        if v["status"] == "rejected":
            assert "%" in v["reason"] and v["name"] in run.stdout.split("rejected:")[1]
    assert report["data"]["small"] and "small data" in run.stderr
    assert not NOISE.search(run.stderr), NOISE.search(run.stderr).group(0)


@pytest.mark.slow
def test_sigint_stops_within_seconds_keeps_finished_variants_and_resume_reuses_them(small, tmp_path):
    model, data = small
    out = tmp_path / "run"
    args = ["optimize", model, "--data", data, "--step", "prune", "--to", "tflite", "--tiny", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "optkit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen, deadline = b"", time.time() + 600
    while b"variant prune" not in seen and time.time() < deadline:   # the baseline is done
        if select.select([proc.stderr], [], [], 1)[0]:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.time() - sent < 10
    assert not [f for _, dirs, files in os.walk(out) for f in dirs + files if ".tmp" in f or f.startswith(".optkit-")]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert [(v["name"], v["status"]) for v in report["variants"]] == [("baseline", "ok"), ("prune", "interrupted")]

    run = _optkit(*args, "--resume", timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert [(v["name"], v["reused"]) for v in report["variants"]] == [("baseline", True), ("prune", False)]
    assert report["status"] == "ok" and report["selected"]
