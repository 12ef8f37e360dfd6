"""Speed steps: `jit` (XLA), `amp` (mixed precision), `fusing` (steps_per_execution), `cpu` (oneDNN, threads).

They do not change what the model computes; they change how it trains. Each returns a copy of the
model carrying the setting (optkit.train.TrainingConfig), compiled with it, so that
- every later `train.fit` (fine-tuning after a rewrite, QAT, the ladder) trains that way, and
- a `.keras` file saved afterwards records it: `jit_compile` / `steps_per_execution` in its compile
  config (read back by `train.saved_training_config`), mixed precision in every layer's dtype policy.

These switches were made for GPUs. On CPUs they mostly do not pay (shared/STACK.md: mixed precision
2-15× slower without bf16 units, XLA within noise), so `amp` with the default policy "auto" only
applies a policy the hardware computes natively, and the Lesson 14 ladder (optkit.ladder) measures
a few steps of each setting on the machine at hand and keeps only what helps.

oneDNN is fixed when TensorFlow is imported (TF_ENABLE_ONEDNN_OPTS) and thread pools when its runtime
starts, so the `cpu` step records the wish and applies what it still can; measuring oneDNN takes a
fresh process (optkit.ladder.probe_onednn), and `cpu_environment()` gives the variables to launch one.
"""
from __future__ import annotations

import os
from typing import Optional

from optkit import keras_io, train
from optkit.errors import UserError
from optkit.steps import Step, StepResult

POLICIES = ("auto", "mixed_bfloat16", "mixed_float16", "float32")


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
    if steps < 1:
        raise UserError(f"fusing: steps must be >= 1, got {steps}")
    new = _copy_with(model, steps_per_execution=int(steps))
    return StepResult(new, {"steps_per_execution": int(steps),
                            "applies_to": "every later optkit training run and the saved model's compile config",
                            "note": "runs this many train steps per call into the TF runtime, saving per-step "
                                    "Python overhead; progress updates arrive once per group"})


def apply_amp(model, ctx, *, policy="auto"):
    if policy not in POLICIES:
        raise UserError(f"amp: policy must be one of {', '.join(POLICIES)}, got '{policy}'")
    info = {"requested": policy, "cpu_bf16": cpu_has_bf16(), "gpus": len(gpus())}
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
    if onednn not in ("auto", "on", "off"):
        raise UserError(f"cpu: onednn must be auto, on or off, got '{onednn}'")
    if threads < 0:
        raise UserError(f"cpu: threads must be >= 0 (0 = TensorFlow's default), got {threads}")
    current = onednn_enabled()
    info = {"onednn_in_this_process": current, "cores": os.cpu_count()}
    wanted = None if onednn == "auto" else onednn == "on"
    if onednn == "auto" and ctx is not None and getattr(ctx, "data", None) is not None:
        from optkit import ladder      # measuring oneDNN needs fresh processes: the ladder's probe

        probe = ladder.probe_onednn(model, ctx.data, batch_size=ctx.batch_size, workdir=ctx.workdir)
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


STEPS = [
    Step("jit", "Train with XLA (jit_compile=True).", apply_jit,
         options={"enable": (bool, True, "false turns XLA off")}, kind="speed"),
    Step("amp", "Train in mixed precision: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with bf16 units; "
                "the output layer stays float32.", apply_amp,
         options={"policy": (str, "auto", "auto | mixed_bfloat16 | mixed_float16 | float32")}, kind="speed"),
    Step("fusing", "Run several train steps per execution (steps_per_execution).", apply_fusing,
         options={"steps": (int, 32, "train steps fused into one execution")}, kind="speed"),
    Step("cpu", "CPU settings: oneDNN (measured in fresh processes with 'auto') and the thread count.",
         apply_cpu, options={"onednn": (str, "auto", "auto | on | off"),
                             "threads": (int, 0, "intra-op threads (0: TensorFlow's default)")}, kind="speed"),
]
