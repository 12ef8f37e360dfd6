"""Benchmark a .tflite on an Android device with TFLite's own `benchmark_model` over adb.

`optkit bench model.tflite --adb SERIAL --benchmark-binary PATH`: the user supplies the
benchmark_model binary built for the device's ABI (we never download binaries at run time).
We push the model and the binary into a fresh directory under /data/local/tmp, run the binary
with `adb -s SERIAL shell`, remove the directory, and parse the tool's log into our bench JSON.

benchmark_model reports aggregates only (count, first, curr, min, max, avg, std and, in newer
builds, p5/median/p95), no per-run times. To give `optkit gate` per-run samples we run it many
times for a short while instead: each process does its `--warmup_runs`, then exactly three timed
runs (`--num_runs=3 --min_secs=0`), and three runs are fully known from its statistics line -
min, median and max in current builds; first, curr and 3 x avg - first - curr in older ones (avg
printed to 6 digits: a few microseconds at most). Processes run in batches, one `adb shell`
loop per batch, until both `--min-runs` samples and `--min-time` seconds of timed runs are in.
The result has the local bench's shape (`samples_ms`, `latency_ms` with p50/p90/p99, ...), so
`optkit gate` takes it; samples also carry each process's start-up, as a deployed app's would.

Quoting: `adb shell` joins its arguments and hands them to the device's /system/bin/sh, so the
remote command is built as ONE string whose variable parts all go through shlex.quote; `adb push`
takes its paths as argv (no shell on either side). TensorFlow-free; Python 3.8 compatible.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from optkit.errors import RunFailure, UserError

DEVICE_TMP = "/data/local/tmp"
DELEGATE_FLAGS = {
    "cpu": [],                     # benchmark_model's default: XNNPACK on CPU in current builds
    "xnnpack": ["--use_xnnpack=true"],
    "none": ["--use_xnnpack=false"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
    "hexagon": ["--use_hexagon=true"],
}
_KERNEL_NAMES = {"TfLiteXNNPackDelegate": "xnnpack", "TfLiteGpuDelegateV2": "gpu",
                 "TfLiteGpuDelegate": "gpu", "TfLiteNnapiDelegate": "nnapi",
                 "TfLiteHexagonDelegate": "hexagon"}

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_STATS = re.compile(r"count=(\d+)(?P<rest>(?:\s+\w+=" + r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?" + r")*)")
_TIMINGS = re.compile(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM
                      + r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM)
_MEM_DELTA = re.compile(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
                        r"init=" + _NUM + r" overall=" + _NUM)
_MEM_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM)
_THREADS = re.compile(r"(?:#threads used for CPU inference|Num threads): \[(\d+)\]")
_REPLACING = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\)")
_APPLIED = re.compile(r"Explicitly applied (\w+) delegate")
_SESSION = re.compile(r"Initialized session in " + _NUM + r"\s*ms")
_MODEL_MB = re.compile(r"The input model file size \(MB\): " + _NUM)
_ERROR = re.compile(r"^(?:\S+:\s*)?ERROR:\s*(.+)$|^E\s+tflite\s*:\s*(.+)$", re.M)


def _stats(line: str) -> Dict[str, float]:
    m = _STATS.search(line)
    out = {"count": float(m.group(1))}
    for key, value in re.findall(r"(\w+)=" + _NUM, m.group("rest")):
        out[key] = float(value)
    return out


def parse_benchmark_output(text: str) -> Dict[str, Any]:
    """benchmark_model's log -> the measured numbers (milliseconds, MB).

    Works for the old format (plain lines, `Peak memory footprint`), the current one (`INFO:`
    prefixes, p5/median/p95, periodic peak memory) and logcat copies (`I tflite  : ...`).
    Raises RunFailure with the tool's own ERROR line when it did not produce timings.
    """
    timings = _TIMINGS.search(text or "")
    if not timings:
        errors = [(m.group(1) or m.group(2)).strip() for m in _ERROR.finditer(text or "")]
        lines = (text or "").strip().splitlines()
        detail = errors[0] if errors else (lines[-1] if lines else "no output")
        raise RunFailure(f"benchmark_model produced no timings: {detail.strip()[:300]}")
    # The steady-state statistics are the last `count=` line with an average before the summary.
    # (The warm-up pass prints one first; --enable_op_profiling prints `Timings (microseconds):
    # count=...` per-op lines after the summary - those are not ours.)
    head = text[:timings.start()]
    stat_lines = [ln for ln in head.splitlines()
                  if _STATS.search(ln) and " avg=" in ln and "Timings (microseconds)" not in ln]
    if not stat_lines:
        raise RunFailure("benchmark_model printed a summary but no run statistics (count=... avg=...)")
    s = _stats(stat_lines[-1])
    us = 1000.0
    init_us, first_us, warmup_us, avg_us = (float(timings.group(i)) for i in range(1, 5))
    latency = {
        "p50": s["median"] / us if "median" in s else None,
        "p90": None,        # benchmark_model does not report it
        "p99": None,
        "p5": s["p5"] / us if "p5" in s else None,
        "p95": s["p95"] / us if "p95" in s else None,
        "mean": s.get("avg", avg_us) / us,
        "std": s["std"] / us if "std" in s else None,
        "min": s["min"] / us if "min" in s else None,
        "max": s["max"] / us if "max" in s else None,
        "n": int(s["count"]),
    }
    out = {"latency_ms": latency, "load_ms": init_us / us, "cold_ms": first_us / us,
           "warmup_mean_ms": warmup_us / us, "run_stats_us": s}
    mem = _MEM_DELTA.search(text)
    peak = _MEM_PEAK.search(text)
    memory = {}
    if mem:
        memory.update(init_mb=float(mem.group(1)), overall_mb=float(mem.group(2)))
    if peak:
        memory["peak_mb"] = float(peak.group(1))
    if memory:
        out["memory_mb"] = memory
        # Same meaning as the runner's peak_rss_mb where the tool measured it; else its max RSS delta.
        out["peak_rss_mb"] = memory.get("peak_mb", memory.get("overall_mb"))
        out["peak_rss_source"] = ("benchmark_model periodic monitoring" if "peak_mb" in memory
                                  else "benchmark_model max RSS delta from tool start")
    threads = _THREADS.findall(text)
    if threads:
        out["threads"] = int(threads[-1])
    replaced = _REPLACING.findall(text)
    applied = _APPLIED.search(text)
    if replaced:
        n, total, kernel = replaced[-1]
        out["delegate"] = _KERNEL_NAMES.get(kernel, kernel)
        out["delegated_nodes"] = f"{n}/{total}"
    elif applied:
        out["delegate"] = applied.group(1).lower()
    else:
        out["delegate"] = "none"
    if "will not be executed by the delegate" in text:
        out["delegate_fallback"] = True   # the delegate was created but declined the graph
    model_mb = _MODEL_MB.search(text)
    if model_mb:
        out["model_size_mb"] = float(model_mb.group(1))
    return out


def parse_props(text: str) -> Dict[str, str]:
    """`key=value` lines (what _DEVICE_PROBE prints) -> dict, empty values dropped."""
    props = {}
    for line in (text or "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and value.strip():
            props[key] = value.strip()
    return props


# One adb shell call: Android model/SoC/OS and cpu0's governor, as key=value lines.
_DEVICE_PROBE = ("echo model=$(getprop ro.product.model); echo soc=$(getprop ro.board.platform); "
                 "echo android=$(getprop ro.build.version.release); echo abi=$(getprop ro.product.cpu.abi); "
                 "echo governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null); "
                 "echo cpu_count=$(ls -d /sys/devices/system/cpu/cpu[0-9]* 2>/dev/null | wc -l)")


class ADB(object):
    def __init__(self, serial: str, adb: str = "adb"):
        exe = shutil.which(adb)
        if exe is None:
            raise UserError("adb not found: install Android platform-tools (e.g. apt-get install adb) "
                            "and put adb on PATH")
        if not serial or serial.startswith("-") or re.search(r"\s", serial):
            raise UserError(f"bad adb serial {serial!r} (see `adb devices`)")
        self.exe, self.serial = exe, serial

    def run(self, args: Sequence[str], timeout: float, what: str) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run([self.exe, "-s", self.serial] + list(args), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailure(f"{what} on {self.serial} timed out after {timeout:.0f} s") from None
        out = proc.stdout or ""
        if proc.returncode != 0 and re.search(r"device '.*' not found|no devices/emulators found|"
                                              r"device offline|device unauthorized", out):
            raise UserError(f"adb: {_last_line(out)} (check `adb devices`)")
        return proc

    def shell(self, command: str, timeout: float, what: str) -> subprocess.CompletedProcess:
        # adb joins shell arguments with spaces for the device's sh: pass one pre-quoted string.
        return self.run(["shell", command], timeout, what)


def _last_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


# Timed runs per benchmark_model process: the most its statistics line pins down exactly.
RUNS_PER_PROCESS = 3
_RUN_MARK = "@@optkit-run@@"


def samples_from_stats(stats: Dict[str, float]) -> List[float]:
    """The individual run times (ms) behind one statistics line of at most three runs."""
    n = int(stats["count"])
    if n == 1:
        values = [stats["first"]]
    elif n == 2:
        values = [stats["first"], stats["curr"]]
    elif n == 3 and "median" in stats:
        values = [stats["min"], stats["median"], stats["max"]]
    elif n == 3:
        values = [stats["first"], 3 * stats["avg"] - stats["first"] - stats["curr"], stats["curr"]]
    else:
        raise RunFailure(f"benchmark_model ran {n} timed runs; per-run times are known for at most "
                         f"{RUNS_PER_PROCESS} (is --min_secs ignored by this build?)")
    return [round(v / 1000.0, 6) for v in values]


def split_runs(text: str) -> List[str]:
    """The output of one batch loop -> one log per benchmark_model process."""
    parts = (text or "").split(_RUN_MARK)
    return parts[1:] if len(parts) > 1 else [text or ""]


def collect_runs(run_batch: Callable[[int], str], *, min_runs: int, min_time: float,
                 max_runs: int = 3000, progress=None) -> List[Dict[str, Any]]:
    """Call `run_batch(k)` (k processes, their concatenated logs) until the parsed runs hold
    `min_runs` samples and `min_time` seconds of timed runs; returns the parsed processes."""
    say = progress or (lambda msg: None)
    runs: List[Dict[str, Any]] = []
    samples: List[float] = []
    processes = max(1, math.ceil(min_runs / RUNS_PER_PROCESS))
    while processes > 0:
        say(f"adb: {processes} benchmark_model run(s) of {RUNS_PER_PROCESS} timed calls each")
        for log in split_runs(run_batch(processes)):
            parsed = parse_benchmark_output(log)
            parsed["samples_ms"] = samples_from_stats(parsed["run_stats_us"])
            runs.append(parsed)
            samples += parsed["samples_ms"]
        short_s = min_time - sum(samples) / 1000.0
        need = max(min_runs - len(samples), math.ceil(short_s * 1000.0 / max(min(samples), 1e-6)) if short_s > 0 else 0)
        processes = min(math.ceil(need / RUNS_PER_PROCESS), max(0, (max_runs - len(samples)) // RUNS_PER_PROCESS))
    return runs


def result_from_runs(artifact: str, runs: List[Dict[str, Any]], props: Dict[str, str], serial: str,
                     threads: Optional[int], benchmark_binary: str) -> Dict[str, Any]:
    """The bench JSON document for one artifact from its parsed benchmark_model processes."""
    from optkit import runner

    first = runs[0]
    samples = [v for r in runs for v in r["samples_ms"]]
    stats = runner.summarize([v / 1000.0 for v in samples])
    used_threads = first.get("threads", threads)
    device = {"cpu_model": props.get("soc"), "model": props.get("model"), "android": props.get("android"),
              "abi": props.get("abi"), "system": "Android", "serial": serial,
              "threads": used_threads, "runtime": "tflite benchmark_model", "delegate": first.get("delegate")}
    if props.get("governor"):
        device["cpufreq"] = {"governor": props["governor"]}
    if props.get("cpu_count", "").isdigit():
        device["cpu_count"] = int(props["cpu_count"])
    device = {k: v for k, v in device.items() if v is not None}
    median = lambda key: sorted(r[key] for r in runs)[len(runs) // 2]  # noqa: E731
    result = {k: v for k, v in first.items() if k not in ("latency_ms", "run_stats_us", "samples_ms",
                                                          "load_ms", "cold_ms", "warmup_mean_ms")}
    result.update({
        "path": artifact, "format": "tflite", "runtime": "benchmark_model",
        "backend": "tflite benchmark_model (adb)", "threads": used_threads, "batch": None,
        "size_bytes": os.path.getsize(artifact), "samples_ms": stats.pop("samples_ms"), "latency_ms": stats,
        # Per process: model load and first inference, the median over the processes.
        "load_ms": median("load_ms"), "cold_ms": median("cold_ms"),
        "sampling": {"processes": len(runs), "timed_runs_per_process": RUNS_PER_PROCESS,
                     "warmup_mean_ms": median("warmup_mean_ms")},
        "status": "ok", "reason": "", "adb_serial": serial, "benchmark_binary": benchmark_binary,
        "timed_call": "benchmark_model run (Interpreter::Invoke)", "device": device})
    return {"schema": 1, "env": {"device": device, "adb_serial": serial}, "results": [result]}


def bench_adb(artifact, serial: str, benchmark_binary, *, threads: Optional[int] = None,
              warmup: int = 10, min_time: float = 1.0, min_runs: int = 50, delegate: str = "cpu",
              extra_args: Sequence[str] = (), adb: str = "adb", timeout: float = 600.0,
              progress=None) -> Dict[str, Any]:
    """Run benchmark_model for one .tflite on device SERIAL, repeated short runs until `min_runs`
    samples and `min_time` seconds; returns bench JSON with per-run `samples_ms`."""
    say = progress or (lambda msg: None)
    artifact, benchmark_binary = os.fspath(artifact), os.fspath(benchmark_binary)
    if not os.path.isfile(artifact):
        raise UserError(f"no such artifact: {artifact}")
    if not artifact.lower().endswith(".tflite"):
        raise UserError(f"benchmark_model runs .tflite files, not {os.path.basename(artifact)}")
    if not os.path.isfile(benchmark_binary):
        raise UserError(f"no such benchmark_model binary: {benchmark_binary} "
                        "(build //tensorflow/lite/tools/benchmark:benchmark_model for the device's ABI)")
    if delegate not in DELEGATE_FLAGS:
        raise UserError(f"unknown delegate {delegate!r} (choose from {', '.join(DELEGATE_FLAGS)})")
    dev = ADB(serial, adb)
    remote_dir = f"{DEVICE_TMP}/optkit-{secrets.token_hex(6)}"
    remote_model = remote_dir + "/" + os.path.basename(artifact)
    remote_bin = remote_dir + "/benchmark_model"
    proc = dev.shell(f"mkdir -p {shlex.quote(remote_dir)}", 60, "creating the device temp dir")
    if proc.returncode != 0:
        raise RunFailure(f"adb -s {serial}: could not create {remote_dir}: {_last_line(proc.stdout)}")
    try:
        for local, remote in ((artifact, remote_model), (benchmark_binary, remote_bin)):
            say(f"adb: pushing {os.path.basename(local)} to {serial}")
            proc = dev.run(["push", local, remote], timeout, "adb push")
            if proc.returncode != 0:
                raise RunFailure(f"adb push to {serial} failed: {_last_line(proc.stdout)}")
        dev.shell(f"chmod 755 {shlex.quote(remote_bin)}", 60, "chmod")
        # Exactly RUNS_PER_PROCESS timed runs after `warmup` warm-up runs, no time minimum.
        argv = [remote_bin, "--graph=" + remote_model, f"--warmup_runs={int(warmup)}", "--warmup_min_secs=0",
                f"--num_runs={RUNS_PER_PROCESS}", "--min_secs=0"]
        if threads is not None:
            argv.append(f"--num_threads={int(threads)}")
        argv += DELEGATE_FLAGS[delegate] + [str(a) for a in extra_args]
        one = " ".join(shlex.quote(a) for a in argv)

        def run_batch(k: int) -> str:
            # One shell loop per batch; 2>&1 keeps each process' log after its own marker.
            # (The list is spelled out: old Android shells have no `seq`.)
            loop = f"for i in {' '.join(str(i) for i in range(int(k)))}; do echo {_RUN_MARK}; {one} 2>&1; done"
            return dev.shell(loop, timeout, "benchmark_model").stdout

        runs = collect_runs(run_batch, min_runs=min_runs, min_time=min_time, progress=say)
        props = parse_props(dev.shell(_DEVICE_PROBE, 60, "reading the device fingerprint").stdout)
    finally:
        try:
            dev.shell(f"rm -rf {shlex.quote(remote_dir)}", 60, "removing the device temp dir")
        except (UserError, RunFailure):
            pass
    return result_from_runs(artifact, runs, props, serial, threads, benchmark_binary)
