"""Device fingerprint: what a latency number was measured on.

A latency means little without the CPU, the frequency governor (a phone or a Pi in `powersave`
runs several times slower than in `performance`), a Jetson's power mode and whether
jetson_clocks pinned its clocks, and the threads and delegate/provider of the runtime.

This module is the one implementation (optkit.env builds the report's `env` on it). It uses only
the standard library, never raises (a probe that fails is left out or recorded as unknown) and
runs on Python 3.8, because optkit.remote copies this very file next to the single-file runner
and runs it on the device (`python3 device.py` prints JSON) when optkit is not installed there.

`root` lets tests point the /proc and /sys reads at a directory tree they built.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

SCHEMA = 1


def _read(root: str, path: str) -> Optional[str]:
    try:
        with open(os.path.join(root, path.lstrip("/")), "r", errors="replace") as fh:
            return fh.read().strip()
    except (OSError, ValueError):
        return None


def _cpuinfo_fields(root: str) -> Dict[str, str]:
    fields = {}  # type: Dict[str, str]
    for line in (_read(root, "/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields and value.strip():
            fields[key.strip()] = value.strip()
    return fields


def board(root: str = "/") -> Optional[str]:
    """The board: device-tree model ('NVIDIA Jetson Orin Nano Developer Kit', 'Raspberry Pi 4
    Model B Rev 1.4') or cpuinfo's Model line; None on a PC or VM without one."""
    dt_model = _read(root, "/proc/device-tree/model")
    if dt_model and dt_model.rstrip("\x00"):
        return dt_model.rstrip("\x00")
    return _cpuinfo_fields(root).get("Model")


def cpu_model(root: str = "/") -> Optional[str]:
    """x86 and 32-bit ARM: cpuinfo's 'model name'; Android SoCs: 'Hardware'; else the board name."""
    fields = _cpuinfo_fields(root)
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        if fields.get(key):
            return fields[key]
    name = board(root)
    if name:
        return name
    if os.path.abspath(root) == "/":
        return platform.processor() or platform.machine() or None
    return None


def _cpu_dirs(root: str) -> List[str]:
    base = os.path.join(root, "sys/devices/system/cpu")
    try:
        names = os.listdir(base)
    except OSError:
        return []
    cpus = sorted((n for n in names if re.fullmatch(r"cpu\d+", n)), key=lambda n: int(n[3:]))
    return [os.path.join("/sys/devices/system/cpu", n) for n in cpus]


def cpufreq(root: str = "/") -> Dict[str, Any]:
    """Governor and frequencies of cpu0 (kHz), where the kernel exposes cpufreq."""
    base = "/sys/devices/system/cpu/cpu0/cpufreq/"
    out = {}
    governor = _read(root, base + "scaling_governor")
    if governor:
        out["governor"] = governor
    for name, key in (("scaling_cur_freq", "cur_khz"), ("scaling_min_freq", "min_khz"),
                      ("scaling_max_freq", "max_khz"), ("cpuinfo_max_freq", "hw_max_khz")):
        value = _read(root, base + name)
        if value and value.isdigit():
            out[key] = int(value)
    return out


def is_jetson(root: str = "/") -> bool:
    if os.path.exists(os.path.join(root, "etc/nv_tegra_release")):
        return True
    compatible = _read(root, "/proc/device-tree/compatible") or ""
    return "nvidia,tegra" in compatible


def parse_nvpmodel(text: str) -> Optional[Dict[str, Any]]:
    """`nvpmodel -q` prints 'NV Power Mode: MAXN' then the mode id on the next line."""
    match = re.search(r"NV Power Mode:[ \t]*(\S+)[ \t]*(?:\r?\n[ \t]*(\d+))?", text or "")
    if not match:
        return None
    return {"name": match.group(1), "id": int(match.group(2)) if match.group(2) else None}


def jetson_clocks_state(root: str = "/") -> str:
    """'on' when every online CPU's minimum frequency is pinned to its maximum, else 'off'.

    That pinning is what jetson_clocks does; reading it from sysfs needs no root, unlike
    `jetson_clocks --show`.
    """
    pinned = []
    for cpu in _cpu_dirs(root):
        if _read(root, cpu + "/online") == "0":
            continue
        lo = _read(root, cpu + "/cpufreq/scaling_min_freq")
        hi = _read(root, cpu + "/cpufreq/scaling_max_freq")
        if lo is None or hi is None:
            continue
        pinned.append(lo == hi)
    if not pinned:
        return "unknown"
    return "on" if all(pinned) else "off"


def jetson(root: str = "/", run_nvpmodel: bool = True) -> Optional[Dict[str, Any]]:
    if not is_jetson(root):
        return None
    info = {"jetson_clocks": jetson_clocks_state(root)}  # type: Dict[str, Any]
    release = _read(root, "/etc/nv_tegra_release")
    if release:
        info["l4t"] = release.splitlines()[0][:120]
    tool = shutil.which("nvpmodel") if run_nvpmodel else None
    if tool:
        try:
            proc = subprocess.run([tool, "-q"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  universal_newlines=True, timeout=10)
            mode = parse_nvpmodel(proc.stdout)
            if mode:
                info["power_mode"] = mode
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def fingerprint(threads: Optional[int] = None, runtime: Optional[str] = None,
                delegate: Optional[str] = None, root: str = "/") -> Dict[str, Any]:
    """Everything above as one JSON-ready dict; keys with nothing to say are left out."""
    fp = {
        "cpu_model": cpu_model(root),
        "board": board(root),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "python": platform.python_version(),
    }  # type: Dict[str, Any]
    freq = cpufreq(root)
    if freq:
        fp["cpufreq"] = freq
    jet = jetson(root)
    if jet:
        fp["jetson"] = jet
    if threads is not None:
        fp["threads"] = threads
    if runtime is not None:
        fp["runtime"] = runtime
    if delegate is not None:
        fp["delegate"] = delegate
    return {k: v for k, v in fp.items() if v is not None}


if __name__ == "__main__":
    # `python3 device.py` (or `python3 - < device.py`) prints the fingerprint as JSON.
    json.dump(fingerprint(), sys.stdout)
    sys.stdout.write("\n")
