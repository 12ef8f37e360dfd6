"""End to end on the zoo and synthetic data: the embedded default, a search on a budget, and
fine-tuning under a tf.distribute strategy. Tiny schedules (`--tiny`: 1 epoch, 320 samples, short
timing loops) keep each test to tens of seconds; their numbers mean nothing, their shape does."""
import json

import pytest
from click.testing import CliRunner

from optkit.cli import cli


def _run(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_embedded_default_prints_the_lesson14_table_and_exports_the_final_rung(tmp_path):
    out = tmp_path / "demo"
    result = _run(["optimize", "-o", str(out), "--tiny"])
    report = json.loads((out / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names[:3] == ["Naive", "Pooling", "Separable"] and names[-1].startswith("Tuned")
    assert len({v["id"] for v in report["variants"]}) == len(names)      # every rung its own id
    assert report["plan"]["recipe"] == "lesson14" and report["plan"]["model"] == "zoo:lesson14"
    naive, pooling, separable = report["variants"][:3]
    assert separable["params"] < pooling["params"] < naive["params"]
    # The table: variants as columns, Lesson 14's rows, on stdout.
    header = result.stdout.splitlines()[0]
    assert "Naive" in header and "Separable" in header
    assert "Parameters" in result.stdout and "Inference time/step" in result.stdout
    # Exported, validated and benchmarked: the baseline and the last rung that trained.
    exported = [v for v in report["variants"] if v["artifacts"]]
    assert exported[0]["name"] == "Naive" and len(exported) == 2
    for v in exported:
        assert {(a["format"], a["quantize"]) for a in v["artifacts"]} == {("tflite", "int8"), ("onnx", "none")}
        for a in v["artifacts"]:
            assert a["status"] == "ok", a
            assert a["parity"]["ok"] and a["latency_ms"]["p50"] > 0 and a["accuracy"] is not None
    for name in ("report.md", "report.html", "plan.json"):
        assert (out / name).is_file()
    # Variant ids follow the plan: Naive's id is the plan's baseline id.
    assert naive["id"] == json.loads((out / "plan.json").read_text())["variants"][0]["id"]


@pytest.mark.slow
def test_search_on_synthetic_data_returns_a_variant_and_the_pareto_set_within_budget(tmp_path):
    result = _run(["optimize", "zoo:lenet5", "--data", "synthetic:shapes", "--max-accuracy-drop", "5",
                   "--budget", "1.5", "-o", str(tmp_path / "run"), "--json", "--tiny"])
    report = json.loads(result.stdout)
    s = report["search"]
    assert s["best"] is not None and s["pareto"]
    # The budget is checked before each candidate; the one in progress finishes (at most ~1 min here).
    assert report["elapsed_s"] <= 1.5 * 60 + 60
    assert s["stopped"] in (None, "time budget 1.5 min reached")


@pytest.mark.slow
@pytest.mark.parametrize("strategy, name", [("mirrored", "MirroredStrategy"),
                                            ("multiworker", "MultiWorkerMirroredStrategy")])
def test_a_distribution_strategy_trains_the_baseline_and_fine_tunes_on_one_cpu_replica(tmp_path, strategy, name):
    """One device (this CPU) is a valid MirroredStrategy; without TF_CONFIG, multi-worker is one worker."""
    result = _run(["optimize", "zoo:lenet5", "--data", "synthetic:shapes", "--step", "prune:sparsity=0.5",
                   "--to", "tflite", "--strategy", strategy, "-o", str(tmp_path / "run"), "--json", "--tiny"])
    baseline, pruned = json.loads(result.stdout)["variants"]
    settings = baseline["details"]["training"]["settings"]
    assert settings["strategy"] == name and settings["replicas"] == 1
    assert baseline["accuracy"] is not None and baseline["artifacts"][0]["status"] == "ok"
    assert pruned["status"] == "ok" and pruned["steps"][-1]["info"]["target_reached"] is True
