"""The latency harness for every runtime, built on optkit.runner's one timing procedure.

A runtime (optkit.runtimes: one registry, one file each) only loads a model and calls it
(`predictor(*arrays) -> [np.ndarray]`); the procedure — load time, one cold call, warm-up, timed runs until a minimum time AND a minimum
count, percentiles, raw samples, peak RSS — is `runner.bench_loaded`, shared by all of them:

    litert        .tflite through runner.load_predictor (ai_edge_litert / tflite_runtime)
    onnxruntime   .onnx through runner.load_predictor (explicit intra-op threads, CPU provider)
    keras         .keras/.h5/SavedModel: a direct call compiled with tf.function (no jit)
    keras-predict the same model through `model.predict` (what most tutorials time)
    tf-xla        the direct call compiled with tf.function(jit_compile=True)
    tensorrt      .engine/.plan through exporters.get("tensorrt").load  (needs an NVIDIA GPU)
    coreml        .mlpackage/.mlmodel through exporters.get("coreml").load (prediction needs macOS)

litert and onnxruntime never import TensorFlow, so `optkit bench model.tflite` runs on a machine
without it. Threads are always set explicitly and recorded: runtimes' own defaults differ
(LiteRT took 1 thread here, onnxruntime every core), which makes comparisons unfair otherwise.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

import numpy as np

from optkit import runner
from optkit import runtimes as runtimes_mod
from optkit.errors import Unavailable, UserError

# Defaults for the timed loop; `optkit bench` exposes them as options. MIN_RUNS is the runner's:
# at least the samples `optkit gate` needs, so two default bench JSONs can always be gated.
WARMUP, MIN_TIME_S, MIN_RUNS, MAX_RUNS = 10, 1.0, runner.MIN_RUNS, 100000
AGREEMENT_SAMPLES = 16


def resolve_runtime(name: str) -> str:
    """A runtime name (or alias) -> its registered name (optkit.runtimes)."""
    return runtimes_mod.get(name).name


def runtimes_for(path: str, requested: Sequence[str] = ()) -> List[str]:
    """The runtimes to bench `path` on: those requested that can run its format, else its default."""
    fmt = runner.artifact_format(path)
    default = runtimes_mod.default_for(fmt)
    if default is None:
        raise UserError(f"{path}: don't know how to run a '{fmt}' artifact; "
                        f"bench takes {', '.join(runtimes_mod.formats())}")
    if not requested:
        return [default.name]
    asked = [runtimes_mod.get(n) for n in requested]
    chosen = [r.name for r in asked if fmt in r.formats]
    if not chosen:
        raise UserError(f"{path}: runtime {', '.join(requested)} cannot run a '{fmt}' artifact "
                        f"(use {', '.join(r.name for r in runtimes_mod.registry().values() if fmt in r.formats)})")
    return list(dict.fromkeys(chosen))


def load_runtime(path: str, runtime: str, threads: int):
    """A Predictor for `path` on `runtime` (a registered runtime name)."""
    try:
        predictor = runtimes_mod.get(runtime).load(path, threads=threads)
        predictor.runtime = runtime
        return predictor
    except runner.RuntimeMissing as exc:
        raise Unavailable(str(exc)) from exc
    except runner.RunnerError as exc:
        raise UserError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# Accuracy and agreement


def _chunks(predictor, xs: Sequence[np.ndarray], batch: int) -> List[np.ndarray]:
    """Outputs over all of `xs` in chunks of `batch`; the last chunk is padded to `batch` (engines
    with a fixed batch reject a short one) and the padding dropped again."""
    n = len(xs[0])
    outs: List[List[np.ndarray]] = []
    for i in range(0, n, batch):
        part = [a[i:i + batch] for a in xs]
        short = batch - len(part[0])
        if short:
            part = [np.concatenate([p, np.zeros((short,) + p.shape[1:], p.dtype)]) for p in part]
        ys = predictor(*part)
        outs.append([y[:batch - short] for y in ys])
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


EVAL_BATCH = 32


def _eval_batch(predictor, batch: int) -> int:
    """Accuracy does not depend on the batch size, but its run time does (model.predict at
    batch 1 costs ~200 ms a call): evaluate in batches of 32 where the model takes any batch
    (LiteRT resizes; a None batch dim elsewhere), else at the benchmarked batch."""
    first = predictor.inputs[0].shape if predictor.inputs else ()
    flexible = predictor.runtime == "litert" or (len(first) > 0 and first[0] is None)
    return max(batch, EVAL_BATCH) if flexible else batch


def accuracy(predictor, x: np.ndarray, y: np.ndarray, batch: int = 1) -> float:
    """Top-1 accuracy (pixel accuracy for segmentation) of the first output on labelled data."""
    return score(predictor, x, y, batch)["accuracy"]


def score(predictor, x: np.ndarray, y: np.ndarray, batch: int = 1) -> dict:
    """optkit.metrics' score of the first output: accuracy, n (and miou for segmentation)."""
    from optkit import metrics

    return metrics.score(_chunks(predictor, [x], max(1, batch))[0], y)


