"""Lesson 14's ladder: Naive -> Pooling -> Separable -> +JIT -> +AMP -> +Fusing, measured here.

Each rung is trained the same number of epochs on the same data and measured the same way:
parameters, accuracy on the held-back split (test, else validation), train time per epoch (median
without the first, compile-dominated epoch; optkit.train), inference time per step (a compiled
`tf.function` at batch 32, XLA when the rung trains with it: the course's "ms/step") and the size of
the saved `.keras` file.

Lineage: the rewrites carry weights over (that is their point), so Pooling starts from the trained
Naive model and Separable from the trained Pooling model, each then training `epochs` more. The speed
rungs all start from the *same* freshly rewritten Separable weights as the Separable rung, so their
accuracy and time differ from it only by the setting.

The speed settings were made for GPUs. Before the speed rungs, the ladder measures a few training
steps of each setting (XLA, mixed precision, step fusing, and oneDNN in fresh processes, since it is
fixed when TensorFlow starts) against float32 on this machine, keeps only those that are faster by
more than the noise margin, says which it kept and why, and ends with a "tuned" rung trained with
the kept settings. Settings that slow training down are still shown as rungs, marked as slower.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

from optkit import keras_io, train
from optkit.errors import UserError

SCHEMA = 1
INFERENCE_BATCH = 32
KEEP_MARGIN = 0.90     # a setting is kept only if it takes <= 90% of float32's time per step:
                       # repeated runs here vary by tens of percent (STACK.md), smaller gains are noise
PROBE_STEPS = 12       # timed train steps per probe epoch (3 timed epochs after a compile epoch)


# ---------------------------------------------------------------------------- measurements

def inference_ms_per_step(model, x, *, jit=False, batch=INFERENCE_BATCH, min_runs=10, min_time_s=0.5):
    """Median ms of one compiled forward pass at `batch` (warmed up; XLA-compiled if `jit`)."""
    tf = keras_io.tf()
    xb = np.asarray(x[:batch], dtype=np.float32)
    if len(xb) < batch:
        xb = np.resize(xb, (batch,) + xb.shape[1:])
    fn = tf.function(lambda t: model(t, training=False), jit_compile=bool(jit))
    xt = tf.constant(xb)
    for _ in range(3):
        _ = np.asarray(fn(xt))
    samples, start = [], time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        _ = np.asarray(fn(xt))    # to numpy: the timing includes finishing the computation
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 200:
            break
    return float(statistics.median(samples))


def train_ms_per_step(model, data, *, batch_size, steps=PROBE_STEPS, seed=0):
    """Median ms per training step over 3 short epochs after a compile epoch (the probe)."""
    x, y = _subset(data, steps * batch_size)
    result = train.fit(model, (x, y), epochs=4, batch_size=batch_size, progress=False, seed=seed)
    return 1e3 * result.time_per_epoch_s / steps


def _subset(data, n):
    x, y = (data.x_train, data.y_train) if not isinstance(data, (tuple, list)) else data[:2]
    reps = int(np.ceil(n / len(x)))
    idx = np.tile(np.arange(len(x)), reps)[:n]
    return np.asarray(x)[idx], np.asarray(y)[idx]


# ---------------------------------------------------------------------------- speed probes

def decide(probes: Dict[str, float], baseline: str = "float32", margin: float = KEEP_MARGIN) -> Dict[str, Any]:
    """Which settings to keep: those whose ms/step is <= margin × the baseline's. Returns
    {"kept": [...], "ratios": {name: ratio}, "why": {name: sentence}}."""
    base = probes[baseline]
    out = {"kept": [], "ratios": {}, "why": {}}
    for name, ms in probes.items():
        if name == baseline:
            continue
        ratio = ms / base
        out["ratios"][name] = ratio
        if ratio <= margin:
            out["kept"].append(name)
            out["why"][name] = f"kept: {1 / ratio:.2f}× faster per training step than {baseline}"
        elif ratio < 1 / margin:
            out["why"][name] = f"dropped: within noise ({ratio:.2f}× {baseline}'s time per step)"
        else:
            out["why"][name] = f"dropped: {ratio:.2f}× slower per training step than {baseline}"
    return out


def probe_in_process(model, data, *, batch_size, steps=PROBE_STEPS, seed=0, amp_policy=None):
    """ms/step of float32, jit, amp and fusing, each alone, on copies of `model` (Keras 3)."""
    from optkit.steps import speed

    policy = amp_policy or speed.auto_policy()[0] or "mixed_bfloat16"
    spe = min(32, steps)
    configs = {"float32": {}, "jit": {"jit_compile": True}, "amp": {"policy": policy},
               "fusing": {"steps_per_execution": spe}}
    ms = {}
    for name, cfg in configs.items():
        copy = speed.with_policy(model, cfg["policy"]) if "policy" in cfg else keras_io.clone(model)
        train.set_training_config(copy, jit_compile=cfg.get("jit_compile", False),
                                  steps_per_execution=cfg.get("steps_per_execution", 1))
        ms[name] = train_ms_per_step(copy, data, batch_size=batch_size, steps=steps, seed=seed)
    return {"ms_per_step": ms, "amp_policy": policy, "fusing_steps": spe, "steps": steps, **decide(ms)}


def probe_onednn(model, data, *, batch_size=32, steps=PROBE_STEPS, workdir=None, timeout=600):
    """ms/step with oneDNN off and on, each in a fresh Python process (the switch is read when
    TensorFlow is imported). Returns {"ms_per_step": {"onednn_off", "onednn_on"}, "keep": bool|None, ...}."""
    tmp = tempfile.mkdtemp(prefix="optkit-onednn-", dir=workdir)
    model_path = os.path.join(tmp, "probe.keras")
    data_path = os.path.join(tmp, "probe.npz")
    keras_io.save(model, model_path)   # .keras: save() hands back Keras 3 whatever the flavour
    x, y = _subset(data, steps * batch_size)
    np.savez(data_path, x=x, y=y)
    ms, errors = {}, {}
    for label, value in (("onednn_off", "0"), ("onednn_on", "1")):
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=value, TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, "-m", "optkit.ladder", "--probe", model_path, data_path,
               "--batch", str(batch_size), "--steps", str(steps)]
        try:
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            errors[label] = f"timed out after {timeout} s"
            continue
        lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
        if run.returncode != 0 or not lines:
            errors[label] = (run.stderr.strip().splitlines() or ["no output"])[-1][:300]
            continue
        answer = json.loads(lines[-1])
        ms[label] = answer["ms_per_step"]
        if answer.get("onednn") is not None and answer["onednn"] != (value == "1"):
            errors[label] = f"TensorFlow reported oneDNN {'on' if answer['onednn'] else 'off'} despite the setting"
    result = {"ms_per_step": ms, "errors": errors, "steps": steps, "keep": None}
    if len(ms) == 2:
        ratio = ms["onednn_on"] / ms["onednn_off"]
        result["ratio_on_vs_off"] = ratio
        if ratio <= KEEP_MARGIN:
            result.update(keep=True, why=f"kept oneDNN on: {1 / ratio:.2f}× faster per training step than off")
        elif ratio >= 1 / KEEP_MARGIN:
            result.update(keep=False, why=f"kept oneDNN off: on was {ratio:.2f}× slower")
        else:
            result["why"] = f"oneDNN on/off within noise ({ratio:.2f}×): left at TensorFlow's default"
    else:
        result["why"] = "oneDNN could not be measured: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
    return result


def _probe_main(argv):
    """Child process of probe_onednn: train a few steps, print {"ms_per_step", "onednn"} as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m optkit.ladder --probe")
    parser.add_argument("--probe", nargs=2, metavar=("MODEL", "DATA_NPZ"), required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=PROBE_STEPS)
    args = parser.parse_args(argv)
    from optkit.steps import speed

    model = keras_io.load(args.probe[0]).model
    with np.load(args.probe[1]) as npz:
        x, y = npz["x"], npz["y"]
    ms = train_ms_per_step(model, (x, y), batch_size=args.batch, steps=args.steps)
    print(json.dumps({"ms_per_step": ms, "onednn": speed.onednn_enabled()}), flush=True)


