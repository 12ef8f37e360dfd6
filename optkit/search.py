"""Accuracy-aware search: `optimize --max-accuracy-drop PCT [--budget MIN | --trials N]`.

Tries techniques and strengths on the baseline, measures every candidate on this machine, and
returns the best one that keeps top-1 accuracy within PCT points of the baseline, plus the Pareto
set over (gzip size, batch-1 latency, accuracy). The best-so-far and the Pareto set are returned
and marked in the report even when no candidate meets the goal (then `met` is false and "best" is
the candidate closest to the goal).

Order and early stopping. Families run cheapest first: post-training precisions of the baseline
(no training), then rewrites, then pruning and clustering at increasing strength, then QAT.
Inside a family, strengths go from gentle to aggressive; once a strength misses the goal, the
stronger ones are hopeless (more sparsity / fewer clusters do not win accuracy back) and are
skipped. A candidate whose Keras model already misses the goal is not exported at all.
Then the strongest pruning and clustering that kept accuracy are stacked with QAT (PQAT, CQAT,
and prune -> cluster -> QAT = PCQAT), each link a variant of its own.
The budget (minutes, counted from the start of the run, baseline training included) and the
trial count are checked before each candidate; a candidate in progress is finished.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from optkit import plan as plan_mod
from optkit.records import OK, SKIPPED

# This module drives optkit.optimize.Pipeline through its public surface only (add_variant,
# add_export, the record accessors, mark): the pipeline owns the plan and the records.


@dataclass
class Family:
    name: str
    step: Optional[str] = None                          # None: export-only candidates of the baseline
    strengths: List[Dict[str, Any]] = field(default_factory=lambda: [{}])
    exports: Tuple[str, ...] = ()                       # export-only family: the specs to try


# Post-training precisions first: they cost a conversion each and no training.
FAMILIES = [
    Family("precision", exports=("tflite", "tflite:int8", "tflite:dynamic", "onnx", "tflite:float16",
                                 "onnx:int8")),
    Family("pooling", "pooling"),
    Family("separable", "separable"),
    Family("prune", "prune", [{"sparsity": 0.5}, {"sparsity": 0.75}, {"sparsity": 0.9}]),
    Family("cluster", "cluster", [{"clusters": 32}, {"clusters": 16}, {"clusters": 8}]),
    Family("qat", "qat"),
]

# What a trained candidate is exported to, by objective: the smallest file, or the fastest runtime.
EXPORTS_FOR = {"size": ("tflite:int8",), "latency": ("tflite", "onnx")}
# QAT models only become int8 TFLite.
EXPORTS_FOR_STEP = {"qat": ("tflite:int8",)}


def run(pipe) -> dict:
    """Search from the pipeline's baseline (already built and measured); returns report["search"]."""
    from optkit import steps as steps_mod

    plan = pipe.plan
    spec = plan.search
    base_spec = plan.baseline
    baseline = pipe.baseline_record()
    start = getattr(pipe, "started", None) or time.perf_counter()
    state = {"tried": 0}
    stopped, skipped = None, []
    known_steps = steps_mod.registry()
    kept: Dict[str, Tuple[plan_mod.VariantSpec, Dict[str, Any]]] = {}   # family -> strongest that met the goal

    def out_of_budget() -> Optional[str]:
        if spec.trials is not None and state["tried"] >= spec.trials:
            return f"trial limit {spec.trials} reached"
        if spec.budget_minutes is not None and time.perf_counter() - start >= spec.budget_minutes * 60:
            return f"time budget {spec.budget_minutes:g} min reached"
        return None

    def candidate(parent: plan_mod.VariantSpec, step_name: str, strength: Dict[str, Any]):
        """Make one variant from `parent`; export it unless its Keras accuracy already misses the goal.
        Returns (spec, met) or None when it failed or is hopeless."""
        state["tried"] += 1
        step = plan_mod.resolve_step(_spec(step_name, strength), epochs=plan.epochs)
        label = _label(step_name, strength)
        name = label if parent.parent is None else f"{parent.name}+{label}"
        vspec = plan_mod.child(parent, step, name=name, exports=[])
        record = pipe.add_variant(vspec, not_applicable=SKIPPED)
        if record.status != OK:
            skipped.append(f"{record.name}: {record.status}: {record.reason}")
            return None
        drop = _drop(baseline.accuracy, record.accuracy)
        if drop is not None and drop > spec.max_accuracy_drop:
            pipe.mark(record.id, search={"hopeless": True, "accuracy_drop_points": round(drop, 2)})
            skipped.append(f"{record.name}: Keras accuracy already {drop:.1f} points below the baseline; "
                           "not exported")
            return None
        for text in EXPORTS_FOR_STEP.get(step_name, EXPORTS_FOR[spec.objective]):
            pipe.add_export(record.id, plan_mod.ExportSpec.parse(text))
        return vspec

    # Phase 1: one technique at a time, gentle to aggressive.
    for family in FAMILIES:
        if stopped:
            break
        if family.step is None:
            for text in family.exports:
                stopped = out_of_budget()
                if stopped:
                    break
                export = plan_mod.ExportSpec.parse(text)
                if export in base_spec.exports:     # already asked for with --to
                    continue
                state["tried"] += 1
                pipe.add_export(baseline.id, export)
            continue
        if family.step not in known_steps:
            skipped.append(f"{family.name}: step '{family.step}' is not available in this build")
            continue
        for strength in family.strengths:
            stopped = out_of_budget()
            if stopped:
                break
            made = candidate(base_spec, family.step, strength)
            if made is None:
                if strength is not family.strengths[-1]:
                    skipped.append(f"stronger {family.name} skipped (hopeless)")
                break
            kept[family.name] = (made, strength)

    # Phase 2: stack the strongest settings that kept accuracy, the way tfmot composes them
    # (prune -> QAT = PQAT, cluster -> QAT = CQAT, prune -> cluster -> QAT = PCQAT).
    if "qat" in known_steps:
        stacks = []
        if "prune" in kept:
            stacks.append((kept["prune"][0], [("qat", {})]))
        if "cluster" in kept:
            stacks.append((kept["cluster"][0], [("qat", {})]))
        if "prune" in kept and "cluster" in kept:
            stacks.append((kept["prune"][0], [("cluster", kept["cluster"][1]), ("qat", {})]))
        for parent, chain in stacks:
            for step_name, strength in chain:
                stopped = stopped or out_of_budget()
                if stopped:
                    break
                parent = candidate(parent, step_name, strength)
                if parent is None:
                    break
            if stopped:
                break

    result = mark(pipe)
    result.update(trials=state["tried"], stopped=stopped, skipped=skipped,
                  elapsed_s=round(time.perf_counter() - start, 1))
    return result


