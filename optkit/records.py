"""The records every part of optkit exchanges, and their JSON shapes (DESIGN.md, schema 1).

Plain dataclasses so that the TF-free side (bench, gate, report) can use them. `to_json()`
gives the stable keys; add keys freely, never rename them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SCHEMA = 1

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
# Written and loaded, but its fidelity could not be proven here (Core ML off macOS; a quantized
# artifact checked on random inputs only). Never shown as `ok`; not a failure either.
UNVERIFIED = "unverified"

# The one list of export precisions (`--quantize`, `--to FMT:Q`, Artifact.quantize). Each exporter's
# PRECISIONS is the subset it supports; optkit.parity has one tolerance per entry.
PRECISIONS = ("none", "dynamic", "float16", "int8")


def _clean(value):
    """dataclass -> JSON-ready dict/list, numpy scalars turned into Python numbers."""
    if dataclasses.is_dataclass(value):
        return {f.name: _clean(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


@dataclass
class Parity:
    """Export fidelity: does an artifact compute what its source computes?"""

    ok: Optional[bool]              # None = could not be checked here (e.g. Core ML on Linux)
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    top1_agreement: Optional[float] = None
    tolerance: Optional[float] = None
    reason: str = ""                # why it failed, or why it is unverified
    batch_sizes: List[int] = field(default_factory=list)
    snr_db: Optional[float] = None  # quantized: worst per-output SNR vs the source (signal centred)
    cosine: Optional[float] = None  # quantized: worst per-output cosine similarity (centred)
    inputs: str = ""                # "data" (real samples) or "random"
    metric: Optional[Dict[str, Any]] = None   # with labels: the task metric, source vs artifact
    source_snr_db: Optional[float] = None     # failed quantized: the source's own SNR under input noise

    def to_json(self):
        return _clean(self)


@dataclass
class Latency:
    runtime: str
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    n: int
    threads: Optional[int] = None
    batch: int = 1

    def to_json(self):
        return _clean(self)


@dataclass
class Artifact:
    """An exported file and what we know about it."""

    format: str
    path: Optional[str]
    quantize: str = "none"
    size_bytes: Optional[int] = None
    gzip_bytes: Optional[int] = None
    status: str = OK                # ok | skipped | failed
    reason: str = ""
    parity: Optional[Parity] = None
    accuracy: Optional[float] = None
    latency_ms: Optional[Latency] = None
    details: Dict[str, Any] = field(default_factory=dict)   # format-specific: op list, delegate, ...
    # int8 only (optkit.quant_debug): {"calibration": {"method", "samples"}, "float_layers": [...],
    # "layers": [{"name", "op", "snr_db", "rmse"}, ...] worst first (with --quant-report), "goal", "cost"}
    quantization: Optional[Dict[str, Any]] = None
    accuracy_n: Optional[int] = None    # labelled samples behind `accuracy`
    miou: Optional[float] = None        # segmentation: mean IoU (accuracy = pixel accuracy)

    def to_json(self):
        return _clean(self)


@dataclass
class Variant:
    """One model state: the baseline, or the result of steps applied to a parent."""

    id: str
    name: str
    parent: Optional[str]
    steps: List[Dict[str, Any]] = field(default_factory=list)   # [{"name", "options", "info"}]
    path: Optional[str] = None
    params: Optional[int] = None
    accuracy: Optional[float] = None
    train_time_per_epoch_s: Optional[float] = None
    inference_ms_per_step: Optional[float] = None
    status: str = OK
    reason: str = ""
    artifacts: List[Artifact] = field(default_factory=list)
    details: Dict[str, Any] = field(default_factory=dict)
    reused: bool = False            # taken from an earlier run into the same folder (--resume)
    accuracy_n: Optional[int] = None    # labelled samples behind `accuracy`
    miou: Optional[float] = None        # segmentation: mean IoU (accuracy = pixel accuracy)

    def to_json(self):
        return _clean(self)
