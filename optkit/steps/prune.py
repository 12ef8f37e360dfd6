"""`prune`: magnitude pruning with tensorflow-model-optimization, fine-tuned, wrappers stripped.

The result is a plain tf_keras model whose kernels hold exact zeros; keras_io turns it back into
Keras 3 when it is saved as `.keras`. Pruning alone leaves the file size unchanged and shrinks
the *compressed* size (gzip, or the sparse encoding of the TFLite converter), so the step reports
both, measured.
"""
from __future__ import annotations

from dataclasses import dataclass

from optkit import compression
from optkit import keras_io
from optkit.errors import UserError
from optkit.options import option
from optkit.steps import Step, StepResult

SCHEDULES = ("polynomial", "constant")
POLICIES = ("none", "xnnpack")

# The pruning mask is recomputed every `frequency` steps. tfmot's default (100) exceeds the
# length of a short fine-tune, which then ends at 0% sparsity (STACK.md), so it is derived from
# the number of fine-tune steps: about 8 updates over the ramp.
UPDATES_PER_RAMP = 8
# The polynomial ramp reaches the target at 3/4 of the fine-tune; the last quarter lets the
# remaining weights recover at full sparsity.
RAMP_SHARE = 0.75


def parse_m_by_n(value):
    """'2:4' -> (2, 4) (m zeros in every n consecutive weights)."""
    if not value:
        return None
    try:
        m, n = (int(v) for v in str(value).split(":"))
    except ValueError:
        raise UserError(f"prune: m_by_n expects 'M:N' such as 2:4, got '{value}'") from None
    if not 0 < m < n:
        raise UserError(f"prune: m_by_n needs 0 < M < N, got '{value}'")
    return (m, n)