# ---------------------------------------------------------------------------- the ladder

def _variant_id(steps):
    return hashlib.sha1(json.dumps(steps, sort_keys=True).encode()).hexdigest()[:12]


def _eval_split(data):
    if getattr(data, "x_test", None) is not None and len(data.x_test):
        return data.x_test, data.y_test, "test"
    return data.x_val, data.y_val, "validation"


def run_ladder(model_or_zoo_name, data, *, epochs: int = 2, batch_size: int = 32, progress: bool = True,
               workdir: Optional[str] = None, seed: int = 0, probe: bool = True, onednn_probe: bool = True,
               probe_steps: int = PROBE_STEPS, learning_rate: Optional[float] = None,
               log=None) -> Dict[str, Any]:
    """Build/copy the model, walk the ladder, return the report dict (DESIGN.md's optimize shape)."""
    from optkit.steps import pooling, separable, speed

    say = log or (lambda msg: print(f"ladder: {msg}", file=sys.stderr, flush=True) if progress else None)
    if data is None or getattr(data, "x_train", None) is None:
        raise UserError("the lesson14 ladder trains every rung: it needs --data")
    workdir = workdir or tempfile.mkdtemp(prefix="optkit-ladder-")
    out_dir = os.path.join(workdir, "ladder")
    os.makedirs(out_dir, exist_ok=True)
    base = _resolve_model(model_or_zoo_name, data, seed)
    x_eval, y_eval, split = _eval_split(data)
    notes: List[str] = []
    variants: List[Dict[str, Any]] = []
    x_inf = np.asarray(data.x_train[:INFERENCE_BATCH], dtype=np.float32)

    def measure(key, name, model, steps, parent, details=None):
        say(f"{name}: training {epochs} epoch(s)")
        result = train.fit(model, data, epochs=epochs, batch_size=batch_size, progress=progress, seed=seed,
                           learning_rate=learning_rate)
        jit = train.training_config(model).jit_compile
        path = os.path.join(out_dir, f"{key}.keras")
        _save_for_shipping(model, path)
        record = {
            "id": _variant_id(steps), "name": name, "parent": parent, "steps": steps,
            "params": int(model.count_params()),
            "accuracy": train.evaluate(model, x_eval, y_eval, batch_size=max(batch_size, 32)),
            "train_time_per_epoch_s": result.time_per_epoch_s,
            "inference_ms_per_step": inference_ms_per_step(model, x_inf, jit=jit),
            "path": path, "size_bytes": os.path.getsize(path), "status": "ok", "reason": "",
            "details": {"key": key, "accuracy_split": split, "training": result.to_json(),
                        "inference_path": f"tf.function{' (jit_compile=True)' if jit else ''}, "
                                          f"batch {INFERENCE_BATCH}, median",
                        **(details or {})},
        }
        variants.append(record)
        say(f"{name}: params {record['params']:,}, accuracy {record['accuracy']:.3f}, "
            f"{record['train_time_per_epoch_s']:.2f} s/epoch, {record['inference_ms_per_step']:.2f} ms/step")
        return record

    naive = measure("naive", "Naive", base, [], None, {"model": getattr(base, "name", "")})

    # Pooling, then Separable, each rewriting the trained parent.
    parent_model, parent, steps = base, naive, []
    try:
        pooled, heads = pooling.rewrite(parent_model)
        steps = steps + [{"name": "pooling", "options": {"pool": "avg"}}]
        parent = measure("pooling", "Pooling", pooled, steps, parent["id"], {"heads": heads})
        parent_model = pooled
    except UserError as exc:
        notes.append(f"Pooling rung skipped: {exc}")
        variants.append(_skipped("Pooling", steps + [{"name": "pooling"}], parent["id"], str(exc)))
    try:
        sep, convs = separable.rewrite(parent_model)
    except UserError as exc:
        notes.append(f"Separable and speed rungs skipped: {exc}")
        variants.append(_skipped("Separable", steps + [{"name": "separable"}], parent["id"], str(exc)))
        return _report(variants, notes, None, None)
    from optkit.steps._rewrite_eval import relative_output_error

    x_err = np.asarray(data.x_val[:256] if len(data.x_val) else data.x_train[:256], dtype=np.float32)
    err = relative_output_error(parent_model, sep, x_err)
    sep_start = keras_io.clone(sep)         # every speed rung starts from these weights
    steps = steps + [{"name": "separable", "options": {"rank": 1}}]
    sep_record = measure("separable", "Separable", sep, steps, parent["id"],
                         {"convs": convs, "output_error_after_rewrite": err})
    sep_record["details"]["output_error_after_finetune"] = relative_output_error(parent_model, sep, x_err)

    # Probe: a few steps of each setting on this machine.
    probes, onednn = None, None
    if probe:
        say("probing speed settings (a few training steps each)")
        probes = probe_in_process(sep_start, data, batch_size=batch_size, steps=probe_steps, seed=seed)
        for name, why in probes["why"].items():
            notes.append(f"{name} probe ({probes['ms_per_step'][name]:.1f} vs {probes['ms_per_step']['float32']:.1f} "
                         f"ms/step float32): {why}")
    if onednn_probe:
        say("probing oneDNN off/on in fresh processes")
        onednn = probe_onednn(sep_start, data, batch_size=batch_size, steps=probe_steps, workdir=workdir)
        onednn["in_this_process"] = speed.onednn_enabled()
        notes.append(f"oneDNN probe (fresh processes): {onednn['why']}")
        if onednn["keep"] is not None and onednn["in_this_process"] is not None \
                and onednn["keep"] != onednn["in_this_process"]:
            notes.append(f"oneDNN is {'on' if onednn['in_this_process'] else 'off'} in this process, so every rung "
                         f"here trained that way; start optkit with TF_ENABLE_ONEDNN_OPTS="
                         f"{'1' if onednn['keep'] else '0'} to train with the kept setting")

    # The course's cumulative speed rungs, reported honestly.
    policy = (probes or {}).get("amp_policy") or speed.auto_policy()[0] or "mixed_bfloat16"
    spe = min(32, max(1, probe_steps))
    ladder_specs = [
        ("jit", "Separable+JIT", {"jit_compile": True}, None),
        ("jit_amp", "Separable+JIT+AMP", {"jit_compile": True}, policy),
        ("jit_amp_fusing", "Separable+JIT+AMP+Fusing", {"jit_compile": True, "steps_per_execution": spe}, policy),
    ]
    step_of = {"jit": {"name": "jit", "options": {"enable": True}},
               "amp": {"name": "amp", "options": {"policy": policy}},
               "fusing": {"name": "fusing", "options": {"steps": spe}}}
    speed_steps = []
    for key, name, cfg, amp in ladder_specs:
        speed_steps.append(step_of[key.split("_")[-1]])
        model = _speed_copy(sep_start, cfg, amp)
        rec = measure(key, name, model, steps + list(speed_steps), sep_record["id"],
                      {"settings": dict(cfg, mixed_precision=amp)})
        _mark_vs(rec, sep_record)

    # The tuned rung: only what the probes showed to help.
    kept = (probes or {}).get("kept", [])
    cfg = {"jit_compile": "jit" in kept}
    if "fusing" in kept:
        cfg["steps_per_execution"] = spe
    amp = policy if "amp" in kept else None
    tuned_steps = steps + [step_of[k] for k in ("jit", "amp", "fusing") if k in kept]
    if onednn is not None and onednn.get("keep") is not None:
        tuned_steps.append({"name": "cpu", "options": {"onednn": "on" if onednn["keep"] else "off"}})
    label = "+".join(k.upper() if k != "fusing" else "Fusing" for k in ("jit", "amp", "fusing") if k in kept)
    tuned = measure("tuned", f"Tuned ({label or 'no speed setting helped'})", _speed_copy(sep_start, cfg, amp),
                    tuned_steps, sep_record["id"],
                    {"kept": kept, "settings": dict(cfg, mixed_precision=amp),
                     "onednn": None if onednn is None else onednn.get("keep")})
    _mark_vs(tuned, sep_record, same_settings=not kept)
    if not kept:
        notes.append(f"the tuned rung repeats Separable's settings: its {tuned['details']['train_time_vs_separable']:.2f}× "
                     f"train time and {tuned['details']['inference_vs_separable']:.2f}× inference time relative to "
                     "Separable are this machine's run-to-run noise")
    if kept and "slower_than_separable" in tuned["details"]:
        # A few probe steps on a shared machine can mislead; say so instead of presenting the pick as a win.
        notes.append(f"the probe's pick ({label}) did not hold over full epochs: the tuned rung trained "
                     f"{tuned['details']['train_time_vs_separable']:.2f}× Separable's time per epoch; the probe "
                     f"ran {probe_steps} steps per setting (raise probe_steps for a steadier decision)")
    notes.append(f"kept: {', '.join(kept) if kept else 'none of jit/amp/fusing'}"
                 + (f"; oneDNN {'on' if onednn['keep'] else 'off'}" if onednn and onednn.get("keep") is not None else ""))
    return _report(variants, notes, probes, onednn)


