"""The main job: plan -> load -> steps in order -> exports -> validation -> benchmark -> report.

`run(plan, out_dir)` executes a resolved optkit.plan.Plan and writes into `out_dir`:
plan.json (first, so even a crashed run can be replayed), one folder per variant (its model and
its artifacts), report.json (the single source), report.md, report.html and plots.

Failures are data, not exceptions: a step, an export, a validation or a runtime that fails
becomes a `failed: <reason>` row and the run goes on; one that cannot run on this machine
(TensorRT without an NVIDIA GPU, Core ML prediction off macOS) becomes `skipped: <reason>`.
Only a user error (bad model file, bad data) stops the run, before anything is trained.

Modes (see optkit.recipes): ``chain`` runs the plan's variants in order, each from its parent;
``ladder`` does the same with Lesson 14's rungs (optkit.ladder: a rung the model does not allow is
skipped and the next builds on the one below), then compares the rungs; ``search`` hands this pipeline to optkit.search, which creates variants as it goes (they are
added to the plan so the written plan.json replays exactly what was tried).

The tiny schedule (OPTKIT_TINY=1 or the hidden `--tiny` flag: 1 epoch, 320 samples, short timing
loops) exists for end-to-end tests; its numbers mean nothing.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import time
import traceback
from typing import Any, Dict, List, Optional

import numpy as np

from optkit import metrics
from optkit import plan as plan_mod
from optkit import quant_debug
from optkit import verdicts
from optkit.errors import OptkitError, RunFailure, Unavailable, UserError
from optkit.records import FAILED, OK, SKIPPED, SCHEMA, UNVERIFIED, Artifact, Latency, Variant

# Timing loops: long enough for a stable median on a noisy 2-core machine, short enough that a
# demo with a dozen artifacts stays within minutes. The tiny schedule shortens them.
BENCH = {"warmup": 5, "min_time": 0.5, "min_runs": 20}
# What users know them as (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy).
STRATEGY_CLASSES = {"mirrored": "MirroredStrategy", "multiworker": "MultiWorkerMirroredStrategy"}
KERAS_BATCH = 32          # "inference time per step" is Lesson 14's ms per batch of 32
MAX_EVAL_SAMPLES = 1000   # artifacts are evaluated on at most this many test samples


def default_out_dir() -> str:
    return os.path.join("runs", "optimize-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def _log(message: str) -> None:
    from optkit import console

    console.log(message)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-")[:60] or "variant"


def _reason(exc: BaseException) -> str:
    """One line for a failure row: the exception's own message, its type when it has none."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, OptkitError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:400]


