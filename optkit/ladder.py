"""Lesson 14's ladder as a recipe: Naive -> Pooling -> Separable -> +JIT -> +AMP -> +Fusing -> Tuned.

The rungs are ordinary plan variants (optkit.plan builds them from `rungs()`), run by
optkit.optimize's Pipeline like any chain: content-hash ids, one folder each, the pipeline's one
way of measuring parameters, accuracy, train time per epoch (optkit.train: median without the
first, compile-dominated epoch) and inference time per batch of 32. After the run, `annotate`
compares the rungs (ratios to Naive, speed rungs against Separable) and writes the notes.

Lineage: the rewrites carry weights over (that is their point), so Pooling starts from the trained
Naive model and Separable from the trained Pooling model, each then training `epochs` more. The
speed rungs all start from the *same* freshly rewritten Separable weights as the Separable rung
(`separable:epochs=0`, then the setting, then `train`), so their accuracy and time differ from
Separable's only by the setting.

The speed settings were made for GPUs. The Tuned rung's `tune` step (optkit.steps.speed) measures a
few training steps of each setting (and oneDNN in fresh processes) against float32 on this machine
and keeps only those faster by more than the noise margin; its name says what it kept. Settings
that slow training down are still shown as rungs, marked as slower.

Nothing here imports TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from optkit.steps.speed import KEEP_MARGIN, PROBE_STEPS   # the noise margin; the probe's length

TINY_PROBE_STEPS = 4
# Epoch caps (optkit.train stops each run early on validation and keeps its best epoch). Naive
# trains from scratch: 3 epochs left the 7.5 M-parameter CNN at ~47% on the demo data while the
# rewrites, starting from its weights, went on to ~80% (issue 18). Measured 2026-11-30 on the demo
# (2 loaded cores, 1,400 training images, batch 32): Naive's validation accuracy by epoch
# .19 .38 .65 .79 .88 .91 .58 .79 .77 -> best at epoch 6, stopped after 9 (patience 3), epoch 6
# kept; Separable (from trained Pooling) .77 .88 .93 in its 3. So Naive gets up to 10 epochs; the
# other rungs start from a trained parent and keep the plan's --epochs (3 by default) as their cap.
NAIVE_EPOCHS = 10
SEPARABLE = "Separable"
TUNED = "Tuned"


@dataclass(frozen=True)
class Rung:
    name: str
    parent: Optional[str]            # a rung name; None for Naive (the plan's baseline)
    steps: Tuple[str, ...] = ()      # `--step` specs applied to the parent's model, in order
    exported: bool = False           # gets the plan's exports (Naive and the last rewrite rung)
    speed: bool = False              # compared against Separable ("slower than Separable?")


def rungs(*, tiny: bool = False) -> List[Rung]:
    """The ladder's variants. The tiny schedule probes 4 steps per setting and skips the oneDNN
    probe (two fresh TensorFlow processes, ~1 min here)."""
    probe = TINY_PROBE_STEPS if tiny else PROBE_STEPS
    rewrite = "separable:epochs=0"          # Separable's starting weights, not yet trained
    amp = "amp:policy=mixed"                # bfloat16 even where emulated: the rung shows its cost
    fusing = f"fusing:steps={min(32, probe)}"
    tune = f"tune:probe_steps={probe},onednn={'false' if tiny else 'true'}"
    return [
        Rung("Naive", None, exported=True),
        Rung("Pooling", "Naive", ("pooling",)),
        Rung(SEPARABLE, "Pooling", ("separable",), exported=True),
        Rung("Separable+JIT", "Pooling", (rewrite, "jit", "train"), speed=True),
        Rung("Separable+JIT+AMP", "Pooling", (rewrite, "jit", amp, "train"), speed=True),
        Rung("Separable+JIT+AMP+Fusing", "Pooling", (rewrite, "jit", amp, fusing, "train"), speed=True),
        Rung(TUNED, "Pooling", (rewrite, tune, "train"), speed=True),
    ]


def describe() -> str:
    return " -> ".join(r.name if i < 3 else "+" + r.name.split("+")[-1] if "+" in r.name else r.name
                       for i, r in enumerate(rungs()))


# ---------------------------------------------------------------------------- after the run

def annotate(records, *, tiny: bool = False) -> Dict[str, Any]:
    """Compare the rungs once they ran: mark speed rungs slower than Separable, give ratios to
    Naive, and say what the tune step kept. `records` are optkit.records.Variant in plan order
    (their `details` are updated). Returns {"notes": [...], "ratios_to_naive", "speed_probe",
    "onednn_probe"}."""
    by_rung = {}
    for record in records:
        rung = _rung_of(record.name)
        if rung is not None:
            by_rung[rung.name] = record
    notes: List[str] = []
    for rung in rungs(tiny=tiny):
        record = by_rung.get(rung.name)
        if record is not None and record.status != "ok":
            notes.append(f"{record.name} rung {record.status}: {record.reason}")
    separable = by_rung.get(SEPARABLE)
    tune_info = _tune_info(by_rung.get(TUNED))
    kept = tune_info.get("kept", []) if tune_info else []
    for rung in rungs(tiny=tiny):
        record = by_rung.get(rung.name)
        if rung.speed and record is not None and _measured(record) and separable is not None and _measured(separable):
            _mark_vs(record, separable, same_settings=rung.name == TUNED and not kept)

    probes = tune_info.get("speed_probe") if tune_info else None
    onednn = tune_info.get("onednn_probe") if tune_info else None
    if probes:
        for name, why in probes["why"].items():
            notes.append(f"{name} probe ({probes['ms_per_step'][name]:.1f} vs {probes['ms_per_step']['float32']:.1f} "
                         f"ms/step float32): {why}")
    if onednn:
        notes.append(f"oneDNN probe (fresh processes): {onednn['why']}")
        here = onednn.get("in_this_process")
        if onednn.get("keep") is not None and here is not None and onednn["keep"] != here:
            notes.append(f"oneDNN is {'on' if here else 'off'} in this process, so every rung here trained "
                         f"that way; start optkit with TF_ENABLE_ONEDNN_OPTS={'1' if onednn['keep'] else '0'} "
                         "to train with the kept setting")
    tuned = by_rung.get(TUNED)
    if tune_info is not None and tuned is not None and _measured(tuned):
        d = tuned.details
        if not kept and "train_time_vs_separable" in d:
            notes.append(f"the tuned rung repeats Separable's settings: its {d['train_time_vs_separable']:.2f}× "
                         f"train time and {d['inference_vs_separable']:.2f}× inference time relative to "
                         "Separable are this machine's run-to-run noise")
        if kept and "slower_than_separable" in d:
            # A few probe steps on a shared machine can mislead; say so instead of presenting the pick as a win.
            notes.append(f"the probe's pick ({tuned.name}) did not hold over full epochs: the tuned rung trained "
                         f"{d['train_time_vs_separable']:.2f}× Separable's time per epoch; the probe ran "
                         f"{probes['steps'] if probes else '?'} steps per setting (raise tune:probe_steps "
                         "for a steadier decision)")
        notes.append(f"kept: {', '.join(kept) if kept else 'none of jit/amp/fusing'}"
                     + (f"; oneDNN {'on' if onednn['keep'] else 'off'}" if onednn and onednn.get("keep") is not None
                        else ""))
    return {"notes": notes, "ratios_to_naive": _ratios(records), "speed_probe": probes, "onednn_probe": onednn}


def _rung_of(name: str) -> Optional[Rung]:
    for rung in rungs():
        if name == rung.name or name.startswith(rung.name + " ("):   # "Tuned (JIT+AMP)"
            return rung
    return None


def _measured(record) -> bool:
    return (record.status == "ok" and record.train_time_per_epoch_s is not None
            and record.inference_ms_per_step is not None)


def _tune_info(record) -> Optional[Dict[str, Any]]:
    if record is None:
        return None
    for step in record.steps:
        if step.get("name") == "tune" and step.get("info"):
            return step["info"]
    return None


def _mark_vs(record, reference, same_settings=False):
    """Say in the record when a speed setting made training or inference slower than without it.

    A rung with the very same settings as the reference is a repeat run: its difference is this
    machine's run-to-run noise, recorded as such rather than blamed on a setting."""
    t = record.train_time_per_epoch_s / reference.train_time_per_epoch_s
    i = record.inference_ms_per_step / reference.inference_ms_per_step
    record.details["train_time_vs_separable"] = t
    record.details["inference_vs_separable"] = i
    if same_settings:
        record.details["repeat_of_separable"] = True
        return
    slower = []
    if t > 1 / KEEP_MARGIN:
        slower.append(f"training {t:.2f}× slower")
    if i > 1 / KEEP_MARGIN:
        slower.append(f"inference {i:.2f}× slower")
    if slower:
        record.details["slower_than_separable"] = ", ".join(slower) + " than Separable on this machine"


def _ratios(records) -> Dict[str, Dict[str, float]]:
    measured = [r for r in records if _measured(r) and r.params and r.accuracy is not None]
    if not measured:
        return {}
    ref = measured[0]
    out = {}
    for r in measured:
        ratios = {"params": r.params / ref.params,
                  "accuracy_points": 100 * (r.accuracy - ref.accuracy),
                  "train_time_per_epoch": r.train_time_per_epoch_s / ref.train_time_per_epoch_s,
                  "inference_ms_per_step": r.inference_ms_per_step / ref.inference_ms_per_step}
        if r.details.get("size_bytes") and ref.details.get("size_bytes"):
            ratios["size"] = r.details["size_bytes"] / ref.details["size_bytes"]
        out[r.name] = ratios
    return out
