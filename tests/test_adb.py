"""Android bench: the benchmark_model log parser on recorded outputs, and adb's failure modes.

The recorded outputs in tests/data/benchmark_model_*.txt follow the tool's real log formats:
current builds (`INFO:` prefixes, p5/median/p95, periodic peak memory), older builds (no prefix,
`Peak memory footprint`), a logcat copy of a GPU-delegate run, a failed run, and the short
three-run processes optkit.adb now repeats for per-run samples (one batch loop of three, and an
old-format one without a median).
"""
import os
import shutil
import subprocess

import pytest

from optkit import adb
from optkit.errors import RunFailure, UserError

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

DATA = os.path.join(os.path.dirname(__file__), "data")


def recorded(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        return fh.read()


def test_current_format_gives_steady_state_stats_in_ms_not_the_warmup_pass():
    r = adb.parse_benchmark_output(recorded("benchmark_model_xnnpack.txt"))
    lat = r["latency_ms"]
    assert lat["n"] == 127                      # the timed pass, not the 62-run warm-up pass
    assert lat["mean"] == pytest.approx(7.86531)
    assert lat["p50"] == pytest.approx(7.783) and lat["p5"] == pytest.approx(7.611)
    assert lat["p95"] == pytest.approx(8.520)
    assert (lat["min"], lat["max"], lat["std"]) == pytest.approx((7.593, 11.042, 0.412))
    assert lat["p90"] is None and lat["p99"] is None   # the tool does not report them
    assert r["load_ms"] == pytest.approx(38.412) and r["cold_ms"] == pytest.approx(14.873)
    assert r["memory_mb"] == {"init_mb": 12.8477, "overall_mb": 21.3086, "peak_mb": 27.4453}
    assert r["peak_rss_mb"] == 27.4453
    assert r["threads"] == 4
    assert r["delegate"] == "xnnpack" and r["delegated_nodes"] == "66/66"


def test_legacy_format_with_scientific_notation_and_old_memory_line():
    r = adb.parse_benchmark_output(recorded("benchmark_model_legacy.txt"))
    lat = r["latency_ms"]
    assert lat["n"] == 221
    assert lat["mean"] == pytest.approx(4.51264)        # avg=4.51264e+03 us
    assert lat["p50"] is None                            # old builds print no median
    assert lat["std"] == pytest.approx(0.318)
    assert r["memory_mb"] == {"init_mb": 2.46875, "overall_mb": 11.7461}
    assert r["peak_rss_mb"] == 11.7461 and "delta" in r["peak_rss_source"]
    assert r["threads"] == 2
    assert r["delegate"] == "none"
    assert r["model_size_mb"] == pytest.approx(3.60941)


def test_logcat_copy_of_a_partially_delegated_gpu_run():
    r = adb.parse_benchmark_output(recorded("benchmark_model_gpu_logcat.txt"))
    assert r["latency_ms"]["n"] == 50
    assert r["latency_ms"]["mean"] == pytest.approx(25.2102)
    assert r["latency_ms"]["p50"] == pytest.approx(24.930)
    assert r["load_ms"] == pytest.approx(912.447)
    assert r["delegate"] == "gpu" and r["delegated_nodes"] == "41/44"
    assert r["threads"] == 1


def test_failed_run_raises_with_the_tools_own_first_error():
    with pytest.raises(RunFailure, match="not a valid Flatbuffer"):
        adb.parse_benchmark_output(recorded("benchmark_model_error.txt"))


def test_op_profiling_tables_after_the_summary_are_not_taken_for_the_run_stats():
    text = recorded("benchmark_model_xnnpack.txt") + (
        "INFO: Profiling Info for Benchmark Initialization:\n"
        "Timings (microseconds): count=1 curr=1356 min=1356 max=1356 avg=1356 std=0\n"
        "Timings (microseconds): count=127 first=7700 curr=7600 min=7500 max=9000 avg=7650 std=300\n")
    assert adb.parse_benchmark_output(text)["latency_ms"]["n"] == 127


# ------------------------------------------------------ per-run samples from repeated short runs
def test_three_timed_runs_are_recovered_exactly_from_one_statistics_line():
    current = adb.split_runs(recorded("benchmark_model_repeated.txt"))
    assert len(current) == 3
    runs = [adb.parse_benchmark_output(log)["run_stats_us"] for log in current]
    assert adb.samples_from_stats(runs[1]) == [7.699, 7.803, 9.120]      # min, median, max
    legacy = adb.parse_benchmark_output(recorded("benchmark_model_legacy_3runs.txt"))["run_stats_us"]
    # No median in old builds: first, 3 x avg - first - curr, curr (avg printed to 6 digits).
    assert adb.samples_from_stats(legacy) == pytest.approx([4.507, 4.612, 4.389], abs=1e-4)
    steady = adb.parse_benchmark_output(recorded("benchmark_model_xnnpack.txt"))["run_stats_us"]
    with pytest.raises(RunFailure, match="ran 127 timed runs"):
        adb.samples_from_stats(steady)


def replay(text):
    """The device side of a batch loop, from a recorded one: the first k processes' logs."""
    logs = adb.split_runs(text)
    calls = []

    def run_batch(k):
        calls.append(k)
        assert k <= len(logs), "the recording holds fewer processes than asked for"
        return "".join("@@optkit-run@@" + log for log in logs[:k])

    return run_batch, calls


def test_batches_run_until_both_min_runs_and_min_time():
    run_batch, calls = replay(recorded("benchmark_model_repeated.txt"))
    runs = adb.collect_runs(run_batch, min_runs=6, min_time=0.0)
    assert calls == [2] and sum(len(r["samples_ms"]) for r in runs) == 6
    # 6 runs of ~7.8 ms are 47 ms: 0.06 s of timed runs needs 2 more runs, i.e. one more process.
    run_batch, calls = replay(recorded("benchmark_model_repeated.txt"))
    runs = adb.collect_runs(run_batch, min_runs=6, min_time=0.06)
    assert calls == [2, 1] and sum(len(r["samples_ms"]) for r in runs) == 9


def test_android_result_has_the_local_bench_shape_and_the_gate_takes_it(tmp_path):
    import json

    from click.testing import CliRunner

    from optkit.cli import cli

    model = tmp_path / "mobilenet_v2_int8.tflite"
    model.write_bytes(b"TFL3" * 100)
    run_batch, _ = replay(recorded("benchmark_model_repeated.txt"))
    runs = adb.collect_runs(run_batch, min_runs=9, min_time=0.0)
    props = adb.parse_props("model=Pixel 7\nsoc=gs201\nandroid=14\nabi=arm64-v8a\ncpu_count=8\n")
    doc = adb.result_from_runs(str(model), runs, props, "emulator-5554", 4, "/opt/benchmark_model")
    (r,) = doc["results"]
    assert r["samples_ms"] == [7.712, 7.79, 7.85, 7.699, 7.803, 9.12, 7.731, 7.74, 7.765]
    lat = r["latency_ms"]
    assert lat["n"] == 9 and lat["p50"] == pytest.approx(7.765) and lat["max"] == pytest.approx(9.12)
    assert lat["p90"] is not None and lat["p99"] is not None    # now computed from the samples
    assert r["load_ms"] == pytest.approx(38.412) and r["cold_ms"] == pytest.approx(14.873)
    assert r["threads"] == 4 and r["delegate"] == "xnnpack" and r["sampling"]["processes"] == 3
    assert r["device"]["model"] == "Pixel 7" and r["device"]["serial"] == "emulator-5554"
    path = tmp_path / "android.json"
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, ["gate", "-a", str(path), "-b", str(path), "--min-samples", "9", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_baseline"] == 9
    # With the default minimum: inconclusive, and the rerun is the adb bench with enough runs.
    res = CliRunner().invoke(cli, ["gate", "-a", str(path), "-b", str(path), "--json"])
    assert res.exit_code == 4
    assert json.loads(res.stdout)["rerun"].startswith(
        f"optkit bench {model} --threads 4 --adb emulator-5554 --benchmark-binary /opt/benchmark_model "
        f"--min-runs 30 -o {path}")


def test_device_props_parse_and_drop_empty_values():
    props = adb.parse_props("model=Pixel 7\nsoc=gs201\nandroid=14\nabi=arm64-v8a\ngovernor=\ncpu_count=8\n")
    assert props == {"model": "Pixel 7", "soc": "gs201", "android": "14", "abi": "arm64-v8a", "cpu_count": "8"}


def test_missing_adb_is_a_clear_user_error(tmp_path, monkeypatch):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    monkeypatch.setenv("PATH", str(tmp_path))       # a PATH on which there is no adb
    with pytest.raises(UserError, match="adb not found: install Android platform-tools"):
        adb.bench_adb(str(model), "emulator-5554", str(binary))


def test_inputs_are_checked_before_touching_a_device(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(UserError, match="runs .tflite files"):
        adb.bench_adb(str(model), "emulator-5554", str(tmp_path / "benchmark_model"))
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"TFL3")
    with pytest.raises(UserError, match="no such benchmark_model binary"):
        adb.bench_adb(str(tfl), "emulator-5554", str(tmp_path / "nope"))


@pytest.mark.parametrize("serial", ["-H evil", "a b", ""])
def test_bad_serials_are_refused(serial):
    if shutil.which("adb") is None:
        pytest.skip("adb not installed")
    with pytest.raises(UserError, match="bad adb serial"):
        adb.ADB(serial)


def test_real_adb_with_an_unknown_serial_says_device_not_found(tmp_path):
    if shutil.which("adb") is None:
        pytest.skip("adb not installed (apt-get install adb)")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    try:
        with pytest.raises(UserError, match="not found|no devices"):
            adb.bench_adb(str(model), "optkit-no-such-device", str(binary), timeout=60)
    finally:
        # adb started its server daemon for this; stop the one we started.
        subprocess.run(["adb", "kill-server"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
