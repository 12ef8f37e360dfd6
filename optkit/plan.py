"""The resolved plan of an `optkit optimize` run, and how it is written to and read from plan.json.

Everything is decided here, before TensorFlow is imported: which model, which data, which
variants (each a step applied to a parent), which exports. `--dry-run` prints this; the run
writes it as DIR/plan.json; `--plan DIR/plan.json` replays it to the same variants.

Variant ids are content hashes: the baseline's id hashes what the model is (the file's sha256, or
the zoo name) and how it is trained (data, seed, epochs, batch size); a child's id hashes
(parent id, step name, resolved options). The same plan therefore yields the same ids on any
machine, and a changed option yields a new id.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from optkit import recipes as recipes_mod
from optkit.errors import UserError

PLAN_SCHEMA = 1
ZOO_PREFIX = "zoo:"
DEFAULT_MODEL = "zoo:lesson14"      # the embedded default (no MODEL, no --data)
# Six of the ten shape classes: measured here, the Lesson 14 CNN trained 3 epochs on 1,400 images
# stayed at chance on all ten (train and held-out accuracy 0.09-0.11) but reached ~0.5 held-out
# accuracy on six (0.56 on four), so the demo's table shows differences that mean something.
DEFAULT_DATA = "synthetic:shapes?classes=6"
DEFAULT_RECIPE = "lesson14"
# A user's model with no recipe and no steps: export it in the usual precisions and measure each.
DEFAULT_EXPORTS = ("tflite", "tflite:int8", "onnx")
STRATEGIES = ("mirrored", "multiworker")
OBJECTIVES = ("size", "latency")

# Short schedules: training from scratch on 2 CPU cores has to fit the 10-minute demo budget.
DEFAULT_EPOCHS = 3            # baseline training of a zoo model and each fine-tune
DEFAULT_BATCH_SIZE = 32
DEFAULT_DATA_LIMIT = 2000     # samples drawn from a synthetic source for the embedded default
# OPTKIT_TINY=1 (or the hidden --tiny option): a schedule small enough for end-to-end tests.
TINY = {"epochs": 1, "data_limit": 320, "min_time_s": 0.05, "trials": 3}


@dataclass
class ExportSpec:
    format: str
    quantize: str = "none"

    @classmethod
    def parse(cls, spec: str) -> "ExportSpec":
        fmt, _, quant = spec.strip().partition(":")
        if not fmt:
            raise UserError(f"bad export '{spec}': expected FORMAT[:QUANTIZE], e.g. tflite:int8")
        return cls(fmt.strip().lower(), (quant.strip().lower() or "none"))

    @property
    def label(self) -> str:
        return self.format if self.quantize == "none" else f"{self.format}:{self.quantize}"


@dataclass
class PlanStep:
    name: str
    options: Dict[str, Any] = field(default_factory=dict)   # resolved: every option, typed
    epochs: Optional[int] = None   # fine-tune length for steps that train (it changes the result)

    @property
    def label(self) -> str:
        return self.name


@dataclass
class VariantSpec:
    id: str
    name: str
    parent: Optional[str]                  # parent variant id; None for the baseline
    # The steps that made it from its parent, applied in order (one for a --step chain; a ladder
    # rung may apply several, e.g. separable:epochs=0 -> jit -> train).
    steps: List[PlanStep] = field(default_factory=list)
    exports: List[ExportSpec] = field(default_factory=list)

    @property
    def step(self) -> Optional[PlanStep]:
        """The last step applied (None for the baseline)."""
        return self.steps[-1] if self.steps else None


@dataclass
class SearchSpec:
    max_accuracy_drop: float               # points of top-1 accuracy below the baseline
    budget_minutes: Optional[float] = None
    trials: Optional[int] = None
    objective: str = "size"                # what "best" means among candidates in budget
    explored: bool = False                 # True once a run searched: the variants are its candidates


@dataclass
class Plan:
    model: str                             # a path, or "zoo:NAME"
    data: Optional[str]
    mode: str                              # chain | ladder | search
    variants: List[VariantSpec]            # baseline first; children after their parents
    recipe: Optional[str] = None
    model_sha256: Optional[str] = None
    train_baseline: bool = False           # zoo models start untrained
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    data_limit: Optional[int] = None
    strategy: Optional[str] = None
    unsafe: bool = False
    tiny: bool = False
    search: Optional[SearchSpec] = None
    # int8 exporter settings (optkit.quant_debug: quant_report, keep_float, calibration_samples,
    # calibration_method, per_channel) applied to every int8 tflite/onnx export
    int8: Dict[str, Any] = field(default_factory=dict)
    # Chain runs: a step that costs more than this many points of validation accuracy is rejected;
    # `selected` must be within it of the baseline (optkit.verdicts).
    max_accuracy_drop: float = 1.0
    # Epoch cap of the baseline's own training when it differs from `epochs` (the ladder's Naive
    # rung trains from scratch and needs more than a fine-tune; optkit.ladder.NAIVE_EPOCHS).
    baseline_epochs: Optional[int] = None
    preprocess: Optional[str] = None       # --preprocess (optkit.contract); None: stored/model/probe/unit
    offline: bool = False                  # never download data (keras:/tfds:)
    schema: int = PLAN_SCHEMA

    @property
    def baseline(self) -> VariantSpec:
        return self.variants[0]

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A readable rendering for `--dry-run` without `--json`."""
        trained = ("  (trained from scratch)" if self.model.startswith(ZOO_PREFIX)
                   else f"  (trained {self.epochs} more epoch(s))")
        lines = [f"model:    {self.model}" + (trained if self.train_baseline else ""),
                 f"data:     {self.data or '(none: exports and latency only)'}"
                 + (f"  (first {self.data_limit} samples)" if self.data_limit else ""),
                 f"mode:     {self.mode}" + (f"  (recipe {self.recipe})" if self.recipe else ""),
                 f"training: up to {self.epochs} epoch(s)"
                 + (f" ({self.baseline_epochs} for the baseline)" if self.baseline_epochs else "")
                 + f", early stopping on validation, batch {self.batch_size}, seed {self.seed}"
                 + (f", strategy {self.strategy}" if self.strategy else "")
                 + ("  [tiny schedule]" if self.tiny else "")]
        if self.search:
            s = self.search
            limit = (f"{s.budget_minutes:g} min" if s.budget_minutes else "") + \
                    (f"{', ' if s.budget_minutes else ''}{s.trials} trials" if s.trials else "")
            lines.append(f"search:   accuracy drop <= {s.max_accuracy_drop:g} points, best by {s.objective}"
                         + (f", within {limit}" if limit else ""))
        if self.mode == "ladder":
            from optkit import ladder

            lines.append(f"ladder:   {ladder.describe()} "
                         "(the Tuned rung keeps only the speed settings that help on this machine)")
            lines.append(f"exports:  {', '.join(e.label for e in self.baseline.exports) or '-'} "
                         "of Naive and of the last rewrite rung (Separable)")
        lines.append("variants:")
        names = {v.id: v.name for v in self.variants}
        for v in self.variants:
            step = ""
            if v.steps:
                step = f" <- {names.get(v.parent, v.parent)} + " + " + ".join(
                    s.name + (f"({', '.join(f'{k}={val}' for k, val in sorted(s.options.items()))})"
                              if s.options else "") for s in v.steps)
            exports = ", ".join(e.label for e in v.exports) or "-"
            lines.append(f"  {v.id}  {v.name}{step}   exports: {exports}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- ids

def _digest(payload) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def baseline_id(plan_model: str, model_sha256: Optional[str], data: Optional[str], *, train: bool,
                epochs: int, batch_size: int, seed: int, data_limit: Optional[int]) -> str:
    payload = {"model": model_sha256 or plan_model, "data": data, "seed": seed, "data_limit": data_limit}
    if train:  # the baseline's weights depend on its training schedule only when we train it
        payload.update(epochs=epochs, batch_size=batch_size)
    return _digest(["baseline", payload])


def variant_id(parent_id: str, step_name: str, options: Dict[str, Any], epochs: Optional[int] = None) -> str:
    payload = [parent_id, step_name, options]
    if epochs is not None:
        payload.append({"epochs": epochs})
    return _digest(payload)


def steps_id(parent_id: str, steps: List[PlanStep]) -> str:
    """The id of `steps` applied in order to the parent: each step chains the hash, so a one-step
    variant's id is variant_id(parent, step) and a several-step one equals the id the same steps
    would get as a chain of variants (same model, same id)."""
    vid = parent_id
    for s in steps:
        vid = variant_id(vid, s.name, s.options, s.epochs)
    return vid


def child(parent: VariantSpec, step, *, name: Optional[str] = None,
          exports: Optional[List[ExportSpec]] = None) -> VariantSpec:
    """The variant made by applying `step` (a PlanStep, or a list applied in order) to `parent`;
    fine-tuning epochs are part of the id."""
    steps = list(step) if isinstance(step, (list, tuple)) else [step]
    label = "+".join(s.label for s in steps)
    return VariantSpec(id=steps_id(parent.id, steps),
                       name=name or (label if parent.parent is None else f"{parent.name}+{label}"),
                       parent=parent.id, steps=steps,
                       exports=list(parent.exports if exports is None else exports))


def resolve_step(spec: str, *, epochs: int) -> PlanStep:
    """'prune:sparsity=0.5' -> PlanStep with every option typed and defaulted (via the step registry).

    The registry imports the step modules, none of which imports TensorFlow at module level.
    `epochs` (the fine-tune length) is recorded with steps that train, because it changes the result.
    """
    from optkit import steps

    name, raw = steps.parse_step_spec(spec)
    step = steps.get(name)
    options = step.parse_options(raw)
    return PlanStep(name=name, options=options, epochs=None if step.kind == "speed" else epochs)


def _ladder_variants(base: VariantSpec, exports: List[ExportSpec], *, epochs: int, tiny: bool) -> List[VariantSpec]:
    """Lesson 14's rungs (optkit.ladder.rungs) as plan variants: Naive is the baseline."""
    from optkit import ladder

    made = {}
    for rung in ladder.rungs(tiny=tiny):
        if rung.parent is None:
            base.name = rung.name
            made[rung.name] = base
            continue
        made[rung.name] = child(made[rung.parent], [resolve_step(s, epochs=epochs) for s in rung.steps],
                                name=rung.name, exports=list(exports) if rung.exported else [])
    return list(made.values())


# ----------------------------------------------------------------------------------------- resolve

def resolve(*, model: Optional[str] = None, data: Optional[str] = None, recipe: Optional[str] = None,
            steps=(), to: Optional[str] = None, epochs: Optional[int] = None,
            batch_size: Optional[int] = None, seed: Optional[int] = None, strategy: Optional[str] = None,
            max_accuracy_drop: Optional[float] = None, budget: Optional[float] = None,
            trials: Optional[int] = None, unsafe: bool = False, tiny: Optional[bool] = None,
            int8: Optional[Dict[str, Any]] = None, preprocess: Optional[str] = None,
            offline: bool = False) -> Plan:
    """Command-line choices -> a Plan (UserError for contradictions). Imports no TensorFlow."""
    steps = list(steps or ())
    if tiny is None:
        tiny = os.environ.get("OPTKIT_TINY", "") not in ("", "0")
    if recipe and steps:
        raise UserError("use either --recipe or --step, not both")
    if strategy and strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}")
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--trials", trials)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1")
    if budget is not None and budget <= 0:
        raise UserError("--budget must be a positive number of minutes")
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
        raise UserError("--max-accuracy-drop must be >= 0 (points of top-1 accuracy)")

    if model is None and not recipe and not steps and max_accuracy_drop is None:
        recipe = DEFAULT_RECIPE          # no MODEL: the Lesson 14 ladder (on --data, or the embedded default)
    rec = recipes_mod.get(recipe) if recipe else None

    # Alone, --max-accuracy-drop starts a search; with a chain (--step, a chain recipe) it is the
    # tolerance each step is judged by.
    mode = rec.mode if rec else ("search" if max_accuracy_drop is not None and not steps else "chain")
    if max_accuracy_drop is not None and mode == "ladder":
        raise UserError("--max-accuracy-drop does not apply to the lesson14 ladder, which shows every rung")
    if (budget is not None or trials is not None) and mode != "search":
        raise UserError("--budget/--trials limit a search: add --max-accuracy-drop PCT")
    if budget is not None and trials is not None:
        raise UserError("use either --budget or --trials, not both")

    defaults = rec.defaults if rec else {}
    given_epochs = epochs or defaults.get("epochs")
    epochs = epochs or defaults.get("epochs") or (TINY["epochs"] if tiny else DEFAULT_EPOCHS)
    batch_size = batch_size or defaults.get("batch_size") or DEFAULT_BATCH_SIZE
    seed = seed if seed is not None else defaults.get("seed", 0)

    model_ref, sha, train = _model_ref(model)
    if mode == "ladder":
        if not (data or model is None):
            raise UserError("the lesson14 ladder trains every rung: it needs --data")
        train = True     # every rung trains the same number of epochs, Naive included
    if data is None and model is None:
        data = DEFAULT_DATA
    data_limit = None
    if data and data.startswith("synthetic:") and "n=" not in data:
        data_limit = TINY["data_limit"] if tiny else (DEFAULT_DATA_LIMIT if model is None else None)
    if train and not data:
        raise UserError("a zoo model starts untrained: give --data to train it")

    if to:
        exports = [ExportSpec.parse(s) for s in to.split(",") if s.strip()]
    elif rec and rec.to:
        exports = [ExportSpec.parse(s) for s in rec.to]
    elif mode == "search":
        exports = []   # the search chooses precisions and runtimes itself
    else:
        exports = [ExportSpec.parse(s) for s in DEFAULT_EXPORTS]
    _check_exports(exports)
    int8 = dict(int8 or {})
    if int8:
        from optkit import quant_debug

        if mode == "search":
            raise UserError("the int8 flags apply to --to exports, not to an accuracy-aware search")
        quant_debug.check_targets(int8, [e.format for e in exports if e.quantize == "int8"
                                         and e.format in quant_debug.INT8_FORMATS], "--to (int8)")

    search = None
    if mode == "search":
        goal = max_accuracy_drop if max_accuracy_drop is not None else (rec.max_accuracy_drop if rec else None)
        if goal is None:
            raise UserError(f"recipe {rec.name} is a search: give --max-accuracy-drop PCT")
        if not data:
            raise UserError("an accuracy-aware search needs labelled data: give --data SRC")
        if budget is None and trials is None:
            trials = TINY["trials"] if tiny else None
            budget = None if tiny else 10.0
        search = SearchSpec(max_accuracy_drop=float(goal), budget_minutes=budget, trials=trials,
                            objective=rec.objective if rec else "size")

    baseline_epochs = None
    if mode == "ladder" and not given_epochs and not tiny:
        from optkit import ladder

        baseline_epochs = ladder.NAIVE_EPOCHS
    base = VariantSpec(id=baseline_id(model_ref, sha, data, train=train, epochs=baseline_epochs or epochs,
                                      batch_size=batch_size, seed=seed, data_limit=data_limit),
                       name="baseline", parent=None, exports=exports)
    variants = [base]
    if mode == "ladder":
        variants = _ladder_variants(base, exports, epochs=epochs, tiny=bool(tiny))
    if mode == "chain":
        specs = list(rec.steps) if rec else steps
        if specs and not data:
            raise UserError("steps fine-tune the model: give --data SRC (labelled images) to train on")
        parent = base
        for spec in specs:
            parent = child(parent, resolve_step(spec, epochs=epochs))
            variants.append(parent)

    return Plan(model=model_ref, data=data, mode=mode, variants=variants,
                recipe=rec.name if rec else None, model_sha256=sha, train_baseline=train,
                epochs=epochs, batch_size=batch_size, seed=seed, data_limit=data_limit,
                strategy=strategy, unsafe=unsafe, tiny=bool(tiny), search=search, int8=int8,
                max_accuracy_drop=float(max_accuracy_drop) if max_accuracy_drop is not None
                else (search.max_accuracy_drop if search else 1.0),
                baseline_epochs=baseline_epochs, preprocess=preprocess, offline=bool(offline))