class Pipeline:
    """The state of one run.

    Its public surface, for drivers such as optkit.search: `add_variant(spec)` (a new candidate:
    added to the plan, built, measured, exported), `add_export(variant_id, export)` (one more
    export of a built variant, added to its spec), the read-only accessors `record(id)`,
    `baseline_record()`, `variant_records()`, and `mark(variant_id, ...)` for a driver's verdicts.
    Drivers never touch the plan's lists or the records directly."""

    def __init__(self, plan: plan_mod.Plan, out_dir: str, *, progress: bool = True,
                 previous: Optional[Dict[str, dict]] = None):
        self.plan = plan
        self.out_dir = out_dir
        self.progress = progress
        self.tiny = plan.tiny
        self.bench = dict(BENCH, min_time=plan_mod.TINY["min_time_s"], min_runs=5, warmup=2) if plan.tiny else BENCH
        self.models: Dict[str, Any] = {}        # variant id -> live model
        self.records: Dict[str, Variant] = {}   # variant id -> record (insertion order = report order)
        self.specs: Dict[str, plan_mod.VariantSpec] = {}
        self.data = None
        self.contract = None    # optkit.contract.Contract: the model's input space (self.data is in it)
        self.strategy = None
        self.threads = None
        self.notes: List[str] = []
        self.started = time.perf_counter()
        self.bar = None   # progress over export + validation + benchmark, open while a variant exports
        self.bar_total: Optional[int] = None
        self.exported = 0
        self._dirs: Dict[str, str] = {}
        # The steps behind each variant's *model*: a rejected variant holds its parent's model,
        # so its children's history (what QAT reads to pick PQAT/CQAT) skips the rejected step.
        self.lineage: Dict[str, List[dict]] = {}
        # Variant id -> the variant whose model it holds (itself, or for a rejected or skipped
        # one, what it passed through): a step is judged against the model it was applied to.
        self.built_on: Dict[str, str] = {}
        # Chain runs keep a step only when it does not cost more than this on validation.
        self.judging = plan.mode == "chain"
        self.tolerance = getattr(plan, "max_accuracy_drop", verdicts.DEFAULT_TOLERANCE_POINTS)
        # --resume: finished variants of the earlier run in this folder, by content-hash id.
        self.previous: Dict[str, dict] = dict(previous or {})
        self.current: Optional[str] = None   # the variant being built (marked if interrupted)

    # ------------------------------------------------------------------ set-up

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def make_strategy(self):
        """tf.distribute's own strategies: one device works (a CPU here), several GPUs/hosts scale."""
        if not self.plan.strategy:
            return None
        from optkit import keras_io

        tf = keras_io.tf()
        if self.plan.strategy == "mirrored":
            return tf.distribute.MirroredStrategy()
        # Reads TF_CONFIG for the cluster; without it, a single worker (useful to test the path).
        return tf.distribute.MultiWorkerMirroredStrategy()

    def load_baseline(self) -> Any:
        """Build or load the baseline model, and load the data shaped for it.

        A zoo model takes its input size from the zoo and its class count from the data; a user's
        model dictates both to the data.
        """
        from optkit import keras_io

        plan = self.plan
        if plan.model.startswith(plan_mod.ZOO_PREFIX):
            from optkit import zoo

            name = plan.model[len(plan_mod.ZOO_PREFIX):]
            entry = next(e for e in zoo.list_models() if e.name == name)
            self.data = self._load_data(tuple(entry.default_input_shape), None)
            with self.scope():   # variables must be created under the strategy that trains them
                model = zoo.build(name, input_shape=tuple(self.data.input_shape),
                                  num_classes=self.data.num_classes, seed=plan.seed)
            self._adopt_contract(model, probe=False)
            return model
        with self.scope():
            model = keras_io.load(plan.model, unsafe=plan.unsafe).model
        input_shape, num_classes = _model_io(model)
        if plan.data:
            self.data = self._load_data(input_shape, num_classes)
        self._adopt_contract(model, probe=True)
        return model

    def _adopt_contract(self, model, *, probe: bool) -> None:
        """The model's input contract (optkit.contract), said once; the data moves into its space.
        An untrained zoo model has nothing to probe."""
        from optkit import contract

        def say(message):
            _log(message)
            if message.startswith("warning: "):
                self.notes.append(message[len("warning: "):])

        zoo = self.plan.model.startswith(plan_mod.ZOO_PREFIX)
        self.contract, self.data = contract.prepare(self.plan.preprocess, model=model,
                                                    path=None if zoo else self.plan.model, data=self.data,
                                                    say=say, probe=probe)

    def _load_data(self, input_shape, num_classes):
        from optkit import data as data_mod

        plan = self.plan
        data = data_mod.load_data(plan.data, input_shape=input_shape, num_classes=num_classes,
                                  seed=plan.seed, limit=plan.data_limit,
                                  offline=plan.offline or None)
        note = data_mod.small_data_note(data)
        if note:
            _log(note)
            self.notes.append(note)
        return data

    # ------------------------------------------------------------------ variants

    def add_baseline(self, model, train_result=None) -> Variant:
        spec = self.plan.baseline
        record = Variant(id=spec.id, name=spec.name, parent=None, steps=[])
        if train_result is not None:
            record.train_time_per_epoch_s = train_result.time_per_epoch_s
            record.details["training"] = train_result.to_json()
        self._finish_variant(spec, record, model)
        return record

    def make_variant(self, spec: plan_mod.VariantSpec, *, not_applicable: str = FAILED,
                     pass_through: bool = False) -> Variant:
        """See _make_variant; a variant finished in an earlier run into this folder is reused."""
        reused = self.reuse(spec)
        if reused is not None:
            return reused
        self.current = spec.id
        record = self._make_variant(spec, not_applicable=not_applicable, pass_through=pass_through)
        self.current = None   # not reached when interrupted: the variant stays marked unfinished
        return record

    def reuse(self, spec: plan_mod.VariantSpec) -> Optional[Variant]:
        """The earlier run's record and model of `spec` (same id = same model, data, steps and
        options), or None when it did not finish there or its model cannot be read back."""
        from optkit import keras_io

        prev = self.previous.get(spec.id)
        if not prev or prev.get("status") not in (OK, verdicts.REJECTED, SKIPPED):
            return None
        if prev.get("status") == OK:
            try:
                model = keras_io.load(prev["path"], unsafe=self.plan.unsafe).model
            except Exception:  # noqa: BLE001 - not reusable (e.g. a QAT .h5): build it again
                return None
        elif spec.parent in self.models:
            model = self.models[spec.parent]          # rejected / not applicable: the parent's model
        else:
            return None
        fields = {k: prev.get(k) for k in ("id", "name", "parent", "steps", "path", "params", "accuracy",
                                           "train_time_per_epoch_s", "inference_ms_per_step", "status", "reason")}
        record = Variant(**{k: v for k, v in fields.items() if v is not None or k in ("parent",)},
                         artifacts=list(prev.get("artifacts") or []), details=dict(prev.get("details") or {}))
        record.reused = True
        self.specs[spec.id] = spec
        self.records[spec.id] = record
        self.models[spec.id] = model
        parent_steps = self.lineage.get(spec.parent, []) if spec.parent else []
        self.lineage[spec.id] = list(record.steps) if record.status == OK else list(parent_steps)
        self.built_on[spec.id] = spec.id if record.status == OK else self.built_on.get(spec.parent, spec.parent)
        self.exported += len(spec.exports)
        _log(f"variant {record.name} [{record.id}]: reused from the earlier run in {self.out_dir}")
        return record

    def _make_variant(self, spec: plan_mod.VariantSpec, *, not_applicable: str = FAILED,
                      pass_through: bool = False) -> Variant:
        """Apply `spec.steps` in order to its parent's model; measure, save and export the result.

        A step that refuses the model (UserError: no Flatten head to pool, a layer tfmot cannot
        wrap) gives a row with status `not_applicable`: failed when the user asked for the step,
        skipped when the search or a recipe merely tried it. With `pass_through` (the ladder's
        rungs) the refused variant's children build on its parent's model instead, as if the
        step had not been there.
        """
        from optkit import steps as steps_mod
        from optkit.steps import StepContext

        parent = self.records.get(spec.parent)
        record = Variant(id=spec.id, name=spec.name, parent=spec.parent,
                         steps=list(self.lineage.get(spec.parent, parent.steps)) if parent else [])
        entries = [{"name": s.name, "options": dict(s.options), "info": {}} for s in spec.steps]
        record.steps.extend(entries)
        self.specs[spec.id] = spec
        self.records[spec.id] = record
        if parent is None or spec.parent not in self.models:
            why = parent.reason if parent is not None and parent.reason else "its parent was not built"
            record.status, record.reason = SKIPPED, f"parent {spec.parent} unavailable: {why}"
            record.artifacts = [Artifact(e.format, None, e.quantize, status=SKIPPED, reason="variant not built")
                                for e in spec.exports]
            return record
        model = self.models[spec.parent]
        labels = []
        for i, (plan_step, entry) in enumerate(zip(spec.steps, entries)):
            step = steps_mod.get(plan_step.name)
            history = [s["name"] for s in record.steps[:len(record.steps) - len(entries) + i]]
            ctx = StepContext(data=self.data, epochs=plan_step.epochs or self.plan.epochs,
                              batch_size=self.plan.batch_size, progress=self.progress,
                              workdir=self.variant_dir(record), seed=self.plan.seed,
                              extra={"strategy": self.strategy, "history": history})
            _log(f"variant {record.name} [{record.id}]: {plan_step.name}"
                 + "".join(f" {k}={v}" for k, v in sorted(plan_step.options.items())))
            t0 = time.perf_counter()
            try:
                why_not = step.why_not(model)
                if why_not:
                    raise UserError(why_not)
                with self.scope():
                    result = step.apply(model, ctx, **plan_step.options)
            except Exception as exc:  # noqa: BLE001 - a failing step is a row, the run goes on
                if isinstance(exc, UserError):
                    record.status, record.reason = not_applicable, f"step {plan_step.name}: {_reason(exc)}"
                    if pass_through:
                        self.models[spec.id] = self.models[spec.parent]
                        self.lineage[spec.id] = self.lineage.get(spec.parent, parent.steps)
                        self.built_on[spec.id] = self.built_on.get(spec.parent, spec.parent)
                else:
                    record.status, record.reason = FAILED, f"step {plan_step.name} failed: {_reason(exc)}"
                    record.details["traceback"] = traceback.format_exc(limit=8)
                record.artifacts = [Artifact(e.format, None, e.quantize, status=SKIPPED,
                                             reason=f"variant {record.status}") for e in spec.exports]
                _log(record.reason)
                return record
            entry["info"] = _jsonable(result.info)
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            if result.export_only:
                entry["export_only"] = result.export_only
            if result.label:
                labels.append(result.label)
            model = result.model
            record.train_time_per_epoch_s = _fine_tune_time(result.info) or record.train_time_per_epoch_s
        if labels:      # what a step decided at run time names the variant: "Tuned (JIT+AMP)"
            record.name = f"{spec.name} ({', '.join(labels)})"
        self._finish_variant(spec, record, model)
        return record

    # ------------------------------------------------------------------ the public surface

    def add_variant(self, spec: plan_mod.VariantSpec, *, not_applicable: str = FAILED) -> Variant:
        """A variant the plan did not list yet (a search candidate): add it to the plan, so the
        written plan.json replays it, and build it."""
        if any(v.id == spec.id for v in self.plan.variants):
            raise ValueError(f"variant {spec.id} is already in the plan")
        self.plan.variants.append(spec)
        return self.make_variant(spec, not_applicable=not_applicable)

    def add_export(self, variant_id: str, export: plan_mod.ExportSpec, *, evaluate: bool = True) -> Artifact:
        """Export a built variant to one more format (added to its spec); the artifact is recorded."""
        spec, record = self.specs[variant_id], self.records[variant_id]
        if export not in spec.exports:
            spec.exports.append(export)
        artifact = self.export(record, self.models[variant_id], export, evaluate=evaluate)
        record.artifacts.append(artifact)
        return artifact

    def record(self, variant_id: str) -> Variant:
        return self.records[variant_id]

    def baseline_record(self) -> Variant:
        return self.records[self.plan.baseline.id]

    def variant_records(self) -> List[Variant]:
        """Every variant built so far, in plan order."""
        return list(self.records.values())

    def mark(self, variant_id: str, *, artifact: Optional[Artifact] = None, **details) -> None:
        """Record a driver's verdict (best, Pareto, hopeless) on a variant or one of its artifacts."""
        target = artifact if artifact is not None else self.records[variant_id]
        target.details.update(details)

    def _finish_variant(self, spec, record: Variant, model) -> None:
        self.specs[spec.id] = spec
        self.records[record.id] = record
        self.models[record.id] = model
        self.lineage[record.id] = list(record.steps)
        self.built_on[record.id] = record.id
        self.measure(record, model)
        if self._reject_if_worse(record):
            return
        self.save(record, model)
        record.artifacts = self.export_all(record, model, spec.exports)

    def export_all(self, record: Variant, model, exports) -> List[Artifact]:
        """Export one variant to each format, under the run's progress bar, which shows only while
        exports run (training bars of the next variant never sit under a stale one)."""
        from optkit import console

        self.bar = console.bar(self.bar_total, "export, validate, bench", unit="artifact",
                               enabled=self.progress and bool(exports), initial=self.exported)
        try:
            return [self.export(record, model, e) for e in exports]
        finally:
            if self.bar is not None:
                self.bar.close()
            self.bar = None

    def _reject_if_worse(self, record: Variant) -> bool:
        """Score a chain variant against its parent on validation; a step that costs more than
        the tolerance is `rejected` (with both numbers) and its children build on the parent."""
        parent = self.records.get(self.built_on.get(record.parent, record.parent)) if record.parent else None
        if not self.judging or parent is None:
            return False
        verdict = verdicts.judge(record.details.get("val_accuracy"), parent.details.get("val_accuracy"),
                                 self.tolerance)
        record.details["verdict"] = verdict
        if verdict["kept"]:
            return False
        record.status, record.reason = verdicts.REJECTED, verdict["reason"]
        self.models[record.id] = self.models[parent.id]
        self.lineage[record.id] = self.lineage.get(parent.id, parent.steps)
        self.built_on[record.id] = parent.id
        record.artifacts = [Artifact(e.format, None, e.quantize, status=SKIPPED, reason="variant rejected")
                            for e in self.specs[record.id].exports]
        _log(f"{record.name}: {verdict['reason']}; the next step builds on {parent.name}")
        return True

    def export_restriction(self, record: Variant) -> Optional[plan_mod.ExportSpec]:
        """A step may say its model has one destination only (QAT: full-integer TFLite)."""
        only = None
        for step in record.steps:
            if step.get("export_only"):
                only = plan_mod.ExportSpec.parse(step["export_only"])
        return only

    def variant_dir(self, record: Variant) -> str:
        """One folder per variant, named when it is first asked for (a variant renamed by its
        step's label keeps its folder)."""
        path = self._dirs.get(record.id)
        if path is None:
            path = self._dirs[record.id] = os.path.join(self.out_dir, f"{_slug(record.name)}-{record.id[:8]}")
        os.makedirs(path, exist_ok=True)
        return path

    def measure(self, record: Variant, model) -> None:
        """Parameters, top-1 accuracy on the test split and Keras inference time per batch of 32."""
        from optkit import keras_io, runner

        try:
            from optkit.compression import parameter_count

            record.params = parameter_count(model)
        except Exception as exc:  # noqa: BLE001 - a SavedModel callable may not know
            record.details["params_error"] = _reason(exc)
        if hasattr(model, "layers"):   # what channel pruning shrinks besides the parameters
            from optkit import inspect_model

            record.details["multiply_adds"] = inspect_model.total_multiply_adds(model)
        if self.data is not None and self.data.labelled:
            try:
                predict = lambda x: keras_io.predict(model, x, batch_size=KERAS_BATCH)  # noqa: E731
                _score(record, predict, self.data.x_test, self.data.y_test)
                record.details["accuracy_n"] = record.accuracy_n
                # Decisions (keep a step or not) use validation; the test split only reports.
                if len(self.data.y_val):
                    val = metrics.evaluate(predict, self.data.x_val, self.data.y_val, batch=KERAS_BATCH)
                    record.details["val_accuracy"] = val["accuracy"]
                    record.details["val_n"] = int(val["n"])
            except Exception as exc:  # noqa: BLE001
                record.details["accuracy_error"] = _reason(exc)
        try:
            from optkit import train

            # A model that trains with XLA is timed with XLA too (Lesson 14's "ms/step" of the +JIT rungs).
            jit = bool(getattr(train.training_config(model), "jit_compile", False))
            x = self._inputs(model, KERAS_BATCH)
            keras_io.predict(model, x, batch_size=KERAS_BATCH, jit_compile=jit)   # trace outside the timed loop
            stats = runner.measure(lambda: keras_io.predict(model, x, batch_size=KERAS_BATCH, jit_compile=jit),
                                   warmup=self.bench["warmup"], min_time=self.bench["min_time"],
                                   min_runs=self.bench["min_runs"])
            record.inference_ms_per_step = stats["p50"]
            record.details["inference"] = {"path": "keras_io.predict (compiled tf.function"
                                                   + (", jit_compile=True)" if jit else ")"),
                                           "batch": KERAS_BATCH, "p90": stats["p90"], "n": stats["n"]}
        except Exception as exc:  # noqa: BLE001
            record.details["inference_error"] = _reason(exc)

    def _inputs(self, model, batch):
        if self.data is not None:
            x = self.data.x_test[:batch]
            if len(x) < batch:
                x = np.resize(x, (batch,) + x.shape[1:])
            return x.astype(np.float32)
        shape, _ = _model_io(model)
        rng = np.random.default_rng(self.plan.seed)
        return rng.uniform(0.0, 1.0, size=(batch,) + tuple(shape)).astype(np.float32)

    def save(self, record: Variant, model) -> None:
        """The variant's model in its folder: a Keras 3 `.keras`; tf_keras-only models (QAT) as `.h5`."""
        from optkit import keras_io

        try:
            path, note = keras_io.save_variant(model, self.variant_dir(record))
        except Exception as exc:  # noqa: BLE001 - an unsaved model is said in the record, the run goes on
            record.details["save_error"] = _reason(exc)
            return
        record.path = path
        record.details["size_bytes"] = os.path.getsize(path)
        if note:
            record.details["saved_as"] = note

    # ------------------------------------------------------------------ exports

    def export(self, record: Variant, model, spec: plan_mod.ExportSpec, *, evaluate: bool = True) -> Artifact:
        """Export one variant to one format, validate it against the variant, time it, score it."""
        try:
            import exporters
        except ModuleNotFoundError:
            return Artifact(spec.format, None, spec.quantize, status=FAILED,
                            reason="the exporters package is not installed in this build")
        try:
            module = exporters.get(spec.format)
        except UserError as exc:
            return Artifact(spec.format, None, spec.quantize, status=FAILED, reason=str(exc))
        only = self.export_restriction(record)
        forced = None
        if only is not None and (only.format, only.quantize) != (spec.format, spec.quantize):
            step = next(s["name"] for s in reversed(record.steps) if s.get("export_only"))
            wanted = [(e.format, e.quantize) for e in self.specs[record.id].exports] if record.id in self.specs else []
            if only.format != spec.format or (only.format, only.quantize) in wanted:
                return Artifact(spec.format, None, spec.quantize, status=SKIPPED,
                                reason=f"a {step} model exports only to {only.label}"
                                + (" (exported as such)" if only.format == spec.format else ""))
            # Same format, another precision: a QAT model's only meaningful precision is the one its
            # fake-quant training prepared (full-integer int8), so that is what --to tflite gets.
            forced = f"{spec.label} of a {step} model exported as {only.label}, its only meaningful precision"
            _log(forced)
            spec = only
        from optkit import export as export_mod

        out = export_mod.artifact_path(self.variant_dir(record), "model", module, spec.quantize)
        _log(f"export {record.name} -> {spec.label}")
        # export_one handles unavailable formats/precisions (skipped) and validates with optkit.parity.
        try:
            options = quant_debug.format_options(spec.format, self.plan.int8) if spec.quantize == "int8" else {}
            loaded = {}
            artifact = export_mod.export_one(module, model, out, quantize=spec.quantize, data=self.data,
                                             threads=self.threads, options=options, contract=self.contract,
                                             on_loaded=lambda p, ms: loaded.update(predictor=p, load_ms=ms))
        except (UserError, RunFailure):   # a bad output folder or a full disk stops the run
            raise
        except Exception as exc:  # noqa: BLE001 - export_one guards the converter; this guards the rest
            artifact = Artifact(spec.format, None, spec.quantize, status=FAILED,
                                reason=f"export failed: {_reason(exc)}")
        if forced:
            artifact.details["precision_note"] = forced
        if artifact.status in (OK, UNVERIFIED):
            self.bench_artifact(module, artifact, evaluate=evaluate, loaded=loaded)
        if artifact.status != OK:
            _log(f"  {spec.label}: {artifact.status}: {artifact.reason}")
        self.exported += 1
        if self.bar is not None:
            self.bar.update(1)
        return artifact

    def bench_artifact(self, module, artifact: Artifact, *, evaluate: bool = True,
                       loaded: Optional[dict] = None) -> None:
        """Latency at batch 1 (the deployment case) and top-1 accuracy on the test split.

        `loaded` holds the predictor validation loaded (and its load time): it is timed and scored
        as it is, not loaded a second time."""
        from optkit import runner

        threads = runner.default_threads()
        reuse = bool(loaded) and loaded.get("predictor") is not None and loaded["predictor"].threads in (None, threads)
        load = (lambda: loaded["predictor"]) if reuse else (lambda: module.load(artifact.path, threads=threads))
        try:
            result, predictor, _ = runner.bench_loaded(
                load, artifact.path, batch=1,
                warmup=self.bench["warmup"], min_time=self.bench["min_time"], min_runs=self.bench["min_runs"])
            if reuse:   # the load happened during validation; its time is the load time
                result["load_ms"] = loaded["load_ms"]
                artifact.details["predictor"] = "the one validation loaded (cold_ms follows validation's calls)"
        except Unavailable as exc:
            artifact.details["bench"] = f"skipped: {exc}"
            return
        except Exception as exc:  # noqa: BLE001 - it exported but does not run here: a failed row
            artifact.status, artifact.reason = FAILED, f"runtime failed: {_reason(exc)}"
            return
        stats = result["latency_ms"]
        artifact.latency_ms = Latency(runtime=result["runtime"], p50=stats["p50"], p90=stats["p90"],
                                      p99=stats["p99"], mean=stats["mean"], std=stats["std"], n=stats["n"],
                                      threads=result.get("threads"), batch=1)
        artifact.details.update(load_ms=round(result["load_ms"], 3), cold_ms=round(result["cold_ms"], 3),
                                peak_rss_mb=result.get("peak_rss_mb"))
        if evaluate and self.data is not None and self.data.labelled:
            try:
                _score(artifact, predictor, self.data.x_test[:MAX_EVAL_SAMPLES], self.data.y_test[:MAX_EVAL_SAMPLES])
            except Exception as exc:  # noqa: BLE001
                artifact.details["accuracy_error"] = _reason(exc)

    # ------------------------------------------------------------------ report

    def report(self, started: float, extra: Optional[dict] = None) -> dict:
        from optkit import env

        plan = self.plan
        interrupted = bool((extra or {}).get("interrupted"))
        if interrupted and self.current in self.records:
            record = self.records[self.current]
            record.status, record.reason = INTERRUPTED, "interrupted before it finished"
        report = {
            "schema": SCHEMA,
            "kind": "optimize",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "env": env.fingerprint(threads=self.threads),
            "plan": {"mode": plan.mode, "recipe": plan.recipe, "model": plan.model, "data": plan.data,
                     "epochs": plan.epochs, "batch_size": plan.batch_size, "seed": plan.seed,
                     "strategy": plan.strategy, "tiny": plan.tiny, "file": "plan.json"},
            "data": _data_summary(self.data),
            "preprocess": self.contract.to_json() if self.contract is not None else None,
            "variants": [r.to_json() for r in self.records.values()],
            "notes": list(self.notes),
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        report.update(extra or {})
        baseline = self.records.get(plan.baseline.id)
        report["selected"] = verdicts.select(report["variants"], baseline.accuracy if baseline else None,
                                             self.tolerance)
        report["tolerance_points"] = self.tolerance
        report["failures"] = failures(report)
        report["status"] = INTERRUPTED if interrupted else (FAILED if report["failures"] else OK)
        return report


# ---------------------------------------------------------------------------------- helpers

def _model_io(model):
    """(input shape without batch, number of classes) of a single-input classifier."""
    inputs = model.inputs if hasattr(model, "inputs") and model.inputs else None
    if inputs is None:
        raise UserError("optimize needs a Keras model with a known input shape")
    if len(inputs) != 1:
        raise UserError(f"optimize handles single-input models; this one has {len(inputs)} inputs")
    shape = tuple(int(d) if d is not None else None for d in inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise UserError(f"the model's input shape {shape} has unknown dimensions; rebuild it with a fixed "
                        "input size")
    out = model.outputs[0].shape
    return shape, (int(out[-1]) if out[-1] is not None else None)


def _fine_tune_time(info) -> Optional[float]:
    """Seconds per epoch of the step's own fine-tune (steps report optkit.train's TrainResult)."""
    if not isinstance(info, dict):
        return None
    for key in ("training", "fine_tune", "finetune"):
        block = info.get(key)
        if isinstance(block, dict) and block.get("time_per_epoch_s") is not None:
            return float(block["time_per_epoch_s"])
    return info.get("train_time_per_epoch_s")


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _data_summary(data):
    if data is None:
        return None
    from optkit.data import split_summary

    return {"source": getattr(data, "source", None), "num_classes": getattr(data, "num_classes", None),
            "input_shape": list(getattr(data, "input_shape", []) or []), **split_summary(data)}


def _score(record, predict, x, y, batch: int = 32) -> None:
    """accuracy, accuracy_n (and miou for segmentation) of `predict` on (x, y): optkit.metrics."""
    result = metrics.evaluate(predict, x, y, batch=batch)
    record.accuracy, record.accuracy_n, record.miou = result["accuracy"], result["n"], result.get("miou")


def failures(report: dict) -> List[str]:
    """Every failed variant or artifact, one line each (skipped ones are not failures)."""
    found = []
    for v in report.get("variants", []):
        if v.get("status") == FAILED:
            found.append(f"{v['name']}: {v.get('reason', '')}")
        for a in v.get("artifacts", []):
            if a.get("status") == FAILED:
                label = a["format"] + ("" if a.get("quantize") in (None, "none") else f":{a['quantize']}")
                found.append(f"{v['name']} {label}: {a.get('reason', '')}")
    return found


# ---------------------------------------------------------------------------------- run

def previous_variants(out_dir: str) -> Dict[str, dict]:
    """Finished variants of the run whose report.json is in `out_dir`, by id (for --resume)."""
    path = os.path.join(out_dir, "report.json")
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    return {v["id"]: v for v in doc.get("variants", []) if isinstance(v, dict) and v.get("id")
            and v.get("status") != INTERRUPTED}


def run(plan: plan_mod.Plan, out_dir: str, *, progress: bool = True, resume: bool = False) -> dict:
    """Execute `plan` into `out_dir`; returns the report (also written as report.json).
    The folder is locked for the run (optkit.files.locked_dir): a second run into it waits, then
    refuses; leftovers of killed runs in it are removed.

    `resume`: reuse the variants an earlier run finished in `out_dir` (same ids). Ctrl-C stops the
    run within seconds (optkit.interrupt): the finished variants are written to report.json,
    marked interrupted, temp files are removed, and KeyboardInterrupt propagates (exit 130)."""
    from optkit import files

    with files.locked_dir(out_dir):
        return _run_interruptible(plan, out_dir, progress=progress, resume=resume)


def _run_interruptible(plan: plan_mod.Plan, out_dir: str, *, progress: bool, resume: bool) -> dict:
    previous = previous_variants(out_dir) if resume else {}
    plan_path = os.path.join(out_dir, "plan.json")
    plan_mod.write(plan, plan_path)
    started = time.perf_counter()
    pipe = Pipeline(plan, out_dir, progress=progress, previous=previous)
    pipe.started = started
    from optkit import interrupt

    def write_interrupted():
        report = pipe.report(started, {"interrupted": True})
        write_report(report, out_dir, plots=False)
        interrupt.remove_temp_files(out_dir)
        _log(f"interrupted: report of the {sum(r.status != INTERRUPTED for r in pipe.records.values())} "
             f"finished variant(s) in {out_dir}/report.json; resume with -o {out_dir} --resume")
        return report

    with interrupt.Interruptible(on_stuck=write_interrupted):
        try:
            return _run(pipe, plan, out_dir, plan_path, started, progress)
        except KeyboardInterrupt:
            write_interrupted()
            raise


def _run(pipe, plan, out_dir, plan_path, started, progress) -> dict:
    from optkit import keras_io, runner

    keras_io.tf()   # TensorFlow from here on; its own logs are quieted by keras_io
    pipe.threads = runner.default_threads()   # set explicitly and recorded: comparisons stay fair
    pipe.strategy = pipe.make_strategy()
    if plan.mode == "search" and not plan.search.explored:
        total = None   # the search decides as it goes
    else:
        total = sum(len(v.exports) for v in plan.variants)
    pipe.bar_total = total
    extra = _run_mode(pipe, plan, plan_path, progress)
    report = pipe.report(started, extra)
    write_report(report, out_dir)
    return report


INTERRUPTED = "interrupted"


def _refuse_inapplicable_steps(plan: plan_mod.Plan, model) -> None:
    """An explicit `--step` that cannot apply to the model is the user's mistake: say so before
    anything trains (exit 2). Recipes skip such a step with its reason instead (make_variant)."""
    if plan.mode != "chain" or plan.recipe:
        return
    from optkit import steps as steps_mod

    for spec in plan.variants[1:]:
        for plan_step in spec.steps:
            why = steps_mod.get(plan_step.name).why_not(model)
            if why:
                raise UserError(f"--step {plan_step.name} does not apply to {plan.model}: {why}")


def _run_mode(pipe: Pipeline, plan: plan_mod.Plan, plan_path: str, progress: bool) -> dict:
    extra = {}
    model = pipe.load_baseline()
    _refuse_inapplicable_steps(plan, model)
    train_result = None
    if pipe.reuse(plan.baseline) is not None:
        model = None
    elif plan.train_baseline:
        from optkit import train

        epochs = plan.baseline_epochs or plan.epochs
        _log(f"training the baseline {plan.model} for up to {epochs} epoch(s) on {plan.data} "
             "(stops early when validation accuracy stalls; the best epoch is kept)")
        train_result = train.fit(model, pipe.data, epochs=epochs, batch_size=plan.batch_size,
                                 progress=progress, strategy=pipe.strategy, seed=plan.seed,
                                 plateau_factor=train.PLATEAU_FACTOR)   # from scratch: see train.py
        if pipe.strategy is not None:
            train_result.settings.update(strategy=STRATEGY_CLASSES[plan.strategy],
                                         replicas=int(pipe.strategy.num_replicas_in_sync))
    if model is not None:
        pipe.current = plan.baseline.id
        pipe.add_baseline(model, train_result)
        pipe.current = None
    if plan.mode == "search" and not plan.search.explored:
        from optkit import search

        extra = {"search": search.run(pipe)}
        plan.search.explored = True       # the plan's variants are now the candidates tried
        plan_mod.write(plan, plan_path)   # now lists every candidate tried: --plan replays them
    elif plan.mode == "ladder":
        # A rung the model does not allow (no Flatten head to pool) is skipped, and the rungs above
        # it build on the rung below, as the course's ladder does.
        for spec in plan.variants[1:]:
            pipe.make_variant(spec, not_applicable=SKIPPED, pass_through=True)
        from optkit import ladder

        section = ladder.annotate(list(pipe.records.values()), tiny=plan.tiny)
        pipe.notes.extend(section["notes"])
        extra = {"ladder": dict(section, recipe=plan.recipe)}
    else:
        # A recipe is a suggestion: a step that does not apply to this model is skipped with its
        # reason and the next builds on what came before. An explicit --step was checked above.
        lenient = plan.recipe is not None
        for spec in plan.variants[1:]:
            pipe.make_variant(spec, not_applicable=SKIPPED if lenient else FAILED, pass_through=lenient)
        if plan.mode == "search":          # a replayed search: same candidates, same marking
            from optkit import search

            extra = {"search": search.mark(pipe, replayed=True)}
    return extra


def write_report(report: dict, out_dir: str, *, plots: bool = True) -> None:
    """report.json (the source), then report.md / report.html and plots rendered from it
    (an interrupted run skips the plots: they cost seconds of the few it has)."""
    from optkit import report as report_mod

    _atomic_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2, sort_keys=True) + "\n")
    try:
        if plots:
            report_mod.write_plots(report, out_dir)
    except Exception as exc:  # noqa: BLE001 - a plot must not lose the run's numbers
        _log(f"plots failed: {_reason(exc)}")
    _atomic_text(os.path.join(out_dir, "report.md"), report_mod.render(report, "md"))
    _atomic_text(os.path.join(out_dir, "report.html"), report_mod.render(report, "html") if plots
                 else report_mod.to_html(report, plots=False))


def _atomic_text(path: str, text: str) -> None:
    from optkit import files

    files.write_text(path, text)
