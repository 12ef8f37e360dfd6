"""Were two latency measurements taken alike? What must match before `optkit gate` compares them.

A bench result carries its settings (runtime, threads, batch) and a device fingerprint
(optkit.device / optkit.env, or the Android properties optkit.adb reads). Two kinds of difference:

  * refused - a different device (CPU, board, core count, phone model/SoC, serial), a Jetson in
              another power mode or clock state, other threads or another batch size. These are
              never the change under test; latencies measured so do not compare (exit 2).
  * warned  - another runtime, runtime version, delegate, OS release, Python, governor or package
              versions. Any of them can be the change a user wants gated (a runtime upgrade, an
              exporter switch), so the gate goes on and says what differed.

A key recorded on one side only is not a difference: older JSON files lack some of them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

# Device fingerprint keys naming the hardware (optkit.device.fingerprint, optkit.adb's device).
HARDWARE_KEYS = ("cpu_model", "board", "cpu_count", "machine", "system", "model", "soc", "abi", "serial")
SETTING_KEYS = ("threads", "batch")
# Software around the model: may be what changed on purpose.
SOFTWARE_KEYS = ("runtime", "backend", "backend_version", "delegate")
DEVICE_SOFTWARE_KEYS = ("release", "python", "android", "optkit")


def _both(a: Dict[str, Any], b: Dict[str, Any], key: str):
    va, vb = a.get(key), b.get(key)
    if va is None or vb is None or va == vb:
        return None
    return f"{key} {va!r} vs {vb!r}" if isinstance(va, str) or isinstance(vb, str) else f"{key} {va} vs {vb}"


def _nested(a: Dict[str, Any], b: Dict[str, Any], *path: str):
    for key in path[:-1]:
        a, b = a.get(key) or {}, b.get(key) or {}
        if not isinstance(a, dict) or not isinstance(b, dict):
            return None
    found = _both(a, b, path[-1])
    return found and found.replace(path[-1], ".".join(path), 1)


def recorded(meta: Dict[str, Any]) -> bool:
    """Whether a result carries anything to compare (settings or a device fingerprint)."""
    return bool(meta.get("device")) or any(meta.get(k) is not None for k in SETTING_KEYS + SOFTWARE_KEYS)


def differences(baseline: Dict[str, Any], candidate: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(refused, warned): readable differences between two bench results' settings and devices."""
    dev_a = baseline.get("device") if isinstance(baseline.get("device"), dict) else {}
    dev_b = candidate.get("device") if isinstance(candidate.get("device"), dict) else {}
    refused = [d for d in (_both(dev_a, dev_b, k) for k in HARDWARE_KEYS) if d]
    refused += [d for d in (_nested(dev_a, dev_b, "jetson", "power_mode", "name"),
                            _nested(dev_a, dev_b, "jetson", "jetson_clocks")) if d]
    for key in SETTING_KEYS:
        # The result's own setting first; a device block may carry the run's threads too.
        a = baseline.get(key, dev_a.get(key))
        b = candidate.get(key, dev_b.get(key))
        found = _both({key: a}, {key: b}, key)
        if found:
            refused.append(found)
    warned = [d for d in (_both(baseline, candidate, k) for k in SOFTWARE_KEYS) if d]
    warned += [d for d in (_both(dev_a, dev_b, k) for k in DEVICE_SOFTWARE_KEYS) if d]
    warned += [d for d in (_nested(dev_a, dev_b, "cpufreq", "governor"),) if d]
    warned += [d for d in (_both(baseline, candidate, "remote"),) if d]
    pa, pb = dev_a.get("packages") or {}, dev_b.get("packages") or {}
    if isinstance(pa, dict) and isinstance(pb, dict):
        warned += [f"{name} {pa[name]} vs {pb[name]}" for name in sorted(set(pa) & set(pb)) if pa[name] != pb[name]]
    return refused, warned
