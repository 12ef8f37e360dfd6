"""Android bench: the benchmark_model log parser on recorded outputs, and adb's failure modes.

The recorded outputs in tests/data/benchmark_model_*.txt follow the tool's real log formats:
current builds (`INFO:` prefixes, p5/median/p95, periodic peak memory), older builds (no prefix,
`Peak memory footprint`), a logcat copy of a GPU-delegate run, and a failed run.
"""
import os
import shutil
import subprocess

import pytest

from optkit import adb
from optkit.errors import RunFailure, UserError

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