def make_schedule(mot, *, schedule: str, sparsity: float, total_steps: int):
    """A tfmot pruning schedule that reaches `sparsity` within `total_steps` fine-tune steps.

    Returns (schedule object, description for the report)."""
    if schedule not in SCHEDULES:
        raise UserError(f"prune: schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")
    if schedule == "constant":
        # Constant: the target is applied at step 0 and re-applied as weights move.
        frequency = max(1, min(100, total_steps // UPDATES_PER_RAMP))
        desc = {"schedule": "constant", "target_sparsity": sparsity, "begin_step": 0, "frequency": frequency}
        return mot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=frequency), desc
    ramp = max(1, int(total_steps * RAMP_SHARE))
    frequency = max(1, min(100, ramp // UPDATES_PER_RAMP))
    # The final sparsity is applied only on an update step, so end the ramp on one.
    end_step = max(frequency, (ramp // frequency) * frequency)
    desc = {"schedule": "polynomial", "initial_sparsity": 0.0, "target_sparsity": sparsity,
            "begin_step": 0, "end_step": end_step, "frequency": frequency, "power": 3}
    return mot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end_step,
                                              frequency=frequency), desc


@dataclass(frozen=True)
class Options(compression.SelectionOptions):
    sparsity: float = option(0.5, "target share of zero weights per pruned kernel", min=0.0, max=1.0, max_open=True)
    schedule: str = option("polynomial", "polynomial (ramp from 0) | constant", choices=SCHEDULES)
    m_by_n: str = option("", "structured sparsity 'M:N', e.g. 2:4 (overrides sparsity)")
    policy: str = option("none", "none | xnnpack (prune only 1x1 convs XNNPACK can run sparse)", choices=POLICIES)
    lr: float = option(1e-3, "fine-tune learning rate (Adam)", min=0.0, min_open=True)

    def __post_init__(self):
        parse_m_by_n(self.m_by_n)     # 'M:N' is checked with the plan, not after training


def apply(model, ctx, *, sparsity=0.5, schedule="polynomial", m_by_n="", layers="", skip_first=False,
          skip_last=False, skip_unsupported=False, policy="none", lr=1e-3):
    compression.require_training_data(ctx, "prune")
    pair = parse_m_by_n(m_by_n)
    if pair:
        sparsity = pair[0] / pair[1]   # tfmot: M zeros in every N consecutive weights
    mot = keras_io.tfmot()
    accuracy_before = compression.accuracy(model, ctx.data)
    size_before = compression.weights_file_sizes(model)

    base = keras_io.to_tf_keras(model)   # a fresh tf_keras copy: tfmot mutates what it is given
    total = compression.training_steps(ctx.data, ctx.epochs, ctx.batch_size)
    sched, sched_desc = make_schedule(mot, schedule=schedule, sparsity=sparsity, total_steps=total)
    params = {"pruning_schedule": sched}
    if pair:
        params["sparsity_m_by_n"] = pair

    if policy == "xnnpack":
        if layers or skip_first or skip_last:
            raise UserError("prune: policy=xnnpack chooses the layers itself (1x1 convolutions); "
                            "drop layers/skip_first/skip_last")
        # tfmot checks that the model has the structure XNNPACK's sparse kernels need and
        # wraps only the 1x1 Conv2D layers.
        try:
            wrapped_model = mot.sparsity.keras.prune_low_magnitude(
                base, pruning_policy=mot.sparsity.keras.PruneForLatencyOnXNNPack(), **params)
        except ValueError as exc:
            raise UserError(f"prune: policy=xnnpack does not apply to this model: {compression.first_line(exc)}") from None
        wrapped = [l.layer.name for l in wrapped_model.layers if type(l).__name__ == "PruneLowMagnitude"]
        skipped = []
    else:
        selected = compression.select_layers(base, layers=layers, skip_first=skip_first, skip_last=skip_last)
        wrapped_model, wrapped, skipped = compression.wrap_selected(
            base, selected, lambda layer: mot.sparsity.keras.prune_low_magnitude(layer, **params),
            technique="prune", skip_unsupported=skip_unsupported)

    # Only epochs that end at the target sparsity may be kept (or end the run): an earlier epoch's
    # weights would bring back the masks of a ramp that had not finished.
    at_target = _first_epoch_at_target(sched_desc, total, ctx.epochs)
    tuned = compression.fine_tune(wrapped_model, ctx, callbacks=[mot.sparsity.keras.UpdatePruningStep()],
                                  learning_rate=lr, first_candidate_epoch=at_target)
    stripped = mot.sparsity.keras.strip_pruning(wrapped_model)

    per_layer = compression.sparsity_per_layer(stripped)
    reached = {name: per_layer[name] for name in wrapped if name in per_layer}   # nested models: per inner layer
    # 1 point of slack: tfmot rounds the number of pruned weights per tensor.
    short = {name: s for name, s in reached.items() if s < sparsity - 0.01}
    info = {
        "technique": "magnitude pruning (tfmot prune_low_magnitude)",
        "target_sparsity": sparsity,
        "m_by_n": f"{pair[0]}:{pair[1]}" if pair else None,
        **sched_desc,
        "policy": policy,
        "pruned_layers": wrapped,
        "skipped_layers": skipped,
        "target_reached": not short,
        "below_target": short,
        **compression.describe(stripped, selected=wrapped),
        "size_before": size_before,
        "size_after": compression.weights_file_sizes(stripped),
        "accuracy_before": accuracy_before,
        "accuracy_after": compression.accuracy(stripped, ctx.data),
        "fine_tune": {**tuned, "steps": total},
        "tflite": _tflite_hint(compression.overall_sparsity(stripped, wrapped)),
        "model": "stripped tf_keras model (plain layers); saves as Keras 3 .keras",
    }
    return StepResult(stripped, info)


def _first_epoch_at_target(schedule: dict, total_steps: int, epochs: int) -> int:
    """The first epoch whose end is at or past the schedule's last mask update."""
    if epochs < 1 or total_steps < 1:
        return 1
    steps_per_epoch = max(1, total_steps // epochs)
    last_update = schedule.get("end_step", schedule.get("begin_step", 0))
    return max(1, -(-(last_update + 1) // steps_per_epoch))


def _tflite_hint(sparsity):
    """What the TFLite export can do with the zeros (measured here, ai-edge-litert 2.3.0).

    The converter's EXPERIMENTAL_SPARSITY optimization stores sparse float weights in a compressed
    encoding: an 80%-pruned 2.2 MB float model became 0.66 MB raw and ran in LiteRT at the same
    latency. Combined with dynamic-range or int8 quantization the file converts but LiteRT's
    XNNPACK delegate fails to prepare it ("failed to delegate CONV_2D/FULLY_CONNECTED"), so the
    hint is for float32 exports only; int8 exports get the gain through gzip instead. XNNPACK's
    sparse *kernels* (a latency gain) need the structure policy=xnnpack checks and target
    ARM/WebAssembly; on x86 with AVX it keeps dense kernels."""
    return {
        "converter_optimizations": ["EXPERIMENTAL_SPARSITY"] if sparsity >= 0.5 else [],
        "applies_to_quantize": ["none"],
        "sparsity": sparsity,
        "note": "pruning leaves the raw size unchanged; gzip, or for float32 TFLite the converter's sparse "
                "encoding (optimizations=[tf.lite.Optimize.EXPERIMENTAL_SPARSITY]), realise the gain; "
                "with dynamic/int8 quantization LiteRT's XNNPACK cannot run the sparse encoding",
    }


STEP = Step(
    name="prune",
    help="Magnitude pruning (tfmot): target sparsity or M:N structure, fine-tuned, wrappers stripped.",
    apply=apply,
    options=Options,
    kind="compression",
)
