"""Export one model to several formats and validate every artifact against the model.

The library entry behind `optkit export` and the export stage of `optimize`:

    artifacts = export_model(model, ["tflite", "onnx"], "out/", quantize="int8", data=dataset)

Each format gives one `optkit.records.Artifact`:
  ok       written, loaded back, and its outputs match the model's within the precision's
           tolerance (optkit.parity) - or, where it cannot run here (Core ML off macOS),
           checked structurally with parity `ok=None` and the reason;
  skipped  the format cannot run on this machine (TensorRT without an NVIDIA GPU), or does not
           offer the requested precision; `reason` says which;
  failed   the converter raised, the artifact did not load, or validation failed.
A failure in one format never stops the others.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from optkit import parity as parity_mod
from optkit.errors import Unavailable, UserError
from optkit.records import FAILED, OK, PRECISIONS, SKIPPED, UNVERIFIED, Artifact, Parity

# Validation inputs: enough samples that a top-1 agreement of 0.8 means something (one flip is
# ~3%), few enough that a MobileNet validates in about a second on 2 cores.
VALIDATION_SAMPLES = 32
# With labels, the task metric of a quantized artifact is compared with its source's on up to
# this many held-back samples (accuracy steps of 0.2 points; a second or two on 2 cores).
TASK_CHECK_SAMPLES = 500
QUANTIZE_CHOICES = PRECISIONS


def parse_formats(spec: Iterable[str] | str) -> List[str]:
    """'tflite,onnx' or ['tflite', 'onnx,keras'] -> ['tflite', 'onnx', 'keras'] (known names only)."""
    import exporters

    parts = [spec] if isinstance(spec, str) else list(spec)
    names = []
    for part in parts:
        for name in filter(None, (p.strip().lower() for p in part.split(","))):
            exporters.get(name)  # UserError with a did-you-mean for a typo
            if name not in names:
                names.append(name)
    if not names:
        raise UserError("no export format given (--to tflite,onnx,...)")
    return names


def artifact_path(out_dir: str, stem: str, module, quantize: str) -> str:
    """out/model.tflite, out/model_int8.tflite, out/model_saved_model/ ..."""
    tag = "" if quantize == "none" else f"_{quantize}"
    return os.path.join(out_dir, f"{stem}{tag}{module.SUFFIX}")


def export_model(model, formats: Iterable[str] | str, out_dir: str, *, quantize: str = "none",
                 data=None, stem: Optional[str] = None, threads: Optional[int] = None,
                 options: Optional[Dict[str, Dict[str, Any]]] = None,
                 validation_samples: int = VALIDATION_SAMPLES, progress=None, contract=None,
                 max_drop: Optional[float] = None) -> List[Artifact]:
    """Export `model` (Keras 3, tf_keras, or a keras_io SavedModelCallable) to each format.

    `data`: an optkit.data.Dataset (int8 calibration uses its training split, validation its
    validation/test split) or None (random [0, 1] inputs, recorded in the artifact details).
    `options`: per-format converter options, e.g. {"onnx": {"opset": 13}}; unknown keys are
    rejected by the exporter. `progress`: optional callable(str) for one-line progress messages.
    `contract`: the model's optkit.contract.Contract (`data` is already in its input space);
    stored with every artifact, and random inputs are drawn in its range when there is no data.
    `max_drop`: points of task metric a quantized artifact may lose on labelled data.
    """
    import exporters
    from exporters import _common

    if quantize not in QUANTIZE_CHOICES:
        raise UserError(f"unknown --quantize '{quantize}' (choose from {', '.join(QUANTIZE_CHOICES)})")
    names = parse_formats(formats)
    options = options or {}
    stray = sorted(set(options) - set(names))
    if stray:
        raise UserError(f"options given for {', '.join(stray)}, which is not among the formats ({', '.join(names)})")
    for name in names:  # bad options fail now, before minutes of conversion
        module = exporters.get(name)
        _common.check_request(name, module.PRECISIONS, getattr(module, "OPTIONS", ()), module.PRECISIONS[0],
                              options.get(name, {}))
    from optkit import files

    with files.locked_dir(os.fspath(out_dir)):
        return _export_all(model, names, os.fspath(out_dir), quantize=quantize, data=data, stem=stem or _stem(model),
                           threads=threads, options=options, validation_samples=validation_samples,
                           progress=progress, contract=contract, max_drop=max_drop)


def _export_all(model, names, out_dir, *, quantize, data, stem, threads, options, validation_samples,
                progress, contract=None, max_drop=None) -> List[Artifact]:
    import exporters
    from exporters import _common

    real = data is not None
    data = data if real else _contract_noise(model, contract)
    # Same inputs for every format: artifacts are compared with the model and with each other.
    inputs, source = _common.sample_inputs(model, data, n=validation_samples, seed=1, split="x_val")
    reference_cache = {}

    def reference(arrays):
        key = tuple(len(a) for a in arrays)
        if key not in reference_cache:
            reference_cache[key] = _reference_outputs(model, arrays)
        return reference_cache[key]

    artifacts = []
    for name in names:
        module = exporters.get(name)
        path = artifact_path(out_dir, stem, module, quantize)
        if progress:
            progress(f"export {name} ({quantize}) -> {path}")
        art = export_one(module, model, path, quantize=quantize, data=data, threads=threads,
                         options=options.get(name, {}), inputs=inputs, reference=reference,
                         validation_source=source, contract=contract, max_drop=max_drop, real_data=real)
        artifacts.append(art)
        if progress:
            progress(f"  {name}: {art.status}{': ' + art.reason if art.reason else ''}")
    return artifacts


def _contract_noise(model, contract):
    """No data: random pixels mapped by the contract (a raw-pixel model is calibrated on 0-255)."""
    if contract is None or contract.name == "unit":
        return None
    from exporters import _common

    from optkit import contract as contract_mod

    shapes = _common.input_shapes(model)
    if len(shapes) != 1:
        return None
    return contract_mod.random_inputs(shapes[0][1:], _common.CALIBRATION_SAMPLES, contract, seed=1)


def export_one(module, model, path, *, quantize="none", data=None, threads=None, options=None,
               inputs=None, reference=None, validation_source=None, on_loaded=None, contract=None,
               max_drop: Optional[float] = None, real_data: Optional[bool] = None) -> Artifact:
    """Export with one exporter module, store the input contract with it, load it back and
    validate it (on real data when given; with labels, its task metric against the source).
    `on_loaded(predictor, load_ms)` receives the validated predictor (optimize benchmarks it
    instead of loading the artifact a second time).

    The artifact reaches `path` only if it validated (or, off macOS, passed Core ML's structural
    check). A conversion that raised leaves nothing; an artifact that failed validation is moved
    aside (`model.failed.onnx`: art.path, details["failed_artifact"] and the reason say so); an older
    artifact at `path` is removed either way, so a failed export never looks like a good one.
    A full disk or an unwritable folder stops the run (DiskFull exit 1, BadLocation exit 2).
    """
    from exporters import _common
    from optkit import files

    art = Artifact(format=module.NAME, path=None, quantize=quantize)
    if quantize not in module.PRECISIONS:
        art.status, art.reason = SKIPPED, (f"{module.NAME} has no '{quantize}' precision "
                                           f"(supported: {', '.join(module.PRECISIONS)})")
        return art
    ok, why = module.available()
    if not ok:
        art.status, art.reason = SKIPPED, why
        return art
    if real_data is None:
        real_data = data is not None
        data = data if real_data else _contract_noise(model, contract)
    if inputs is None:
        inputs, validation_source = _common.sample_inputs(model, data, n=VALIDATION_SAMPLES, seed=1, split="x_val")
    path = os.fspath(path)
    # Written and validated under a temp name; only an artifact that passed reaches `path`
    # (optkit.files.staging publishes it in one step). One that failed is moved aside.
    try:
        with files.staging(path) as staged:
            try:
                with _common.quiet_stdout():  # converters print progress; stdout is for --json
                    art.details = dict(module.export(model, staged.path, quantize=quantize, data=data,
                                                     **(options or {})) or {})
                art.quantization = art.details.pop("quantization", None)
            except Unavailable as exc:  # found out only while converting (e.g. no fast int8 on this GPU)
                art.status, art.reason = SKIPPED, files.user_words(str(exc), path)
                staged.discard()
                return art
            except (files.BadLocation, files.DiskFull):
                raise
            except Exception as exc:  # this format failed (e.g. a QAT model has no .keras form); others go on
                location = files.location_error(exc, path)
                if location is not None:
                    raise location from None
                art.status, art.reason = FAILED, files.user_words(
                    f"export failed: {type(exc).__name__}: {_common.first_line(exc)}", path)
                art.quantization = getattr(exc, "quantization", None)   # an unmet int8 goal: what was tried
                staged.discard()
                _remove_artifact(path)   # an older file by this name no longer matches the model
                return art
            art.details["validation_source"] = validation_source
            if contract is not None:
                _store_contract(art, staged.path, contract)
            art.size_bytes, art.gzip_bytes = sizes(staged.path)
            art.parity = check_artifact(module, staged.path, model, quantize, inputs=inputs, reference=reference,
                                        data=data, real_data=real_data, threads=threads, max_drop=max_drop,
                                        on_loaded=on_loaded, contract=contract)
            art.parity.reason = files.user_words(art.parity.reason or "", path) or art.parity.reason
            if art.parity.ok is False:
                aside = files.failed_name(path, module.SUFFIX)
                files.replace(staged.path, aside)
                staged.discard()
                _remove_artifact(path)
                art.details["failed_artifact"] = art.path = aside   # the report says where it went
                art.status, art.reason = FAILED, f"validation failed: {art.parity.reason} (moved aside to {aside})"
                return art
    except (files.BadLocation, files.DiskFull) as exc:
        raise type(exc)(files.user_words(str(exc), path)) from None
    _remove_artifact(files.failed_name(path, module.SUFFIX))   # an earlier failure is history now
    art.path = path
    if contract is not None and os.path.isfile(path) and "sidecar" in art.details.get("preprocess", {}).get("stored_in", ""):
        _store_contract(art, path, contract)   # a sidecar beside the temp file stayed behind: write it here
    if art.parity.ok is None:
        art.status, art.reason = UNVERIFIED, art.parity.reason
    return art


def _store_contract(art, path, contract):
    from exporters import _common

    from optkit import contract as contract_mod

    try:
        where = contract_mod.attach(path, contract)
        art.details["preprocess"] = dict(contract.stored_json(), stored_in=where)
    except Exception as exc:  # noqa: BLE001 - the artifact is fine; only the stored contract is missing
        art.details["preprocess_error"] = _common.first_line(exc)


def _remove_artifact(path):
    from optkit import files

    if os.path.lexists(path):
        files.remove(path)


def check_artifact(module, path, model, quantize, *, inputs, data=None, reference=None, real_data=True,
                   threads=None, max_drop: Optional[float] = None, on_loaded=None, contract=None) -> Parity:
    """Is the artifact at `path` the model `model` (inputs in the model's space)? Output parity on
    `inputs`, then with labelled `data` the task metric against the model's (parity.task_check).
    A quantized artifact that failed on real data also says whether its source was stable enough
    to be matched at all (parity.source_stability)."""
    if reference is None:
        def reference(arrays):
            return _reference_outputs(model, arrays)
    parity = validate_artifact(module, path, reference, inputs, quantize, threads=threads,
                               input_names=_input_names(model), real_data=real_data, on_loaded=on_loaded)
    if parity.ok is not False and real_data and getattr(data, "y_test", None) is not None:
        _task_check(module, model, path, parity, data, quantize, threads, max_drop)
    if parity.ok is False and real_data and quantize in parity_mod.QUANTIZED:
        _explain_unstable_source(parity, model, inputs, quantize, contract)
    return parity


def _explain_unstable_source(parity, model, inputs, quantize, contract):
    """Add to a failed quantized artifact's reason when its source itself cannot hold still."""
    from optkit import contract as contract_mod

    grey = [abs(s) for s in (contract or contract_mod.parse("unit", contract_mod.DEFAULT)).scale]
    try:   # the model run directly: the shared reference cache keys on batch shape, not values
        parity.source_snr_db = parity_mod.source_stability(lambda arrays: _reference_outputs(model, arrays), inputs, grey)
    except Exception:  # noqa: BLE001 - a diagnosis must not turn a validation failure into a crash
        return
    parity.reason = (parity.reason or "") + parity_mod.stability_note(parity.source_snr_db, quantize)


def _task_check(module, model, path, parity, data, quantize, threads, max_drop):
    """With labels: the artifact's task metric against the source's on held-back samples."""
    from exporters import _common

    x, y = data.x_test[:TASK_CHECK_SAMPLES], data.y_test[:TASK_CHECK_SAMPLES]
    if not len(y):
        return
    try:
        predictor = module.load(path, threads=threads)
        got = np.concatenate([np.asarray(predictor(x[i:i + 32].astype(np.float32))[0])
                              for i in range(0, len(x), 32)])
    except Unavailable:   # cannot run here (Core ML off macOS): validate_artifact said unverified already
        return
    except Exception as exc:  # noqa: BLE001 - validate_artifact already ran it; it failed here
        parity.ok, parity.reason = False, f"artifact failed on the labelled samples: {_common.first_line(exc)}"
        return
    ref = _reference_outputs(model, [x])[0]
    check = parity_mod.task_check(ref, got, y, quantize, max_drop)
    parity.metric = check
    if not np.all(np.isfinite(got)):
        parity.ok, parity.reason = False, "the artifact produced NaN/inf on the labelled samples"
    elif not check["ok"]:
        parity.ok = False
        parity.reason = (f"{check['metric']} {100 * check['artifact']:.1f}% vs the source's "
                         f"{100 * check['source']:.1f}% on {check['n']} labelled samples: a drop of "
                         f"{check['drop_points']:.1f} points > {check['max_drop_points']:g}")
    elif parity.ok is None and parity.inputs == "data":
        parity.ok, parity.reason = True, ""


def validate_artifact(module, path, reference, inputs, quantize, *, threads=None, input_names=None,
                      real_data: bool = True, on_loaded=None) -> Parity:
    """Load `path` with its exporter and compare it with `reference` (optkit.parity).
    `input_names`: the model's input names in the order of `inputs` (matched by name)."""
    import time

    from exporters import _common

    try:
        t0 = time.perf_counter()
        predictor = module.load(path, threads=threads)
        if on_loaded is not None:
            on_loaded(predictor, (time.perf_counter() - t0) * 1000.0)
    except Unavailable as exc:  # converted fine, cannot run here (Core ML off macOS)
        return parity_mod.unverified(str(exc))
    except Exception as exc:
        return Parity(ok=False, reason=f"artifact did not load: {_common.first_line(exc)}")
    expected = None
    if getattr(module, "NAMES_OUTPUTS", False):
        expected = _common.output_names(len(predictor.outputs))
    return parity_mod.validate(reference, predictor, inputs, quantize, expected_names=expected,
                               input_names=input_names, real_data=real_data)


def _input_names(model):
    from exporters import _common

    return _common.input_names(model)


def _reference_outputs(model, arrays):
    from optkit import keras_io

    out = keras_io.predict(model, list(arrays) if len(arrays) > 1 else arrays[0], batch_size=32)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _stem(model):
    name = getattr(model, "name", None) or "model"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "model"


def sizes(path):
    """(bytes on disk, bytes after gzip -9): optkit.runner.file_sizes, the one implementation that
    bench and the compression steps use too, so sizes agree across reports."""
    from optkit.runner import file_sizes

    return file_sizes(os.fspath(path))
