"""Speed steps (jit, amp, fusing, cpu): the setting travels with the model into training and the saved file."""
import numpy as np
import pytest

from optkit import keras_io, steps, train
from optkit.errors import UserError
from optkit.steps import StepContext, speed


def _model(flavour="keras3", seed=0):
    K = keras_io.keras_module(flavour)
    K.utils.set_random_seed(seed)
    return K.Sequential([K.Input((8, 8, 3)), K.layers.Conv2D(4, 3, activation="relu", name="conv"),
                         K.layers.Flatten(name="flat"), K.layers.Dense(3, name="out")])


def _xy(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, n).astype(np.int64)


def _apply(name, model, **options):
    step = steps.get(name)
    return step.apply(model, StepContext(epochs=1), **step.parse_options({k: str(v) for k, v in options.items()}))


@pytest.mark.unit
def test_speed_steps_are_registered_with_kind_speed():
    registry = steps.registry()
    assert {registry[n].kind for n in ("jit", "amp", "fusing", "cpu")} == {"speed"}


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_jit_step_makes_later_training_use_xla_and_leaves_the_input_alone(flavour):
    model = _model(flavour)
    result = _apply("jit", model)
    assert train.training_config(result.model).jit_compile is True
    assert train.training_config(model).jit_compile is False
    fit = train.fit(result.model, _xy(), epochs=1, progress=False)
    assert fit.settings["jit_compile"] is True


def test_fusing_runs_several_steps_per_execution():
    K = keras_io.keras3()

    class Calls(K.callbacks.Callback):
        n = 0

        def on_train_batch_end(self, batch, logs=None):
            Calls.n += 1

    model = _apply("fusing", _model(), steps=4).model
    x, y = _xy(64)
    result = train.fit(model, (x, y), epochs=1, batch_size=8, callbacks=[Calls()], progress=False)
    assert result.settings["steps_per_execution"] == 4
    assert Calls.n == (64 // 8) // 4          # Keras reports once per fused group of 4 steps


def test_jit_and_fusing_are_recorded_in_the_saved_model(tmp_path):
    model = _apply("fusing", _apply("jit", _model()).model, steps=8).model
    path = str(tmp_path / "fast.keras")
    keras_io.save(model, path)
    assert train.saved_training_config(path) == {"jit_compile": True, "steps_per_execution": 8}


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_amp_keeps_the_output_layer_float32(tmp_path, flavour):
    result = _apply("amp", _model(flavour), policy="mixed_bfloat16")
    model = result.model
    policies = {l.name: l.dtype_policy.name for l in model.layers}
    assert policies == {"conv": "mixed_bfloat16", "flat": "mixed_bfloat16", "out": "float32"}
    assert result.info["float32_layers"] == ["out"]
    x, _ = _xy(4)
    assert keras_io.predict(model, x).dtype == np.float32
    if flavour == "keras3":                 # the policy is in every layer's config: it survives a save
        path = str(tmp_path / "amp.keras")
        keras_io.save(model, path)
        reloaded = keras_io.load(path).model
        assert train.mixed_precision_of(reloaded) == "mixed_bfloat16"


def test_amp_auto_picks_what_this_hardware_computes_natively():
    flags = set()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    result = _apply("amp", _model())
    if speed.gpus():
        assert result.info["policy"] == "mixed_float16"
    elif native_bf16:
        assert result.info["applied"] and result.info["policy"] == "mixed_bfloat16"
    else:
        assert not result.info["applied"] and "emulate" in result.info["why"]
        assert train.mixed_precision_of(result.model) is None


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_mixed_float16_trains_with_loss_scaling(flavour):
    model = _apply("amp", _model(flavour), policy="mixed_float16").model
    result = train.fit(model, _xy(), epochs=1, progress=False)
    assert result.settings["loss_scaling"] is True
    assert "LossScaleOptimizer" in result.settings["optimizer"]
    assert np.isfinite(result.history["loss"][-1])


def test_mixed_bfloat16_needs_no_loss_scaling():
    model = _apply("amp", _model(), policy="mixed_bfloat16").model
    result = train.fit(model, _xy(), epochs=1, progress=False)
    assert result.settings["loss_scaling"] is False and result.settings["mixed_precision"] == "mixed_bfloat16"


def test_settings_accumulate_across_steps():
    model = _apply("jit", _model()).model
    model = _apply("fusing", model, steps=4).model
    model = _apply("amp", model, policy="mixed_bfloat16").model
    config = train.training_config(model)
    assert (config.jit_compile, config.steps_per_execution, config.mixed_precision) == (True, 4, "mixed_bfloat16")


def test_cpu_step_records_onednn_and_how_to_launch_with_it():
    result = _apply("cpu", _model(), onednn="on", threads=2)
    assert train.training_config(result.model).onednn is True
    assert train.training_config(result.model).intra_op_threads == 2
    assert result.info["environment"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert result.info["onednn_in_this_process"] == speed.onednn_enabled()
    if speed.onednn_enabled() is False:
        assert "TF_ENABLE_ONEDNN_OPTS=1" in result.info["note"]


@pytest.mark.parametrize("name,options,message", [
    ("amp", {"policy": "half"}, "policy must be one of"),
    ("fusing", {"steps": 0}, "steps must be a positive integer"),
    ("cpu", {"onednn": "maybe"}, "onednn must be one of auto, on, off"),
])
def test_bad_speed_options_are_user_errors(name, options, message):
    with pytest.raises(UserError, match=message):
        _apply(name, _model(), **options)


@pytest.mark.slow
def test_onednn_probe_measures_off_and_on_in_fresh_processes(tmp_path):
    x, y = _xy(64)
    probe = speed.probe_onednn(_model(), (x, y), batch_size=16, steps=4, workdir=str(tmp_path))
    assert probe["errors"] == {}           # each child confirmed TF ran with the requested setting
    assert set(probe["ms_per_step"]) == {"onednn_off", "onednn_on"}
    assert all(ms > 0 for ms in probe["ms_per_step"].values())
    ratio = probe["ms_per_step"]["onednn_on"] / probe["ms_per_step"]["onednn_off"]
    assert probe["ratio_on_vs_off"] == pytest.approx(ratio)
    assert probe["keep"] is (True if ratio <= speed.KEEP_MARGIN else False if ratio >= 1 / speed.KEEP_MARGIN else None)


def test_amp_float32_undoes_an_earlier_mixed_policy():
    mixed = _apply("amp", _model(), policy="mixed_bfloat16").model
    back = _apply("amp", mixed, policy="float32").model
    assert train.mixed_precision_of(back) is None
    assert {l.dtype_policy.name for l in back.layers} == {"float32"}


@pytest.mark.slow
def test_cpu_step_auto_measures_onednn_and_records_the_winner(tmp_path):
    from types import SimpleNamespace

    x, y = _xy(64)
    ctx = StepContext(data=SimpleNamespace(x_train=x, y_train=y), batch_size=16, workdir=str(tmp_path))
    result = steps.get("cpu").apply(_model(), ctx, onednn="auto", threads=0)
    probe = result.info["probe"]
    assert set(probe["ms_per_step"]) == {"onednn_off", "onednn_on"}
    assert result.info["onednn"] is probe["keep"]
    assert train.training_config(result.model).onednn is probe["keep"]
    if probe["keep"] is not None:
        assert result.info["environment"]["TF_ENABLE_ONEDNN_OPTS"] == ("1" if probe["keep"] else "0")
