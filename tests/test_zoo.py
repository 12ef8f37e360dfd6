"""The course zoo: every architecture builds offline, seeded, at a small input; the CLI lists and saves them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from optkit import zoo
from optkit.cli import cli, main
from optkit.errors import UserError

COURSE = {"lesson14", "custom_cnn", "lenet5", "alexnet", "vgg16", "resnet50", "resnet_cifar", "inception_v3",
          "xception", "densenet121", "mobilenet_v2", "mobilenet_v3_small", "nasnet_mobile", "efficientnet_b0",
          "convnext_tiny", "unet", "deeplabv3_plus"}
# Heavy keras.applications graphs: several seconds each to build on 2 shared cores.
HEAVY = {"resnet50", "inception_v3", "xception", "densenet121", "nasnet_mobile", "convnext_tiny",
         "efficientnet_b0", "alexnet", "vgg16", "deeplabv3_plus"}
# Lesson 14's table (course-outline.md): Naive, Pooling (GAP instead of Flatten), Separable.
TABLE = {"naive": 7_476_742, "pooling": 5_873_478, "separable": 679_137}


def _smallest_shape(entry):
    side = max(entry.min_size, entry.size_multiple)
    side = -(-side // entry.size_multiple) * entry.size_multiple
    return (side, side, entry.default_input_shape[2])


def test_zoo_lists_every_course_architecture_with_metadata():
    entries = zoo.list_models()
    names = [e.name for e in entries]
    assert len(names) == len(set(names)) >= 14
    assert COURSE <= set(names)
    for e in entries:
        assert e.task in ("classification", "segmentation")
        assert len(e.default_input_shape) == 3 and e.lesson.startswith("Lesson")
        assert e.min_size <= min(e.default_input_shape[:2])
    assert {e.name for e in entries if e.task == "segmentation"} == {"unet", "deeplabv3_plus"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in sorted(e.name for e in zoo.list_models())])
def test_every_zoo_model_builds_at_its_smallest_input_and_outputs_probabilities(name):
    entry = zoo.get(name)
    shape = _smallest_shape(entry)
    model = zoo.build(name, input_shape=shape, num_classes=5, seed=0)
    assert type(model).__module__.startswith("keras")     # Keras 3, never tf_keras
    assert tuple(model.inputs[0].shape[1:]) == shape
    x = np.random.default_rng(0).uniform(0, 1, (2,) + shape).astype("float32")
    y = np.asarray(model(x, training=False))
    expected = (2, 5) if entry.task == "classification" else (2, shape[0], shape[1], 5)
    assert y.shape == expected
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-4)   # softmax per sample / per pixel


def _lesson14_variant(conv_class, head_class):
    """Rebuild the Lesson 14 CNN with its Conv2D and/or Flatten swapped, as the course's table does."""
    from optkit import keras_io

    keras = keras_io.keras3()
    config = zoo.build("lesson14").get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)   # recorded input shapes would pin the Dense to Flatten's width
        if layer["class_name"] == "Conv2D" and conv_class == "SeparableConv2D":
            layer["class_name"] = conv_class
            for key in ("kernel_initializer", "kernel_regularizer", "kernel_constraint", "groups"):
                layer["config"].pop(key, None)
        elif layer["class_name"] == "Flatten":
            layer["class_name"] = head_class
    return keras.Sequential.from_config(config)


def test_lesson14_parameter_counts_are_within_one_percent_of_the_course_table():
    naive = zoo.build("lesson14")
    assert tuple(naive.inputs[0].shape[1:]) == (32, 32, 3)
    assert naive.count_params() == 7_481_673
    pooling = _lesson14_variant("Conv2D", "GlobalAveragePooling2D").count_params()
    separable = _lesson14_variant("SeparableConv2D", "GlobalAveragePooling2D").count_params()
    for name, count in (("naive", naive.count_params()), ("pooling", pooling), ("separable", separable)):
        assert abs(count - TABLE[name]) / TABLE[name] < 0.01, (name, count)
    layer_types = [type(layer).__name__ for layer in naive.layers]
    assert "Flatten" in layer_types and layer_types.count("Conv2D") == 6