def mark(pipe, *, replayed: bool = False) -> dict:
    """Find the best candidate and the Pareto set among the run's artifacts; mark them in place."""
    spec = pipe.plan.search
    baseline = pipe.baseline_record()
    points = []
    for record in pipe.variant_records():
        for art in record.artifacts:
            if art.status != OK or art.latency_ms is None or art.gzip_bytes is None or art.accuracy is None:
                continue
            points.append({"variant": record.id, "artifact": _art_label(art),
                           "label": f"{record.name} {_art_label(art)}", "accuracy": art.accuracy,
                           "accuracy_drop_points": _drop(baseline.accuracy, art.accuracy),
                           "latency_ms": art.latency_ms.p50, "gzip_bytes": art.gzip_bytes,
                           "size_bytes": art.size_bytes, "_art": art, "_record": record})
    front = pareto(points)
    for p in front:
        pipe.mark(p["variant"], artifact=p["_art"], pareto=True)
    best, met = choose_best(points, spec.max_accuracy_drop, spec.objective)
    if best is None and baseline.accuracy is not None:
        # Nothing exported and ran: the baseline model itself is the best we have.
        best = {"variant": baseline.id, "artifact": None, "label": f"{baseline.name} (keras)",
                "accuracy": baseline.accuracy, "accuracy_drop_points": 0.0,
                "latency_ms": baseline.inference_ms_per_step, "gzip_bytes": None}
        met = True
    if best is not None:
        if best.get("_art") is not None:
            pipe.mark(best["variant"], artifact=best["_art"], best=True)
        pipe.mark(best["variant"], search_best=True)
    clean = lambda p: {k: v for k, v in p.items() if not k.startswith("_")}  # noqa: E731
    result = {
        "goal": {"max_accuracy_drop": spec.max_accuracy_drop, "objective": spec.objective,
                 "budget_minutes": spec.budget_minutes, "trials": spec.trials},
        "baseline_accuracy": baseline.accuracy,
        "met": bool(met),
        "best": clean(best) if best else None,
        "pareto": [clean(p) for p in front],
        "candidates": len(points),
        "replayed": replayed,
    }
    if replayed:
        result.update(trials=len(points), stopped=None, skipped=[], elapsed_s=0.0)
    return result


def choose_best(points, max_drop: float, objective: str):
    """(best point, whether it meets the goal). Within the goal: smallest size or latency, then
    higher accuracy. Nobody within it: the smallest accuracy drop (closest to the goal)."""
    key = "gzip_bytes" if objective == "size" else "latency_ms"
    within = [p for p in points if p["accuracy_drop_points"] is not None and p["accuracy_drop_points"] <= max_drop]
    if within:
        return min(within, key=lambda p: (p[key], -p["accuracy"])), True
    if points:
        return min(points, key=lambda p: (p["accuracy_drop_points"] if p["accuracy_drop_points"] is not None
                                          else float("inf"), p[key])), False
    return None, False


def pareto(points):
    """Points not dominated on (gzip size down, latency down, accuracy up)."""
    def dominates(a, b):
        no_worse = (a["gzip_bytes"] <= b["gzip_bytes"] and a["latency_ms"] <= b["latency_ms"]
                    and a["accuracy"] >= b["accuracy"])
        better = (a["gzip_bytes"] < b["gzip_bytes"] or a["latency_ms"] < b["latency_ms"]
                  or a["accuracy"] > b["accuracy"])
        return no_worse and better

    return [p for p in points if not any(dominates(q, p) for q in points if q is not p)]


def _drop(reference, value):
    if reference is None or value is None:
        return None
    # Rounded: 0.90 - 0.89 is 1.0000000000000009 points in floating point, and must meet a 1-point goal.
    return round((reference - value) * 100.0, 6)


def _spec(step: str, strength: Dict[str, Any]) -> str:
    opts = ",".join(f"{k}={v}" for k, v in strength.items())
    return step + (f":{opts}" if opts else "")


def _label(step: str, strength: Dict[str, Any]) -> str:
    return step + "".join(f"[{k}={v}]" for k, v in strength.items())


def _art_label(art) -> str:
    return art.format if art.quantize in (None, "none") else f"{art.format}:{art.quantize}"
