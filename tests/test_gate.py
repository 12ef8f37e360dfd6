"""The latency gate: statistics on sample sets, bench JSON inputs, and the CLI's exit codes."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from optkit import gate
from optkit.cli import cli
from optkit.errors import UserError


def latencies(median_ms, n, seed, spread=0.08):
    """Right-skewed latencies like a real timer's: lognormal around the median, plus rare spikes."""
    rng = np.random.default_rng(seed)
    x = median_ms * rng.lognormal(0.0, spread, n)
    spikes = rng.random(n) < 0.03
    x[spikes] *= rng.uniform(1.5, 4.0, spikes.sum())
    return x.tolist()


def write_bench(path, samples, **extra):
    result = {"path": "m.tflite", "format": "tflite", "runtime": "litert", "threads": 1, "batch": 1,
              "latency_ms": {"p50": float(np.median(samples)), "n": len(samples)},
              "samples_ms": list(samples)}
    result.update(extra)
    path.write_text(json.dumps({"schema": 1, "env": {}, "results": [result]}))
    return str(path)


# ------------------------------------------------------------------------------------ statistics
def test_same_distribution_passes():
    r = gate.decide(latencies(1.0, 200, 1), latencies(1.0, 200, 2))
    assert r.decision == gate.PASS
    assert 0.95 < r.median_ratio < 1.05
    assert r.p_value > 0.01
    assert r.exit_code == 0


def test_candidate_25_percent_slower_is_a_regression_and_names_its_numbers():
    r = gate.decide(latencies(1.0, 200, 1), latencies(1.25, 200, 2))
    assert r.decision == gate.REGRESSION
    assert r.exit_code == 3
    assert r.p_value < 1e-6
    assert 1.18 < r.median_ratio < 1.32
    assert "Mann-Whitney" in r.decided_by and "ratio 1.2" in r.decided_by


def test_significant_but_within_tolerance_passes():
    # 3 % slower with 2000 samples is highly significant, but below the 10 % tolerance.
    r = gate.decide(latencies(1.0, 2000, 1, spread=0.03), latencies(1.03, 2000, 2, spread=0.03))
    assert r.p_value < 0.01
    assert r.decision == gate.PASS
    assert "within the tolerance" in r.decided_by


def test_faster_candidate_passes_the_one_sided_test():
    r = gate.decide(latencies(1.0, 100, 1), latencies(0.5, 100, 2))
    assert r.decision == gate.PASS
    assert r.p_value > 0.99


def test_too_few_samples_is_inconclusive_even_for_a_big_slowdown():
    r = gate.decide(latencies(1.0, 10, 1), latencies(2.0, 10, 2), min_samples=30)
    assert r.decision == gate.INCONCLUSIVE
    assert r.p_value is None
    assert "too few samples" in r.decided_by and "n=10" in r.decided_by
    assert r.exit_code == 4


def test_large_but_noisy_slowdown_is_inconclusive_not_a_pass():
    # Latencies spread evenly over 1..30 ms; the candidate is the same spread, 15 % slower.
    # The medians differ by 15 % but the sets overlap almost entirely: no evidence either way.
    base = [float(v) for v in range(1, 31)]
    cand = [v * 1.15 for v in base]
    r = gate.decide(base, cand, alpha=0.01, max_slowdown=0.05)
    assert r.median_ratio == pytest.approx(1.15)
    assert r.p_value > 0.05
    assert r.decision == gate.INCONCLUSIVE
    assert "not significant" in r.decided_by


def test_deterministic_size_growth_fails_even_when_latency_passes():
    same = latencies(1.0, 100, 1)
    r = gate.decide(same, latencies(1.0, 100, 2), baseline_meta={"size_bytes": 1000},
                    candidate_meta={"size_bytes": 1500}, max_growth=0.10)
    assert r.decision == gate.REGRESSION
    size = next(c for c in r.checks if c.name == "size_bytes")
    assert size.status == "fail" and size.baseline == 1000 and size.candidate == 1500
    assert r.decided_by.startswith("deterministic check failed: size_bytes 1000 -> 1500")


def test_failed_validation_is_a_regression_and_missing_fields_are_skipped():
    r = gate.decide(latencies(1.0, 100, 1), latencies(1.0, 100, 2), baseline_meta={"parity": {"ok": True}},
                    candidate_meta={"parity": {"ok": False}, "params": 10})
    checks = {c.name: c.status for c in r.checks}
    assert checks == {"size_bytes": "skipped", "params": "skipped", "flops": "skipped", "validation": "fail"}
    assert r.decision == gate.REGRESSION