@pytest.mark.slow
def test_lesson14_learns_synthetic_shapes_in_three_epochs_at_adams_default_rate():
    """The embedded demo trains this model on synthetic:shapes; it must learn, not sit at chance."""
    from optkit.data import load_data

    data = load_data("synthetic:shapes?n=3000", seed=0)
    model = zoo.build("lesson14", input_shape=data.input_shape, num_classes=data.num_classes, seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])   # Adam lr 1e-3
    model.fit(data.x_train, data.y_train, epochs=3, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    # Measured 0.37 (3 epochs, seed 0); 2.5x chance leaves room for CPU-to-CPU float differences.
    assert 0.25 < accuracy < 0.98, accuracy   # chance is 0.1


def test_same_seed_gives_same_weights_and_another_seed_differs():
    a = zoo.build("lenet5", seed=3).get_weights()
    b = zoo.build("lenet5", seed=3).get_weights()
    c = zoo.build("lenet5", seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_unknown_name_is_a_user_error_with_a_suggestion():
    with pytest.raises(UserError, match="did you mean 'resnet50'"):
        zoo.build("resnet5O")


def test_input_below_an_applications_minimum_names_the_minimum():
    with pytest.raises(UserError, match="at least 75x75"):
        zoo.build("inception_v3", input_shape=(64, 64, 3))


@pytest.mark.parametrize("classes", [0, -3, 2.5, "ten"])
def test_a_class_count_that_is_not_a_positive_integer_is_refused(classes):
    with pytest.raises(UserError, match="positive integer"):
        zoo.build("lenet5", num_classes=classes)


def test_segmentation_input_not_a_multiple_of_16_is_refused():
    with pytest.raises(UserError, match="divisible by 16"):
        zoo.build("unet", input_shape=(40, 40, 3))


def test_zoo_metadata_and_zoo_list_import_no_tensorflow():
    code = ("import sys; from optkit import zoo; zoo.list_models(); zoo.get('lesson14');"
            "from click.testing import CliRunner; from optkit.cli import cli;"
            "r = CliRunner().invoke(cli, ['zoo', 'list', '--json']); assert r.exit_code == 0, r.output;"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_zoo_list_json_gives_name_lesson_task_and_default_input_shape():
    result = CliRunner().invoke(cli, ["zoo", "list", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert len(rows) >= 14
    assert all(set(r) == {"name", "lesson", "task", "default_input_shape"} for r in rows)
    lesson14 = next(r for r in rows if r["name"] == "lesson14")
    assert lesson14 == {"name": "lesson14", "lesson": "Lesson 14", "task": "classification",
                        "default_input_shape": [32, 32, 3]}


def test_zoo_list_table_has_one_row_per_architecture():
    result = CliRunner().invoke(cli, ["zoo", "list"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:3] == ["name", "lesson", "task"]
    assert len(lines) == 1 + len(zoo.list_models())
    assert any(line.startswith("unet ") and "segmentation" in line for line in lines)


def test_zoo_build_writes_a_keras3_file_with_the_requested_shape_and_classes(tmp_path):
    out = tmp_path / "lenet.keras"
    result = CliRunner().invoke(cli, ["zoo", "build", "lenet5", "-o", str(out), "--input-shape", "28,28,1",
                                      "--classes", "7"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "lenet5" in result.output
    import keras

    model = keras.saving.load_model(str(out))
    assert tuple(model.inputs[0].shape[1:]) == (28, 28, 1)
    assert tuple(model.outputs[0].shape[1:]) == (7,)
    assert [p.name for p in tmp_path.iterdir()] == ["lenet.keras"]   # no temp file left behind


@pytest.mark.parametrize("args, message", [
    (["zoo", "build", "lenet", "-o", "{tmp}/m.keras"], "did you mean 'lenet5'"),
    (["zoo", "build", "lenet5", "-o", "{tmp}/m.keras", "--input-shape", "28,28"], "three positive integers"),
    (["zoo", "build", "lenet5", "-o", "{tmp}/m.keras", "--input-shape", "a,b,c"], "H,W,C integers"),
    (["zoo", "build", "lenet5", "-o", "{tmp}/m.keras", "--input-shape", "8,8,1"], "at least 16x16"),
    (["zoo", "build", "lenet5", "-o", "{tmp}/m.h5"], "ending in .keras"),
    (["zoo", "build", "lenet5", "-o", "{tmp}/m.keras", "--classes", "0"], "--classes must be >= 1"),
])
def test_zoo_build_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
