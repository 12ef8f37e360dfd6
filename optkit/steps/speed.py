"""Speed steps: `jit` (XLA), `amp` (mixed precision), `fusing` (steps_per_execution), `cpu` (oneDNN, threads).

They do not change what the model computes; they change how it trains. Each returns a copy of the
model carrying the setting (optkit.train.TrainingConfig), compiled with it, so that
- every later `train.fit` (fine-tuning after a rewrite, QAT, the `train` step) trains that way, and
- a `.keras` file saved afterwards records it: `jit_compile` / `steps_per_execution` in its compile
  config (read back by `train.saved_training_config`), mixed precision in every layer's dtype policy.

These switches were made for GPUs. On CPUs they mostly do not pay (shared/STACK.md: mixed precision
2-15× slower without bf16 units, XLA within noise), so `amp` with the default policy "auto" only
applies a policy the hardware computes natively, and the Lesson 14 ladder (optkit.ladder) measures
a few steps of each setting on the machine at hand (the `tune` step, below) and keeps only what helps.

oneDNN is fixed when TensorFlow is imported (TF_ENABLE_ONEDNN_OPTS) and thread pools when its runtime
starts, so the `cpu` step records the wish and applies what it still can; measuring oneDNN takes a
fresh process (`probe_onednn`, here), and `cpu_environment()` gives the variables to launch one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, Optional

import numpy as np

from dataclasses import dataclass

from optkit import keras_io, train
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult

# "auto": the mixed policy this hardware computes natively, else none (float32).
# "mixed": the native mixed policy, else mixed_bfloat16 even where TensorFlow emulates it (the
# Lesson 14 ladder uses it to show what AMP costs on a CPU without bf16 units).
POLICIES = ("auto", "mixed", "mixed_bfloat16", "mixed_float16", "float32")
KEEP_MARGIN = 0.90     # a setting is kept only if it takes <= 90% of float32's time per step:
                       # repeated runs here vary by tens of percent (STACK.md), smaller gains are noise
PROBE_STEPS = 12       # timed train steps per probe epoch (3 timed epochs after a compile epoch)


# ---------------------------------------------------------------------------- hardware facts

def cpu_flags() -> set:
    """The CPU feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16); otherwise TF emulates it."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def gpus() -> list:
    return keras_io.tf().config.list_physical_devices("GPU")


def onednn_enabled() -> Optional[bool]:
    """Whether this process's TensorFlow uses oneDNN kernels (None if TF does not say)."""
    keras_io.tf()
    try:
        from tensorflow.python.util import _pywrap_util_port   # the flag TF's own startup banner reports
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def auto_policy():
    """(policy or None, why): the mixed policy this machine computes natively, if any."""
    if gpus():
        return "mixed_float16", "a GPU is present: float16 tensor cores"
    if cpu_has_bf16():
        return "mixed_bfloat16", "the CPU has native bfloat16 instructions (avx512_bf16/amx_bf16)"
    return None, ("no GPU and no bfloat16 instructions on this CPU: TensorFlow would emulate the low "
                  "precision, measured 2-15× slower than float32 (shared/STACK.md)")


def cpu_environment(onednn: Optional[bool] = None, threads: Optional[int] = None) -> dict:
    """Environment variables that make a *new* TensorFlow process use these CPU settings."""
    env = {}
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn else "0"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)      # oneDNN's own pool
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    return env


