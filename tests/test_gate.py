"""The latency gate: statistics on sample sets, bench JSON inputs, and the CLI's exit codes."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from optkit import gate
from optkit.cli import cli
from optkit.errors import UserError

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


def latencies(median_ms, n, seed, spread=0.08):
    """Right-skewed latencies like a real timer's: lognormal around the median, plus rare spikes."""
    rng = np.random.default_rng(seed)
    x = median_ms * rng.lognormal(0.0, spread, n)
    spikes = rng.random(n) < 0.03
    x[spikes] *= rng.uniform(1.5, 4.0, spikes.sum())
    return x.tolist()


def write_bench(out, samples, **extra):
    result = {"path": "m.tflite", "format": "tflite", "runtime": "litert", "threads": 1, "batch": 1,
              "latency_ms": {"p50": float(np.median(samples)), "n": len(samples)},
              "samples_ms": list(samples)}
    result.update(extra)
    out.write_text(json.dumps({"schema": 1, "env": {}, "results": [result]}))
    return str(out)


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
    assert checks == {"size_bytes": "skipped", "params": "skipped", "flops": "skipped", "validation": "fail",
                      "same_environment": "skipped"}
    assert r.decision == gate.REGRESSION


def test_a_bench_status_ok_is_not_taken_for_a_validation():
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), baseline_meta={"status": "ok"},
                    candidate_meta={"status": "ok"})
    assert {c.name: c.status for c in r.checks}["validation"] == "skipped"
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), candidate_meta={"status": "failed"})
    assert {c.name: c.status for c in r.checks}["validation"] == "fail"


def test_different_threads_or_batch_are_refused_unless_allowed():
    a = {"runtime": "litert", "threads": 1, "batch": 1}
    for other in ({"threads": 2}, {"batch": 8}):
        with pytest.raises(UserError, match="different devices or settings .*(threads 1 vs 2|batch 1 vs 8)"):
            gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), baseline_meta=a,
                        candidate_meta=dict(a, **other))
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), baseline_meta=a,
                    candidate_meta=dict(a, threads=2), allow_env_mismatch=True)
    (warn,) = [c for c in r.checks if c.name == "same_environment"]
    assert warn.status == "warn" and warn.reason.endswith("threads 1 vs 2")


def test_different_devices_are_refused_and_software_changes_only_warned():
    dev = {"cpu_model": "AMD EPYC", "cpu_count": 2, "threads": 1, "packages": {"onnxruntime": "1.20.0"}}
    with pytest.raises(UserError, match="cpu_model 'AMD EPYC' vs 'Cortex-A76'"):
        gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), baseline_meta={"device": dev},
                    candidate_meta={"device": dict(dev, cpu_model="Cortex-A76")})
    with pytest.raises(UserError, match="threads 1 vs 4"):   # threads recorded in the device block
        gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2), baseline_meta={"device": dev},
                    candidate_meta={"device": dict(dev, threads=4)})
    # A runtime upgrade may be the very change under test: go on, and say what differed.
    r = gate.decide(latencies(1.0, 50, 1), latencies(1.0, 50, 2),
                    baseline_meta={"device": dev, "backend_version": "1.20.0"},
                    candidate_meta={"device": dict(dev, packages={"onnxruntime": "1.21.0"}),
                                    "backend_version": "1.21.0"})
    (env,) = [c for c in r.checks if c.name == "same_environment"]
    assert env.status == "warn" and "backend_version '1.20.0' vs '1.21.0'" in env.reason
    assert "onnxruntime 1.20.0 vs 1.21.0" in env.reason


# ------------------------------------------------------------------------------------------ tail
def test_one_call_in_three_3x_slower_is_a_tail_regression_though_the_median_holds():
    base = latencies(1.0, 300, 1)
    cand = latencies(1.0, 300, 2)
    cand = [v * 3 if i % 3 == 0 else v for i, v in enumerate(cand)]
    r = gate.decide(base, cand)
    assert r.median_ratio < 1.10                 # the median alone would pass
    assert r.decision == gate.REGRESSION and r.exit_code == 3
    assert r.statistic == "p90" and r.decided_by.startswith("latency regression in the p90")
    assert r.tail["ratio"] > 2.5 and r.tail["ratio_lower_bound"] > 1.2 and r.tail["significant"]


def test_tail_test_holds_its_false_alarm_rate_on_skewed_and_bimodal_latencies():
    """A/A on 100 seeded pairs of each shape: the bootstrap's one-sided 99% bound rarely clears 1
    (a normal-theory interval cleared it 3-4% of the time on the bimodal shape)."""
    rng = np.random.default_rng(7)

    def bimodal(n):
        x = rng.lognormal(0, 0.05, n)
        x[rng.random(n) < 0.12] *= 2.0   # p90 sits at the gap between the modes
        return x

    skewed = [gate.quantile_shift(latencies(1.0, 150, 2 * i), latencies(1.0, 150, 2 * i + 1)) for i in range(100)]
    gapped = [gate.quantile_shift(bimodal(150), bimodal(150)) for _ in range(100)]
    assert sum(low > 1 for _, low, _ in skewed) <= 3
    assert sum(low > 1 for _, low, _ in gapped) <= 3