def _model_ref(model: Optional[str]):
    """(reference, sha256 of the file or None, whether the baseline must be trained)."""
    if model is None:
        return DEFAULT_MODEL, None, True
    if model.startswith(ZOO_PREFIX):
        from optkit import zoo   # the registry metadata is TF-free

        name = model[len(ZOO_PREFIX):]
        known = [e.name for e in zoo.list_models()]
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            raise UserError(f"unknown zoo model '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return model, None, True
    if not os.path.exists(model):
        raise UserError(f"model not found: {model}")
    return os.path.abspath(model), _sha256(model), False


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isdir(path):    # a SavedModel directory: hash every file, in a stable order
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode())
                _update_file(h, full)
    else:
        _update_file(h, path)
    return h.hexdigest()


def _update_file(h, path):
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def _check_exports(exports: List[ExportSpec]):
    """Unknown formats or precisions fail now (with "did you mean"), not after an hour of training."""
    try:
        import exporters
    except ModuleNotFoundError:   # a build without the exporters package: the run reports it
        return
    if not exporters.registry():
        return
    for e in exports:
        module = exporters.get(e.format)
        if e.quantize not in module.PRECISIONS:
            raise UserError(f"--to {e.label}: {e.format} supports quantize "
                            f"{', '.join(module.PRECISIONS)}, not '{e.quantize}'")


