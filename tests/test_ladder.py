"""The Lesson 14 ladder: rungs, measurements, the keep-only-what-helps decision, the table."""
from types import SimpleNamespace

import numpy as np
import pytest

from optkit import keras_io, ladder
from optkit.errors import UserError


def _data(n=224, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n).astype(np.int64)
    x = (rng.random((n, 16, 16, 3)) * 0.3 + y[:, None, None, None] / 4).astype(np.float32)
    return SimpleNamespace(x_train=x[:128], y_train=y[:128], x_val=x[128:176], y_val=y[128:176],
                           x_test=x[176:], y_test=y[176:], input_shape=(16, 16, 3), num_classes=4)


def _naive(keras):
    L = keras.layers
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(8, 3, activation="relu"),
                             L.Conv2D(16, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dense(4)])


def test_decide_keeps_only_settings_clearly_faster_than_float32():
    verdict = ladder.decide({"float32": 10.0, "jit": 8.0, "amp": 30.0, "fusing": 10.5})
    assert verdict["kept"] == ["jit"]
    assert verdict["ratios"] == {"jit": 0.8, "amp": 3.0, "fusing": 1.05}
    assert verdict["why"]["jit"].startswith("kept: 1.25× faster")
    assert verdict["why"]["amp"] == "dropped: 3.00× slower per training step than float32"
    assert "within noise" in verdict["why"]["fusing"]


def test_inference_time_grows_with_the_work_per_step():
    keras = keras_io.keras3()
    L = keras.layers
    small = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(4, 3), L.GlobalAveragePooling2D()])
    big = keras.Sequential([keras.Input((32, 32, 3)), L.Conv2D(128, 3), L.Conv2D(128, 3), L.GlobalAveragePooling2D()])
    x = np.random.default_rng(0).random((32, 32, 32, 3), dtype=np.float32)
    # ~1000× the multiply-adds (≈4 G per batch against 3.5 M): the small model's time is mostly
    # call overhead, the big one's is compute, so the gap stays far outside timing noise.
    assert ladder.inference_ms_per_step(big, x) > 3 * ladder.inference_ms_per_step(small, x)


def test_the_ladder_needs_data():
    with pytest.raises(UserError, match="needs --data"):
        ladder.run_ladder(_naive(keras_io.keras3()), None, epochs=1, progress=False)


@pytest.mark.slow
def test_ladder_walks_every_rung_and_reports_the_course_rows(tmp_path):
    keras = keras_io.keras3()
    naive = _naive(keras)
    report = ladder.run_ladder(naive, _data(), epochs=2, batch_size=16, progress=False, workdir=str(tmp_path),
                               probe_steps=4, onednn_probe=False)
    names = [v["name"] for v in report["variants"]]
    assert names[:6] == ["Naive", "Pooling", "Separable", "Separable+JIT", "Separable+JIT+AMP",
                         "Separable+JIT+AMP+Fusing"]
    assert names[6].startswith("Tuned")
    v = {x["name"]: x for x in report["variants"]}
    assert v["Naive"]["params"] == naive.count_params()
    assert v["Separable"]["params"] < v["Pooling"]["params"] < v["Naive"]["params"]
    assert {x["params"] for x in report["variants"][2:]} == {v["Separable"]["params"]}
    for rung in report["variants"]:
        assert rung["status"] == "ok"
        assert rung["train_time_per_epoch_s"] > 0 and rung["inference_ms_per_step"] > 0
        assert 0 <= rung["accuracy"] <= 1
        assert keras_io.load(rung["path"]).flavour == "keras3"
        assert rung["size_bytes"] > 0
    # Lineage: each rung's steps extend its parent's; speed rungs hang off Separable.
    assert v["Pooling"]["parent"] == v["Naive"]["id"]
    assert v["Separable+JIT+AMP"]["parent"] == v["Separable"]["id"]
    assert [s["name"] for s in v["Separable+JIT+AMP+Fusing"]["steps"]] == ["pooling", "separable", "jit", "amp", "fusing"]
    # The probe decided, and the tuned rung trained with exactly what it kept.
    probe = report["speed_probe"]
    assert set(probe["ms_per_step"]) == {"float32", "jit", "amp", "fusing"}
    assert v[names[6]]["details"]["kept"] == probe["kept"]
    assert any(n.startswith("kept:") for n in report["notes"])
    # Slowdowns are said, not hidden.
    for rung in report["variants"][3:]:
        d = rung["details"]
        if d.get("repeat_of_separable"):      # nothing kept: the tuned rung measures the noise instead
            assert not probe["kept"] and rung is report["variants"][-1]
            continue
        slower = d["train_time_vs_separable"] > 1 / ladder.KEEP_MARGIN or d["inference_vs_separable"] > 1 / ladder.KEEP_MARGIN
        assert ("slower_than_separable" in d) == slower
    assert report["ratios_to_naive"]["Naive"]["params"] == 1.0
    table = ladder.render_table(report)
    for row in ("Parameters", "Accuracy", "Train time/epoch", "Inference time/step", "Params ÷ Naive"):
        assert row in table
    assert "Separable+JIT+AMP+Fusing" in table


@pytest.mark.slow
def test_ladder_skips_pooling_with_its_reason_when_there_is_no_flatten_head(tmp_path):
    keras = keras_io.keras3()
    L = keras.layers
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(8, 3, activation="relu"),
                              L.Conv2D(8, 3, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(4)])
    report = ladder.run_ladder(model, _data(), epochs=1, batch_size=32, progress=False, workdir=str(tmp_path),
                               probe=False, onednn_probe=False)
    pooling = next(v for v in report["variants"] if v["name"] == "Pooling")
    assert pooling["status"] == "skipped" and "no Flatten -> Dense head" in pooling["reason"]
    assert any("Pooling rung skipped" in n for n in report["notes"])
    assert "skipped" in ladder.render_table(report)