def labelled_samples(dataset, path: str, preprocess: Optional[str] = None, say=None):
    """(x in the artifact's input space, labels, contract name) from a Dataset: every sample of a
    --data source loaded here (all splits), the test split of a Dataset given by a caller. Pixels
    go through the contract: --preprocess, else the one stored with the artifact, else unit."""
    from optkit import contract as contract_mod

    if getattr(dataset, "y_test", None) is None:
        return None, None, None
    splits = ("train", "val", "test") if (getattr(dataset, "details", None) or {}).get("bench_all") else ("test",)
    x = np.concatenate([getattr(dataset, f"x_{s}") for s in splits])
    y = np.concatenate([getattr(dataset, f"y_{s}") for s in splits])
    if (getattr(dataset, "details", None) or {}).get("space") != "pixels":
        return x, y, "as given"
    contract = contract_mod.resolve(preprocess, path=path, say=say or (lambda m: None))
    return contract.to_model(x), y, contract.name


def agreement(outputs: List[np.ndarray], reference: List[np.ndarray]) -> dict:
    """How close `outputs` are to a reference's outputs on the same inputs (no labels needed)."""
    if len(outputs) != len(reference) or any(o.shape != r.shape for o, r in zip(outputs, reference)):
        return {"ok": False, "reason": "outputs differ in number or shape from the reference"}
    max_abs = max(float(np.max(np.abs(o - r))) if o.size else 0.0 for o, r in zip(outputs, reference))
    first, ref = outputs[0].reshape(len(outputs[0]), -1), reference[0].reshape(len(reference[0]), -1)
    top1 = float(np.mean(first.argmax(1) == ref.argmax(1))) if first.shape[1] > 1 else None
    return {"max_abs": max_abs, "top1_agreement": top1, "n": int(len(first))}


# --------------------------------------------------------------------------------------------
# The harness


def bench(paths: Sequence[str], runtimes: Sequence[str] = (), threads: Optional[int] = None,
          batch: int = 1, warmup: int = WARMUP, min_time: float = MIN_TIME_S,
          min_runs: int = MIN_RUNS, max_runs: int = MAX_RUNS, data=None,
          reference: Optional[str] = None, progress: Optional[Callable[[str], None]] = None,
          preprocess: Optional[str] = None) -> dict:
    """Bench every artifact on every applicable runtime; returns the `bench --json` document.

    `data`: an optkit.data Dataset, a --data source string (loaded at each model's input shape)
    or None. With it, each result gets `accuracy` and `accuracy_n` (every sample of a --data
    source; the test split of a Dataset), fed through the artifact's input contract
    (`preprocess`, else the one stored with it, else unit). Without it, each result
    gets `agreement` with a reference — `reference` if given, else the first artifact that
    ran — on the same random inputs.

    Bad input (missing file, unknown runtime, impossible option) raises UserError before
    anything runs; a runtime that cannot run here (no GPU, not macOS) gives a `skipped` row,
    any other failure a `failed` row, so one broken artifact does not hide the others.
    """
    from optkit import env as env_mod

    if batch < 1 or warmup < 0 or min_time < 0 or min_runs < 1:
        raise UserError("need --batch >= 1, --warmup >= 0, --min-time >= 0 and --min-runs >= 1")
    if not paths:
        raise UserError("no artifact to bench")
    threads = runner.default_threads() if threads is None else int(threads)
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    plan = []
    for path in dict.fromkeys(([reference] if reference else []) + list(paths)):
        if not os.path.exists(path):
            raise UserError(f"{path}: no such file or directory")
        plan.append((path, runtimes_for(path, runtimes)))
    say = progress or (lambda msg: None)

    results = []
    ref = {}          # the first artifact that ran: its path, inputs and outputs
    datasets = {}     # --data loaded once per input shape
    for path, names in plan:
        for runtime in names:
            say(f"bench: {path} on {runtime} ({threads} threads, batch {batch})")
            result = _bench_one(path, runtime, threads, batch, warmup, min_time, min_runs, max_runs,
                                data, datasets, ref, preprocess, say)
            results.append(result)
    return {"schema": 1, "env": env_mod.fingerprint(threads=threads), "results": results}