# ----------------------------------------------------------------------------------------- plan.json

def dumps(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, sort_keys=True)


def write(plan: Plan, path: str) -> None:
    from optkit import files   # atomic, and in the user's words if the folder cannot take it

    files.write_text(path, dumps(plan) + "\n")


def load(path: str) -> Plan:
    """Read a plan.json written by a run (or by --dry-run --json) to replay it."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"plan file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read plan {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != PLAN_SCHEMA:
        raise UserError(f"{path} is not an optkit plan (schema {PLAN_SCHEMA})")
    try:
        variants = [VariantSpec(id=v["id"], name=v["name"], parent=v["parent"],
                                # plans written before several-step variants have one "step"
                                steps=[PlanStep(**s) for s in v.get("steps")
                                       or ([v["step"]] if v.get("step") else [])],
                                exports=[ExportSpec(**e) for e in v.get("exports", [])])
                    for v in doc["variants"]]
        search = SearchSpec(**doc["search"]) if doc.get("search") else None
        fields = {k: doc[k] for k in ("model", "data", "mode", "recipe", "model_sha256", "train_baseline",
                                      "epochs", "batch_size", "seed", "data_limit", "strategy", "unsafe",
                                      "tiny", "int8", "max_accuracy_drop", "baseline_epochs", "preprocess",
                                      "offline") if k in doc}
        plan = Plan(variants=variants, search=search, **fields)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: malformed plan ({exc})") from None
    _check_replay(plan, path)
    return plan


def _check_replay(plan: Plan, path: str) -> None:
    """Refuse a plan whose model changed since it was written, or whose ids were edited."""
    if plan.model_sha256:
        if not os.path.exists(plan.model):
            raise UserError(f"{path}: model {plan.model} no longer exists")
        if _sha256(plan.model) != plan.model_sha256:
            raise UserError(f"{path}: model {plan.model} changed since the plan was written (sha256 differs)")
    ids = {}
    for v in plan.variants:
        if v.parent is not None:
            if v.parent not in ids or not v.steps:
                raise UserError(f"{path}: variant {v.id} has an unknown parent {v.parent}")
            if steps_id(v.parent, v.steps) != v.id:
                raise UserError(f"{path}: variant {v.id}'s id does not match its step and options")
        ids[v.id] = v