def _save_for_shipping(model, path):
    """Save the weights and the training settings, not Adam's moment estimates: those would triple
    the file (and the size row) and mean nothing to whoever deploys the model."""
    copy = keras_io.clone(model)
    train.copy_training_config(model, copy)
    train.compile_with_settings(copy)     # fresh optimizer: the compile config records jit/fusing
    keras_io.save(copy, path)


def _speed_copy(model, cfg, policy):
    from optkit.steps import speed

    copy = speed.with_policy(model, policy) if policy else keras_io.clone(model)
    train.set_training_config(copy, jit_compile=cfg.get("jit_compile", False),
                              steps_per_execution=cfg.get("steps_per_execution", 1))
    return copy


def _mark_vs(record, reference, same_settings=False):
    """Say in the record when a speed setting made training or inference slower than without it.

    A rung with the very same settings as the reference is a repeat run: its difference is this
    machine's run-to-run noise, recorded as such rather than blamed on a setting."""
    t = record["train_time_per_epoch_s"] / reference["train_time_per_epoch_s"]
    i = record["inference_ms_per_step"] / reference["inference_ms_per_step"]
    record["details"]["train_time_vs_separable"] = t
    record["details"]["inference_vs_separable"] = i
    if same_settings:
        record["details"]["repeat_of_separable"] = True
        return
    slower = []
    if t > 1 / KEEP_MARGIN:
        slower.append(f"training {t:.2f}× slower")
    if i > 1 / KEEP_MARGIN:
        slower.append(f"inference {i:.2f}× slower")
    if slower:
        record["details"]["slower_than_separable"] = ", ".join(slower) + " than Separable on this machine"