def test_a_bench_status_ok_is_not_taken_for_a_validation():
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), baseline_meta={"status": "ok"},
                    candidate_meta={"status": "ok"})
    assert {c.name: c.status for c in r.checks}["validation"] == "skipped"
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), candidate_meta={"status": "failed"})
    assert {c.name: c.status for c in r.checks}["validation"] == "fail"


def test_different_threads_or_batch_give_a_warning_check():
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2),
                    baseline_meta={"runtime": "litert", "threads": 1, "batch": 1},
                    candidate_meta={"runtime": "litert", "threads": 2, "batch": 1})
    (warn,) = [c for c in r.checks if c.name == "same_settings"]
    assert warn.status == "warn" and warn.reason.endswith("threads 1 vs 2")


def test_different_devices_give_a_warning_check():
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2),
                    baseline_meta={"device": {"cpu_model": "A", "threads": 1}},
                    candidate_meta={"device": {"cpu_model": "A", "threads": 4}})
    warn = [c for c in r.checks if c.name == "same_device"]
    assert warn and warn[0].status == "warn" and "threads" in warn[0].reason


@pytest.mark.parametrize("text,value", [("10%", 0.10), ("10", 0.10), ("2.5 %", 0.025), ("0", 0.0)])
def test_parse_percent(text, value):
    assert gate.parse_percent(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["ten", "-5%", "nan"])
def test_parse_percent_rejects_garbage(text):
    with pytest.raises(UserError):
        gate.parse_percent(text)


def test_interleaving_alternates_calls_and_counts_runs():
    calls = []
    a, b = gate.measure_interleaved(lambda: calls.append("a"), lambda: calls.append("b"),
                                    warmup=2, min_time=0.0, min_runs=40)
    assert len(a) == len(b) == 40
    timed = calls[4:]
    # Every round times each side exactly once, in a random order per round.
    assert all(sorted(timed[i:i + 2]) == ["a", "b"] for i in range(0, len(timed), 2))
    assert 5 < sum(timed[i] == "a" for i in range(0, len(timed), 2)) < 35


# ------------------------------------------------------------------------------- bench JSON input
def test_bench_json_with_several_results_is_refused(tmp_path):
    p = tmp_path / "two.json"
    p.write_text(json.dumps({"results": [{"samples_ms": [1, 2]}, {"samples_ms": [1, 2]}]}))
    with pytest.raises(UserError, match="found 2"):
        gate.load_bench_json(str(p))


def test_one_bench_file_with_both_results_is_selected_by_index(tmp_path):
    base, cand = latencies(1.0, 80, 1), latencies(1.4, 80, 2)
    p = tmp_path / "both.json"
    p.write_text(json.dumps({"schema": 1, "env": {"cpu_model": "X", "threads": 1},
                             "results": [{"path": "a.tflite", "samples_ms": base, "size_bytes": 10},
                                         {"path": "b.tflite", "samples_ms": cand, "size_bytes": 10}]}))
    r = gate.run_gate(f"{p}#0", f"{p}#1")
    assert r.decision == gate.REGRESSION and r.n_baseline == r.n_candidate == 80
    assert not [c for c in r.checks if c.name == "same_device"]   # same env on both sides
    with pytest.raises(UserError, match="has 2 results"):
        gate.load_bench_json(f"{p}#2")


def test_results_without_raw_samples_are_refused_with_the_reason(tmp_path):
    p = tmp_path / "adb.json"
    p.write_text(json.dumps({"results": [{"path": "m.tflite", "samples_ms": [], "latency_ms": {"mean": 3}}]}))
    with pytest.raises(UserError, match="no raw samples_ms"):
        gate.load_bench_json(str(p))


def test_mixing_json_and_artifact_is_refused(tmp_path):
    p = write_bench(tmp_path / "a.json", latencies(1.0, 50, 1))
    with pytest.raises(UserError, match="not one of each"):
        gate.run_gate(p, str(tmp_path / "b.tflite"))