def test_an_unproven_tail_excess_is_a_note_and_a_proven_one_a_regression():
    rng = np.random.default_rng(0)
    bulk = [1.0 + 0.001 * i for i in range(26)]
    # Four slow calls in thirty on each side, the candidate's a bit slower: its p90 is 1.23x,
    # but resampling four calls cannot tell that from chance.
    noisy = gate.decide(list(rng.permutation(bulk + [1.3] * 4)), list(rng.permutation(bulk + [1.6] * 4)))
    assert noisy.tail["ratio"] > 1.2 and not noisy.tail["significant"] and noisy.tail["ratio_lower_bound"] < 1
    assert noisy.decision == gate.PASS and noisy.rerun is None
    assert "note: the p90 looks 1.23x slower, not proven: about 120 runs a side would tell" in noisy.decided_by
    # The same shape with 400 calls a side: proven.
    base = latencies(1.0, 400, 3)
    cand = [v * 1.5 if v > np.quantile(base, 0.8) else v for v in base]   # the slowest fifth
    clear = gate.decide(base, list(rng.permutation(cand)))
    assert clear.median_ratio == pytest.approx(1.0)
    assert clear.decision == gate.REGRESSION and clear.statistic == "p90"


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
    assert {c.name: c.status for c in r.checks}["same_environment"] == "pass"   # one env, both sides
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


def test_cli_too_few_samples_exits_4_and_says_exactly_what_to_rerun(tmp_path):
    a = write_bench(tmp_path / "a.json", latencies(1.0, 12, 1))
    b = write_bench(tmp_path / "b.json", latencies(1.0, 12, 2), path="new model.tflite")
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", b, "--json", "--max-slowdown", "5%"])
    assert res.exit_code == 4
    doc = json.loads(res.stdout)
    assert doc["decision"] == "inconclusive" and doc["statistic"] == "samples"
    assert "too few samples" in res.stderr
    assert doc["rerun"] == (f"optkit bench m.tflite --runtime litert --threads 1 --min-runs 30 -o {a} && "
                            f"optkit bench 'new model.tflite' --runtime litert --threads 1 --min-runs 30 -o {b} && "
                            f"optkit gate -a {a} -b {b} --max-slowdown 5%")
    assert doc["rerun"] in res.stderr


def test_rerun_for_one_file_holding_both_results_is_one_bench_command(tmp_path):
    p = tmp_path / "both.json"
    base = latencies(1.0, 20, 1)
    p.write_text(json.dumps({"schema": 1, "env": {}, "results": [
        {"path": "a.onnx", "runtime": "onnxruntime", "threads": 2, "batch": 4, "samples_ms": base},
        {"path": "b.onnx", "runtime": "onnxruntime", "threads": 2, "batch": 4, "samples_ms": base}]}))
    r = gate.run_gate(f"{p}#0", f"{p}#1")
    assert r.rerun == (f"optkit bench a.onnx b.onnx --runtime onnxruntime --threads 2 --batch 4 "
                       f"--min-runs 30 -o {p} && optkit gate -a '{p}#0' -b '{p}#1'")


def test_cli_refuses_results_from_different_thread_counts_with_exit_2(tmp_path, capsys):
    from optkit.cli import main

    a = write_bench(tmp_path / "a.json", latencies(1.0, 60, 1))
    b = write_bench(tmp_path / "b.json", latencies(1.0, 60, 2), threads=4)
    with pytest.raises(SystemExit) as exc:
        main(["gate", "-a", a, "-b", b])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("optkit: error: ") and "threads 1 vs 4" in err
    assert err.count("\n") == 1
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", b, "--allow-env-mismatch"])
    assert res.exit_code == 0 and "optkit: warning: baseline and candidate were measured differently" in res.stderr


def test_cli_tail_regression_exits_3_and_names_the_p90(tmp_path):
    cand = [v * 3 if i % 3 == 0 else v for i, v in enumerate(latencies(1.0, 200, 2))]
    a = write_bench(tmp_path / "a.json", latencies(1.0, 200, 1))
    b = write_bench(tmp_path / "b.json", cand)
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", b])
    assert res.exit_code == 3, res.output
    assert "latency regression in the p90" in res.stdout and "  p90 " in res.stdout
    res = CliRunner().invoke(cli, ["gate", "-a", a, "-b", b, "--max-tail-slowdown", "500%"])
    assert res.exit_code == 0, res.output


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


@pytest.mark.slow
def test_default_bench_jsons_of_two_models_1_5x_apart_gate_as_a_regression_not_inconclusive(tmp_path):
    """Issue 16: a ~60 ms model benched with the defaults gave 20 runs, the gate wanted 30 (exit 4).
    Defaults now give at least the gate's minimum, so two such models 1.5x apart are a regression."""
    from tiny_onnx import deep_onnx

    outs = []
    for layers in (10, 15):
        model = deep_onnx(tmp_path / f"deep{layers}.onnx", layers=layers, width=512)
        out = str(tmp_path / f"deep{layers}.json")
        res = CliRunner().invoke(cli, ["bench", model, "--batch", "256", "-o", out])   # default timing
        assert res.exit_code == 0, res.output
        result = json.loads(open(out).read())["results"][0]
        assert len(result["samples_ms"]) >= gate.DEFAULT_MIN_SAMPLES
        outs.append(out)
    res = CliRunner().invoke(cli, ["gate", "-a", outs[0], "-b", outs[1], "--max-growth", "100%", "--json"])
    assert res.exit_code == 3, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] == "regression" and doc["median_ratio"] > 1.2 and "median" in doc["statistic"]