# ---------------------------------------------------------------------------- measuring the settings here

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
    policy = amp_policy or auto_policy()[0] or "mixed_bfloat16"
    spe = min(32, steps)
    configs = {"float32": {}, "jit": {"jit_compile": True}, "amp": {"policy": policy},
               "fusing": {"steps_per_execution": spe}}
    ms = {}
    for name, cfg in configs.items():
        copy = with_policy(model, cfg["policy"]) if "policy" in cfg else keras_io.clone(model)
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
        cmd = [sys.executable, "-m", "optkit.steps.speed", "--probe", model_path, data_path,
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

    parser = argparse.ArgumentParser(prog="python -m optkit.steps.speed --probe")
    parser.add_argument("--probe", nargs=2, metavar=("MODEL", "DATA_NPZ"), required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=PROBE_STEPS)
    args = parser.parse_args(argv)
    model = keras_io.load(args.probe[0]).model
    with np.load(args.probe[1]) as npz:
        x, y = npz["x"], npz["y"]
    ms = train_ms_per_step(model, (x, y), batch_size=args.batch, steps=args.steps)
    print(json.dumps({"ms_per_step": ms, "onednn": onednn_enabled()}), flush=True)


# ---------------------------------------------------------------------------- applying

def _copy_with(model, **settings):
    """A fresh copy of `model` (same flavour, same weights, same recorded settings) plus `settings`,
    compiled with them so a save right after records them."""
    copy = keras_io.clone(model)
    train.copy_training_config(model, copy)
    train.set_training_config(copy, **settings)
    train.compile_with_settings(copy)
    return copy


def output_layer_names(model):
    """Names of the layers producing the model's outputs (they stay float32 under mixed precision)."""
    names = []
    for tensor in model.outputs:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.append(history[0].name)
    return names


def with_policy(model, policy: str):
    """A copy of `model` whose layers compute in `policy`, except the output layers (kept float32 so
    softmax/logits and the loss stay in full precision) and the inputs."""
    K = keras_io.keras_module_of(model)
    keep = set(output_layer_names(model))

    def clone_layer(layer):
        config = layer.get_config()
        if type(layer).__name__ != "InputLayer" and layer.name not in keep:
            config["dtype"] = policy
        return type(layer).from_config(config)

    try:
        copy = K.models.clone_model(model, clone_function=clone_layer)
    except Exception as exc:
        raise UserError(f"amp: cannot rebuild '{model.name}' with policy {policy}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    copy.set_weights(model.get_weights())
    train.copy_training_config(model, copy)
    return copy


def apply_jit(model, ctx, *, enable=True):
    new = _copy_with(model, jit_compile=bool(enable))
    return StepResult(new, {"jit_compile": bool(enable),
                            "applies_to": "every later optkit training run (model.compile(jit_compile=...)) "
                                          "and the saved model's compile config",
                            "note": "XLA pays on GPUs; on CPUs it was within noise (STACK.md) - the ladder "
                                    "measures it here"})


def apply_fusing(model, ctx, *, steps=32):
    new = _copy_with(model, steps_per_execution=int(steps))
    return StepResult(new, {"steps_per_execution": int(steps),
                            "applies_to": "every later optkit training run and the saved model's compile config",
                            "note": "runs this many train steps per call into the TF runtime, saving per-step "
                                    "Python overhead; progress updates arrive once per group"})


def apply_amp(model, ctx, *, policy="auto"):
    info = {"requested": policy, "cpu_bf16": cpu_has_bf16(), "gpus": len(gpus())}
    if policy == "mixed":
        policy = auto_policy()[0] or "mixed_bfloat16"
    if policy == "auto":
        chosen, why = auto_policy()
        info["why"] = why
        if chosen is None:
            info.update(applied=False, policy="float32")
            return StepResult(_copy_with(model), info)
        policy = chosen
    elif policy == "mixed_bfloat16" and not cpu_has_bf16() and not info["gpus"]:
        info["warning"] = "this CPU has no bfloat16 instructions: expect training to be much slower"
    if policy == "float32":          # also undoes an earlier mixed policy
        new = with_policy(model, "float32")
        train.compile_with_settings(new)
        info.update(applied=False, policy="float32", why="float32 requested")
        return StepResult(new, info)
    new = with_policy(model, policy)
    train.compile_with_settings(new)
    info.update(applied=True, policy=policy, float32_layers=output_layer_names(model),
                loss_scaling=policy == "mixed_float16")
    return StepResult(new, info)


def apply_cpu(model, ctx, *, onednn="auto", threads=0):
    current = onednn_enabled()
    info = {"onednn_in_this_process": current, "cores": os.cpu_count()}
    wanted = None if onednn == "auto" else onednn == "on"
    if onednn == "auto" and ctx is not None and getattr(ctx, "data", None) is not None:
        probe = probe_onednn(model, ctx.data, batch_size=ctx.batch_size, workdir=ctx.workdir)
        info["probe"] = probe
        wanted = probe.get("keep")
    info["onednn"] = wanted
    info["threads_applied_in_this_process"] = _set_threads(threads) if threads else None
    info["environment"] = cpu_environment(wanted, threads or None)
    if wanted is not None and current is not None and wanted != current:
        info["note"] = (f"oneDNN is {'on' if current else 'off'} in this process and is fixed when TensorFlow "
                        f"starts: run optkit with {' '.join(f'{k}={v}' for k, v in info['environment'].items())} "
                        "to train with it")
    new = _copy_with(model, onednn=wanted, intra_op_threads=threads or None)
    return StepResult(new, info)


def _set_threads(threads):
    """Apply an intra-op thread count if TF's runtime has not started yet (it refuses afterwards)."""
    tf = keras_io.tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        return True
    except RuntimeError:
        return False



def apply_tune(model, ctx, *, probe_steps=PROBE_STEPS, onednn=True):
    """Measure a few training steps of each setting here; return a copy carrying only those that help.

    XLA, mixed precision and step fusing are probed in this process on copies of `model`; oneDNN
    (with `onednn`) in two fresh processes. The settings that are faster than float32 by more than
    the noise margin are kept; oneDNN's verdict is recorded (it applies to a new process only)."""
    data = getattr(ctx, "data", None)
    if data is None:
        raise UserError("tune: measuring the speed settings trains a few steps: it needs --data")
    probes = probe_in_process(model, data, batch_size=ctx.batch_size, steps=probe_steps, seed=ctx.seed)
    onednn_probe = None
    if onednn:
        onednn_probe = probe_onednn(model, data, batch_size=ctx.batch_size, steps=probe_steps,
                                    workdir=ctx.workdir)
        onednn_probe["in_this_process"] = onednn_enabled()
    kept = probes["kept"]
    settings = {"jit_compile": "jit" in kept,
                "steps_per_execution": probes["fusing_steps"] if "fusing" in kept else 1}
    policy = probes["amp_policy"] if "amp" in kept else None
    source = with_policy(model, policy) if policy else model
    keep_onednn = None if onednn_probe is None else onednn_probe.get("keep")
    new = _copy_with(source, onednn=keep_onednn, **settings)
    label = "+".join(k.upper() if k != "fusing" else "Fusing" for k in ("jit", "amp", "fusing") if k in kept)
    info = {"kept": kept, "settings": dict(settings, mixed_precision=policy), "onednn": keep_onednn,
            "speed_probe": probes, "onednn_probe": onednn_probe}
    return StepResult(new, info, label=label or "no speed setting helped")


@dataclass(frozen=True)
class JitOptions:
    enable: bool = option(True, "false turns XLA off")


@dataclass(frozen=True)
class AmpOptions:
    policy: str = option("auto", "auto: the hardware's native mixed policy, else none; mixed: native, else "
                                 "mixed_bfloat16 even if emulated", choices=POLICIES)


@dataclass(frozen=True)
class FusingOptions:
    steps: int = option(32, "train steps fused into one execution", min=1)


@dataclass(frozen=True)
class CpuOptions:
    onednn: str = option("auto", "auto measures oneDNN off/on in fresh processes", choices=("auto", "on", "off"))
    threads: int = option(0, "intra-op threads (0: TensorFlow's default)", min=0)


@dataclass(frozen=True)
class TuneOptions:
    probe_steps: int = option(PROBE_STEPS, "timed training steps per setting and epoch", min=1)
    onednn: bool = option(True, "also probe oneDNN off/on (two fresh TensorFlow processes)")


STEPS = [
    Step("jit", "Train with XLA (jit_compile=True).", apply_jit, options=JitOptions, kind="speed"),
    Step("amp", "Train in mixed precision: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with bf16 units; "
                "the output layer stays float32.", apply_amp, options=AmpOptions, kind="speed"),
    Step("fusing", "Run several train steps per execution (steps_per_execution).", apply_fusing,
         options=FusingOptions, kind="speed"),
    Step("cpu", "CPU settings: oneDNN (measured in fresh processes with 'auto') and the thread count.",
         apply_cpu, options=CpuOptions, kind="speed"),
    Step("tune", "Measure a few training steps of XLA, mixed precision, step fusing (and oneDNN in fresh "
                 "processes) on this machine; keep only the settings that help.", apply_tune,
         options=TuneOptions, kind="speed"),
]


if __name__ == "__main__":   # the oneDNN probe's child process
    _probe_main(sys.argv[1:])
