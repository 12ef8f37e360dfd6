"""Which steps are kept, and which artifact a run hands to the user (`selected`).

A step is kept only when it helps: its variant is scored against its parent on the validation
split, and one that loses more than the tolerance (default 1 point, `--max-accuracy-drop`) is
`rejected` with both numbers; later steps then build on the parent's model. The test split
stays out of every decision (it only reports).

`selected` is what the run recommends: among the exported artifacts whose test accuracy is within
the tolerance of the baseline's (on data-less runs: whose outputs matched their model), the one
with the lowest latency on its runtime, and of artifacts within LATENCY_TIE of that, the smallest.
Pure functions on plain records: nothing here imports TensorFlow.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

DEFAULT_TOLERANCE_POINTS = 1.0
REJECTED = "rejected"
# Latencies within 5% are a tie on this noisy machine (runs vary by tens of percent between
# repetitions, STACK.md; two artifacts timed in one run rarely differ by less for a real reason).
LATENCY_TIE = 1.05


def judge(val_accuracy: Optional[float], parent_val_accuracy: Optional[float],
          tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> Dict[str, Any]:
    """{"kept": bool, "reason": str, "drop_points": float|None} for a variant against its parent."""
    if val_accuracy is None or parent_val_accuracy is None:
        return {"kept": True, "drop_points": None,
                "reason": "kept: no validation score to compare (no --data)"}
    drop = 100.0 * (parent_val_accuracy - val_accuracy)
    numbers = (f"validation accuracy {100 * val_accuracy:.1f}% vs its parent's "
               f"{100 * parent_val_accuracy:.1f}% ({-drop:+.1f} points; tolerance {tolerance_points:g})")
    if drop > tolerance_points + 1e-9:
        return {"kept": False, "drop_points": round(drop, 2), "reason": f"rejected: {numbers}"}
    return {"kept": True, "drop_points": round(drop, 2), "reason": f"kept: {numbers}"}


def select(variants: Iterable[dict], baseline_accuracy: Optional[float],
           tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> Optional[Dict[str, Any]]:
    """The artifact to ship, from report.json-shaped variants; None when nothing qualifies."""
    candidates = []
    for v in variants:
        if v.get("status", "ok") != "ok":
            continue
        for a in v.get("artifacts") or []:
            latency = (a.get("latency_ms") or {}).get("p50")
            if a.get("status", "ok") != "ok" or latency is None:
                continue
            if not _within(a, baseline_accuracy, tolerance_points):
                continue
            candidates.append((float(latency), a.get("size_bytes") or 0, v, a))
    if not candidates:
        return None
    fastest = min(c[0] for c in candidates)
    latency, size, v, a = min((c for c in candidates if c[0] <= fastest * LATENCY_TIE),
                              key=lambda c: (c[1], c[0]))
    label = a.get("format", "?") + ("" if a.get("quantize") in (None, "none") else f":{a['quantize']}")
    return {"variant": v.get("name"), "variant_id": v.get("id"), "artifact": label, "path": a.get("path"),
            "accuracy": a.get("accuracy"), "accuracy_n": a.get("accuracy_n"),
            "baseline_accuracy": baseline_accuracy, "latency_ms": latency,
            "runtime": (a.get("latency_ms") or {}).get("runtime"), "size_bytes": a.get("size_bytes"),
            "gzip_bytes": a.get("gzip_bytes"), "tolerance_points": tolerance_points,
            "rule": f"fastest artifact with accuracy >= baseline - {tolerance_points:g} points "
                    f"(latencies within {100 * (LATENCY_TIE - 1):.0f}% tie; the smaller file wins)"}


def _within(artifact: dict, baseline_accuracy, tolerance_points) -> bool:
    accuracy = artifact.get("accuracy")
    if baseline_accuracy is None or accuracy is None:
        # No labelled data: the artifact must at least compute what its model computes.
        return baseline_accuracy is None and (artifact.get("parity") or {}).get("ok") is not False
    return 100.0 * (baseline_accuracy - accuracy) <= tolerance_points + 1e-9


def closing_line(selected: Optional[dict]) -> str:
    if not selected:
        return "selected: nothing - no artifact ran within the accuracy tolerance (see the table)"
    acc = "" if selected.get("accuracy") is None else (
        f", accuracy {100 * selected['accuracy']:.1f}%"
        + ("" if selected.get("baseline_accuracy") is None else f" (baseline {100 * selected['baseline_accuracy']:.1f}%)"))
    size = "" if not selected.get("size_bytes") else f", {selected['size_bytes'] / 1e6:.2f} MB"
    return (f"selected: {selected['variant']} {selected['artifact']}{acc}, "
            f"{selected['latency_ms']:.3g} ms on {selected.get('runtime') or '?'}{size} -> {selected.get('path')}")