def _skipped(name, steps, parent, reason):
    return {"id": _variant_id(steps), "name": name, "parent": parent, "steps": steps, "params": None,
            "accuracy": None, "train_time_per_epoch_s": None, "inference_ms_per_step": None,
            "status": "skipped", "reason": reason, "details": {}}


def _resolve_model(model_or_zoo_name, data, seed):
    if isinstance(model_or_zoo_name, str):
        from optkit import zoo

        return zoo.build(model_or_zoo_name, input_shape=tuple(data.input_shape), num_classes=data.num_classes,
                         seed=seed)
    # Never train the caller's object: a fresh Keras 3 copy (the rewrites work on Keras 3 graphs).
    return keras_io.to_keras3(model_or_zoo_name)


def _report(variants, notes, probes, onednn):
    from optkit import env as env_mod
    from optkit.steps import speed

    env = env_mod.fingerprint()
    env.update(onednn=speed.onednn_enabled(), cpu_bf16=speed.cpu_has_bf16(), gpus=len(speed.gpus()))
    measured = [v for v in variants if v["status"] == "ok"]
    ratios = {}
    if measured:
        ref = measured[0]
        for v in measured:
            ratios[v["name"]] = {
                "params": v["params"] / ref["params"],
                "accuracy_points": 100 * (v["accuracy"] - ref["accuracy"]),
                "train_time_per_epoch": v["train_time_per_epoch_s"] / ref["train_time_per_epoch_s"],
                "inference_ms_per_step": v["inference_ms_per_step"] / ref["inference_ms_per_step"],
                "size": v["size_bytes"] / ref["size_bytes"],
            }
    return {"schema": SCHEMA, "env": env, "recipe": "lesson14", "variants": variants,
            "ratios_to_naive": ratios, "speed_probe": probes, "onednn_probe": onednn, "notes": notes}