def test_confirm_needs_artifacts(tmp_path):
    a = write_bench(tmp_path / "a.json", latencies(1.0, 50, 1))
    b = write_bench(tmp_path / "b.json", latencies(1.0, 50, 2))
    with pytest.raises(UserError, match="--confirm"):
        gate.run_gate(a, b, confirm=True)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_pass_exits_0_with_json(tmp_path):
    a = write_bench(tmp_path / "a.json", latencies(1.0, 120, 1), size_bytes=1000)
    b = write_bench(tmp_path / "b.json", latencies(1.02, 120, 2), size_bytes=1000)
    res = CliRunner().invoke(cli, ["gate", "--baseline", a, "--candidate", b, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] == "pass"
    assert doc["n_baseline"] == doc["n_candidate"] == 120
    assert set(doc) >= {"decision", "median_ratio", "p_value", "n_baseline", "n_candidate", "checks"}
    assert {"name": "size_bytes", "status": "pass"}.items() <= doc["checks"][0].items()


def test_cli_regression_exits_3(tmp_path):
    a = write_bench(tmp_path / "a.json", latencies(1.0, 120, 1))
    b = write_bench(tmp_path / "b.json", latencies(1.3, 120, 2))
    res = CliRunner().invoke(cli, ["gate", "--baseline", a, "--candidate", b, "--max-slowdown", "10%"])
    assert res.exit_code == 3, res.output
    assert "gate: REGRESSION" in res.stdout and "Mann-Whitney" in res.stdout


def test_cli_threshold_above_the_slowdown_passes(tmp_path):
    a = write_bench(tmp_path / "a.json", latencies(1.0, 120, 1))
    b = write_bench(tmp_path / "b.json", latencies(1.3, 120, 2))
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", b, "--max-slowdown", "50%"])
    assert res.exit_code == 0, res.output


def test_cli_too_few_samples_exits_4_with_a_warning(tmp_path):
    a = write_bench(tmp_path / "a.json", latencies(1.0, 12, 1))
    b = write_bench(tmp_path / "b.json", latencies(1.0, 12, 2))
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", b, "--json"])
    assert res.exit_code == 4
    assert json.loads(res.stdout)["decision"] == "inconclusive"
    assert "too few samples" in res.stderr


def test_cli_bad_percentage_is_a_usage_error(tmp_path):
    a = write_bench(tmp_path / "a.json", latencies(1.0, 40, 1))
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", a, "--max-slowdown", "lots"])
    assert res.exit_code == 2
    assert "not a percentage" in res.stderr


def test_cli_missing_file_is_one_line_exit_2(tmp_path, capsys):
    from optkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gate", "-a", str(tmp_path / "nope.json"), "-b", str(tmp_path / "nope2.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("optkit: error: cannot read") and err.count("\n") == 1


# --------------------------------------------------------------- artifacts measured now, interleaved
def test_cli_measures_two_artifacts_interleaved_finds_a_real_slowdown_and_confirms_it(tmp_path):
    from tiny_onnx import tiny_onnx

    fast = tiny_onnx(tmp_path / "fast.onnx", hidden=16)
    slow = tiny_onnx(tmp_path / "slow.onnx", hidden=4096)     # ~250x the multiply-adds
    res = CliRunner().invoke(cli, ["gate", "-a", fast, "-b", slow, "--batch", "64", "--threads", "1",
                                   "--min-time", "0.2", "--warmup", "3", "--max-growth", "100000%", "--confirm",
                                   "--json"])
    assert res.exit_code == 3, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] == "regression" and doc["median_ratio"] > 2 and doc["p_value"] < 1e-6
    assert doc["n_baseline"] == doc["n_candidate"] >= 30
    assert doc["confirmation"]["decision"] == "regression" and "confirmed by a rerun" in doc["decided_by"]
    size = next(c for c in doc["checks"] if c["name"] == "size_bytes")
    assert size["status"] == "pass" and size["candidate"] > size["baseline"]


def test_cli_same_model_against_itself_passes(tmp_path):
    from tiny_onnx import tiny_onnx

    a = tiny_onnx(tmp_path / "a.onnx", hidden=256)
    b = tiny_onnx(tmp_path / "b.onnx", hidden=256)            # same bytes, another file
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", b, "--batch", "16", "--threads", "1",
                                   "--min-time", "0.2", "--warmup", "3", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] == "pass" and 0.8 < doc["median_ratio"] < 1.25
    assert {c["name"]: c["status"] for c in doc["checks"]}["size_bytes"] == "pass"


def test_cli_artifact_that_is_not_a_model_is_one_line_exit_2(tmp_path, capsys):
    from optkit.cli import main

    bad = tmp_path / "notes.txt"
    bad.write_text("not a model")
    with pytest.raises(SystemExit) as exc:
        main(["gate", "-a", str(bad), "-b", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "the runner loads .tflite and .onnx files" in err and err.count("\n") == 1
