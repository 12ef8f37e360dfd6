"""optkit.train: one fit/evaluate for Keras 3 and tf_keras, timed without the compile epoch."""
import statistics

import numpy as np
import pytest

from optkit import keras_io, train
from optkit.errors import UserError


def _bright_vs_dark(n=192, seed=0):
    """An easy two-class image task (mean brightness), so a few epochs must learn it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int64)
    x = rng.random((n, 8, 8, 3), dtype=np.float32) * 0.5 + y[:, None, None, None] * 0.5
    cut = int(n * 0.75)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _cnn(flavour, softmax=False, seed=0):
    K = keras_io.keras_module(flavour)
    K.utils.set_random_seed(seed)
    return K.Sequential([
        K.Input((8, 8, 3)),
        K.layers.Conv2D(4, 3, activation="relu"),
        K.layers.GlobalAveragePooling2D(),
        K.layers.Dense(2, activation="softmax" if softmax else None),
    ])


@pytest.mark.parametrize("flavour,softmax", [("keras3", False), ("tf_keras", True)])
def test_fit_learns_an_easy_task_in_either_flavour(flavour, softmax):
    data = _bright_vs_dark()
    model = _cnn(flavour, softmax=softmax)
    before = train.evaluate(model, data[2], data[3])
    result = train.fit(model, data, epochs=6, batch_size=16, learning_rate=0.05, progress=False)
    assert result.settings["flavour"] == flavour
    assert result.val_accuracy >= 0.9 > before or result.val_accuracy >= 0.95
    assert result.val_accuracy == train.evaluate(model, data[2], data[3])


def test_time_per_epoch_is_the_median_without_the_first_epoch():
    model = _cnn("keras3")
    result = train.fit(model, _bright_vs_dark(), epochs=3, progress=False)
    assert len(result.epoch_times_s) == result.epochs_run == 3
    assert result.time_per_epoch_s == statistics.median(result.epoch_times_s[1:])
    # Epoch 1 traces the train step; it must be the slow one the median leaves out.
    assert result.epoch_times_s[0] > result.time_per_epoch_s
    assert "epoch 1 includes" in result.time_per_epoch_note


def test_a_single_epoch_says_it_includes_compilation():
    result = train.fit(_cnn("keras3"), _bright_vs_dark(), epochs=1, progress=False)
    assert result.time_per_epoch_s == result.epoch_times_s[0]
    assert "includes tracing/compilation" in result.time_per_epoch_note


def test_same_seed_gives_identical_weights():
    data = _bright_vs_dark()
    a, b = _cnn("keras3"), _cnn("keras3")
    train.fit(a, data, epochs=2, progress=False, seed=3)
    train.fit(b, data, epochs=2, progress=False, seed=3)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_progress_goes_to_stderr_and_stdout_stays_clean(capsys):
    train.fit(_cnn("keras3"), _bright_vs_dark(), epochs=2, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "epoch 1/2" in err and "epoch 2/2" in err and "val_accuracy=" in err


def test_user_callbacks_receive_every_batch():
    K = keras_io.keras3()

    class Count(K.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            Count.batches += 1

    x, y, _, _ = _bright_vs_dark()
    train.fit(_cnn("keras3"), (x, y), epochs=2, batch_size=16, callbacks=[Count()], progress=False)
    assert Count.batches == 2 * int(np.ceil(len(x) / 16))


def test_tfmot_pruning_callback_passes_through_and_prunes():
    mot = keras_io.tfmot()
    schedule = mot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    pruned = mot.sparsity.keras.prune_low_magnitude(_cnn("tf_keras"), pruning_schedule=schedule)
    train.fit(pruned, _bright_vs_dark(), epochs=1, progress=False,
              callbacks=[mot.sparsity.keras.UpdatePruningStep()])
    kernel = mot.sparsity.keras.strip_pruning(pruned).layers[0].get_weights()[0]
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.03)


def test_early_stopping_stops_when_validation_accuracy_stalls():
    # A zero learning rate cannot improve anything: patience 1 stops after the second epoch.
    result = train.fit(_cnn("keras3"), _bright_vs_dark(), epochs=10, learning_rate=0.0,
                       early_stopping=1, progress=False)
    assert result.epochs_run == 2


def test_keep_compile_keeps_the_users_optimizer():
    K = keras_io.keras3()
    model = _cnn("keras3")
    model.compile(optimizer=K.optimizers.SGD(learning_rate=0.07), loss="sparse_categorical_crossentropy")
    result = train.fit(model, _bright_vs_dark(), epochs=1, keep_compile=True, progress=False)
    assert result.settings["optimizer"] == "SGD"
    assert result.settings["learning_rate"] == pytest.approx(0.07)


def test_speed_settings_ride_on_the_model_into_fit(tmp_path):
    model = _cnn("keras3")
    train.set_training_config(model, steps_per_execution=4)
    result = train.fit(model, _bright_vs_dark(), epochs=1, progress=False)
    assert result.settings["steps_per_execution"] == 4 and result.settings["jit_compile"] is False


def test_saved_model_records_the_speed_settings(tmp_path):
    model = _cnn("keras3")
    train.set_training_config(model, jit_compile=True, steps_per_execution=4)
    train.compile_with_settings(model)          # what the speed steps do; no XLA compile happens yet
    path = str(tmp_path / "m.keras")
    keras_io.save(model, path)
    assert train.saved_training_config(path) == {"jit_compile": True, "steps_per_execution": 4}
    reloaded = keras_io.keras3().models.load_model(path)          # with its compile config
    assert train.training_config(reloaded).jit_compile is True
    assert train.training_config(reloaded).steps_per_execution == 4


def test_explicit_arguments_override_the_models_settings():
    model = _cnn("keras3")
    train.set_training_config(model, jit_compile=True, steps_per_execution=4)
    result = train.fit(model, _bright_vs_dark(), epochs=1, jit=False, steps_per_execution=1, progress=False)
    assert result.settings["jit_compile"] is False and result.settings["steps_per_execution"] == 1


def test_evaluate_counts_top1_hits():
    K = keras_io.keras3()
    model = K.Sequential([K.Input((3,)), K.layers.Dense(3, use_bias=False)])
    model.layers[0].set_weights([np.eye(3, dtype=np.float32)])    # output = input: argmax = argmax(x)
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    assert train.evaluate(model, x, np.array([0, 1, 0, 1])) == 0.5


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": 1, "batch_size": 0},
                                    {"epochs": 1, "steps_per_execution": 0}])
def test_bad_training_arguments_are_user_errors(kwargs):
    with pytest.raises(UserError):
        train.fit(_cnn("keras3"), _bright_vs_dark(), progress=False, **kwargs)


def test_data_of_the_wrong_kind_is_a_user_error():
    with pytest.raises(UserError, match="expected an optkit Dataset"):
        train.fit(_cnn("keras3"), "not data", epochs=1, progress=False)


def test_a_fine_tune_that_only_hurts_gives_back_its_starting_weights():
    data = _bright_vs_dark()
    model = _cnn("keras3")
    train.fit(model, data, epochs=6, batch_size=16, learning_rate=0.05, progress=False)
    start = [w.copy() for w in model.get_weights()]
    # A learning rate this large wrecks the weights in one epoch: the start must win.
    result = train.fit(model, data, epochs=2, learning_rate=50.0, keep_start=True, progress=False)
    assert result.best["best_epoch"] == 0 and result.best["restored"]
    for a, b in zip(start, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert result.val_accuracy == train.evaluate(model, data[2], data[3])


def test_epochs_before_the_first_candidate_are_never_kept():
    result = train.fit(_cnn("keras3"), _bright_vs_dark(), epochs=2, first_candidate_epoch=3, progress=False)
    assert result.best["best_epoch"] is None and not result.best["restored"]
    assert result.epochs_run == 2


def test_small_data_gets_less_patience_and_no_validation_means_no_early_stopping():
    small = train.fit(_cnn("keras3"), _bright_vs_dark(n=96), epochs=1, progress=False)
    assert small.best["patience"] == train.SMALL_DATA_PATIENCE
    x, y, _, _ = _bright_vs_dark()
    assert train.fit(_cnn("keras3"), (x, y), epochs=1, progress=False).best == {}