def _dataset_for(data, predictor, cache):
    """`data` as given (a Dataset), or loaded from a --data source at this model's input shape."""
    if data is None or not isinstance(data, str):
        return data
    shape = tuple(predictor.inputs[0].shape[1:])
    classes = predictor.outputs[0].shape[-1] if predictor.outputs and predictor.outputs[0].shape else None
    key = (shape, classes)
    if key not in cache:
        from optkit.data import load_data

        # Every labelled sample given counts (no split: bench trains nothing).
        loaded = load_data(data, input_shape=shape, num_classes=classes, val_fraction=0, test_fraction=0)
        loaded.details["bench_all"] = True
        cache[key] = loaded
    return cache[key]


def _bench_one(path, runtime, threads, batch, warmup, min_time, min_runs, max_runs, data,
               datasets, ref, preprocess=None, say=None) -> dict:
    base = {"path": path, "format": runner.artifact_format(path), "runtime": runtime,
            "threads": threads, "batch": batch, "accuracy": None}
    import_ms = None
    try:
        if runtimes_mod.get(runtime).needs_tensorflow:
            # Importing TensorFlow (~4 s) is paid once per process, not per model: keep it out
            # of load_ms and report it on its own.
            import time

            from optkit import keras_io

            t0 = time.perf_counter()
            keras_io.tf()
            import_ms = (time.perf_counter() - t0) * 1000.0
        result, predictor, _ = runner.bench_loaded(
            lambda: load_runtime(path, runtime, threads), path, batch=batch, warmup=warmup,
            min_time=min_time, min_runs=min_runs, max_runs=max_runs)
    except UserError:
        raise
    except Unavailable as exc:
        return dict(base, status="skipped", reason=str(exc))
    except Exception as exc:  # report the failure in its row; the other artifacts still run
        return dict(base, status="failed", reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
    result["runtime"] = runtime
    result["accuracy"] = None
    if import_ms is not None:
        result["import_ms"] = import_ms
    try:
        dataset = _dataset_for(data, predictor, datasets)
        x, y, contract = labelled_samples(dataset, path, preprocess, say) if dataset is not None else (None,) * 3
        if y is not None:
            scored = score(predictor, x, y, _eval_batch(predictor, batch))
            result.update(accuracy=scored["accuracy"], accuracy_n=int(scored["n"]), preprocess=contract)
            if scored.get("miou") is not None:
                result["miou"] = scored["miou"]
        elif not ref:
            ref["x"] = runner.random_inputs(predictor.inputs, batch=AGREEMENT_SAMPLES, seed=1)
            ref["outputs"] = _chunks(predictor, ref["x"], batch)
            ref["path"] = path
            result["agreement"] = {"reference": path, "is_reference": True}
        else:
            outputs = _chunks(predictor, ref["x"], batch)
            result["agreement"] = dict(agreement(outputs, ref["outputs"]), reference=ref["path"])
    except UserError:
        raise
    except Exception as exc:  # timing succeeded; say why the quality check could not run
        result["quality_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return result