def _slower_cell(v):
    d = v.get("details", {})
    if d.get("repeat_of_separable"):
        return f"same settings (noise: {d['train_time_vs_separable']:.2f}×)"
    if "slower_than_separable" not in d:
        return "" if "train_time_vs_separable" not in d else "no"
    parts = []
    if d["train_time_vs_separable"] > 1 / KEEP_MARGIN:
        parts.append(f"train {d['train_time_vs_separable']:.1f}×")
    if d["inference_vs_separable"] > 1 / KEEP_MARGIN:
        parts.append(f"infer {d['inference_vs_separable']:.1f}×")
    return "SLOWER: " + ", ".join(parts)


def render_table(report: Dict[str, Any]) -> str:
    """The ladder as a plain-text table: rungs as columns, the course's rows, then ratios to Naive."""
    rungs = [v for v in report["variants"]]
    head = ["", *[v["name"] for v in rungs]]

    def cell(v, fmt):
        return "skipped" if v["status"] != "ok" else fmt(v)

    rows = [
        ["Parameters", *[cell(v, lambda v: f"{v['params']:,}") for v in rungs]],
        ["Accuracy", *[cell(v, lambda v: f"{100 * v['accuracy']:.1f}%") for v in rungs]],
        ["Train time/epoch", *[cell(v, lambda v: f"{v['train_time_per_epoch_s']:.2f}s") for v in rungs]],
        ["Inference time/step", *[cell(v, lambda v: f"{v['inference_ms_per_step']:.2f}ms") for v in rungs]],
        ["Size (.keras)", *[cell(v, lambda v: f"{v['size_bytes'] / 1e6:.2f}MB") for v in rungs]],
    ]
    ratios = report.get("ratios_to_naive", {})
    rows.append(["", *["" for _ in rungs]])
    for key, label, fmt in (("params", "Params ÷ Naive", "{:.4f}×"), ("accuracy_points", "Accuracy − Naive", "{:+.1f} pts"),
                            ("train_time_per_epoch", "Train time ÷ Naive", "{:.2f}×"),
                            ("inference_ms_per_step", "Inference ÷ Naive", "{:.2f}×")):
        rows.append([label, *[fmt.format(ratios[v["name"]][key]) if v["name"] in ratios else "-" for v in rungs]])
    rows.append(["Slower than Separable?", *[_slower_cell(v) for v in rungs]])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *rows]]
    lines.extend(f"- {n}" for n in report.get("notes", []))
    return "\n".join(lines)


if __name__ == "__main__":   # the oneDNN probe's child process
    _probe_main(sys.argv[1:])
