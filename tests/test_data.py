"""optkit.data: every --data source comes back split, float32 [0, 1] NHWC at the model's shape, int64 labels."""
import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from optkit import data
from optkit.data import SHAPE_CLASSES, load_data, synthetic_shapes
from optkit.errors import UserError

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


def _check_dataset(ds, shape, num_classes):
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape[1:] == shape and len(x) == len(y)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert y.min() >= 0 and y.max() < num_classes
    assert ds.input_shape == shape and ds.num_classes == num_classes == len(ds.class_names)


# ------------------------------------------------------------------------------ synthetic


def test_default_source_is_ten_synthetic_shapes_split_70_15_15():
    ds = load_data(limit=600)
    assert ds.source == "synthetic:shapes"
    _check_dataset(ds, (32, 32, 3), 10)
    assert ds.class_names == list(SHAPE_CLASSES)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (420, 90, 90)
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_val, ds.y_test]), minlength=10)
    assert counts.min() == counts.max() == 60      # balanced classes


def test_synthetic_shapes_are_deterministic_per_seed():
    a, ya = synthetic_shapes(64, (32, 32), seed=5)
    b, yb = synthetic_shapes(64, (32, 32), seed=5)
    c, yc = synthetic_shapes(64, (32, 32), seed=6)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    split1, split2 = load_data("synthetic:shapes?n=100", seed=1), load_data("synthetic:shapes?n=100", seed=1)
    assert np.array_equal(split1.x_test, split2.x_test) and np.array_equal(split1.y_train, split2.y_train)


def test_each_image_holds_one_shape_that_differs_from_its_background():
    x, y = synthetic_shapes(200, (32, 32), seed=0)
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
    # The shape covers a real part of the image: the bright tail differs clearly from the median.
    spread = np.percentile(luma, 95, axis=(1, 2)) - np.median(luma, axis=(1, 2))
    assert np.mean(spread > 0.15) > 0.95
    # Same pose statistics per class, different geometry: the mean mask area differs by class.
    area = (luma > (np.median(luma, axis=(1, 2)) + 0.15)[:, None, None]).mean(axis=(1, 2))
    per_class = np.array([area[y == k].mean() for k in range(10)])
    ring, circle = SHAPE_CLASSES.index("ring"), SHAPE_CLASSES.index("circle")
    assert per_class[ring] < per_class[circle]


def test_generating_3000_images_at_32x32_takes_well_under_two_seconds():
    # CPU time of this process: the machine is shared, wall time would measure the neighbours.
    best = float("inf")
    for _ in range(2):
        start = time.process_time()
        x, _ = synthetic_shapes(3000, (32, 32), seed=0)
        best = min(best, time.process_time() - start)
    assert x.shape == (3000, 32, 32, 3)
    assert best < 2.0, best


def test_synthetic_options_and_model_shape():
    ds = load_data("synthetic:shapes?n=200&size=48&classes=4&seed=3")
    _check_dataset(ds, (48, 48, 3), 4)
    assert ds.class_names == list(SHAPE_CLASSES[:4]) and len(ds) == 200
    assert ds.details == {"generator": "shapes", "n": 200, "size": [48, 48], "classes": 4, "seed": 3,
                          "space": "pixels"}
    # Without ?size= the shapes are drawn at the model's input size; a gray model gets luma.
    gray = load_data("synthetic:shapes?n=50", input_shape=(40, 24, 1), num_classes=3)
    _check_dataset(gray, (40, 24, 1), 3)
    assert gray.details["size"] == [40, 24]


def test_a_model_with_dynamic_height_and_width_gets_the_sources_size_and_its_channels(tmp_path):
    ds = load_data("synthetic:shapes?n=40&size=24", input_shape=(None, None, 1))
    _check_dataset(ds, (24, 24, 1), 10)
    root = _image_folder(tmp_path / "imgs")
    folder = load_data(str(root), input_shape=(None, None, 1))
    assert folder.input_shape == (16, 20, 1)


def test_a_model_with_more_outputs_than_shape_classes_can_use_synthetic_data():
    ds = load_data("synthetic:shapes?n=60", num_classes=1000)
    assert ds.num_classes == 1000 and len(ds.class_names) == 1000
    assert ds.y_train.max() < 10 and ds.class_names[:10] == list(SHAPE_CLASSES)


@pytest.mark.slow   # draws ~200 MB of 224x224 images
def test_default_synthetic_size_shrinks_for_large_inputs_but_explicit_n_is_kept():
    big = load_data("synthetic:shapes", input_shape=(224, 224, 3))
    assert len(big) == int(200e6 // (224 * 224 * 3 * 4)) == 332     # ~200 MB of float32
    assert big.x_train.nbytes + big.x_val.nbytes + big.x_test.nbytes < 200e6
    explicit = load_data("synthetic:shapes?n=500", input_shape=(112, 112, 1))
    assert len(explicit) == 500 and explicit.input_shape == (112, 112, 1)


def test_limit_caps_the_number_of_samples_before_splitting():
    ds = load_data("synthetic:shapes", limit=100, val_fraction=0.2, test_fraction=0.1)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (70, 20, 10)


@pytest.mark.parametrize("src, kwargs, message", [
    ("synthetic:circles", {}, "available: synthetic:shapes"),
    ("synthetic:shapes?colour=red", {}, "unknown option 'colour'"),
    ("synthetic:shapes?n=ten", {}, "expects an integer"),
    ("synthetic:shapes?classes=11", {}, "between 2 and 10"),
    ("synthetic:shapes?n=50&classes=10", {"num_classes": 5}, "has 10 classes but the model outputs 5"),
    ("synthetic:shapes?n=2", {}, "too few to split"),
    ("synthetic:shapes?size=4", {}, "at least 8x8"),
    ("synthetic:shapes", {"input_shape": (32, 32, 2)}, "1, 3 or 4 channels"),
    ("synthetic:shapes", {"input_shape": (32, 32)}, "(H, W, C)"),
    ("synthetic:shapes", {"num_classes": 0}, "positive integer"),
])
def test_bad_synthetic_requests_are_one_line_user_errors(src, kwargs, message):
    with pytest.raises(UserError) as info:
        load_data(src, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ image folders

COLOURS = {"black": (0, 0, 0), "red": (255, 0, 0), "white": (255, 255, 255)}


def _image_folder(root, per_class=4):
    """Three classes of flat-colour images in mixed sizes and modes (RGB, L, RGBA, JPEG)."""
    for name, rgb in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 4 * i, 16 + 2 * i)
            img = Image.new("RGB", size, rgb)
            if i == 1:
                img = img.convert("RGBA")
            if i == 2 and name != "red":
                img = img.convert("L")
            img.save(folder / (f"{i}.jpg" if i == 3 else f"{i}.png"))
    (root / "notes.txt").write_text("not a class")   # stray files at the top level are ignored
    return root


def test_image_folder_classes_are_sorted_folder_names_and_pixels_follow_labels(tmp_path):
    ds = load_data(str(_image_folder(tmp_path / "imgs")), input_shape=(12, 12, 3), num_classes=3, seed=0)
    _check_dataset(ds, (12, 12, 3), 3)
    assert ds.class_names == ["black", "red", "white"]
    x = np.concatenate([ds.x_train, ds.x_val, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert len(y) == 12 and np.bincount(y).tolist() == [4, 4, 4]
    mean_rgb = {name: x[y == k].mean(axis=(0, 1, 2)) for k, name in enumerate(ds.class_names)}
    np.testing.assert_allclose(mean_rgb["black"], [0, 0, 0], atol=0.02)
    np.testing.assert_allclose(mean_rgb["white"], [1, 1, 1], atol=0.02)
    np.testing.assert_allclose(mean_rgb["red"], [1, 0, 0], atol=0.03)


def test_image_folder_to_grayscale_uses_luma_and_default_shape_is_the_first_image(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    gray = load_data(str(root), input_shape=(8, 8, 1))
    red = np.concatenate([gray.x_train, gray.x_val, gray.x_test])[
        np.concatenate([gray.y_train, gray.y_val, gray.y_test]) == 1]
    np.testing.assert_allclose(red.mean(), 0.299, atol=0.02)   # Pillow's L of pure red
    native = load_data(str(root), limit=6)
    assert native.input_shape == (16, 20, 3) and len(native) == 6   # black/0.png is 20x16 RGB


def test_image_folder_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        load_data(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="one sub-folder of images per class"):
        load_data(str(tmp_path / "empty"))
    root = _image_folder(tmp_path / "imgs")
    with pytest.raises(UserError, match="has 3 classes but the model outputs 2"):
        load_data(str(root), num_classes=2)
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.md").write_text("no images here")
    with pytest.raises(UserError, match="class folder 'zebra' has no images"):
        load_data(str(root))
    (root / "zebra" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        load_data(str(root))


# ------------------------------------------------------------------------------ .npz


def test_npz_uint8_grayscale_becomes_rgb_in_unit_range(tmp_path):
    x = np.zeros((20, 10, 10), np.uint8)
    y = np.arange(20) % 2
    x[y == 1] = 255
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["dark", "light"]))
    ds = load_data(str(tmp_path / "d.npz"), input_shape=(5, 5, 3), num_classes=2)
    _check_dataset(ds, (5, 5, 3), 2)
    assert ds.class_names == ["dark", "light"]
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert np.all(xs[ys == 1] == 1.0) and np.all(xs[ys == 0] == 0.0)


def test_npz_float_images_one_hot_labels_and_0_255_floats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (30, 6, 6, 3)).astype(np.float32)
    y = np.eye(3)[np.arange(30) % 3]
    np.savez(tmp_path / "unit.npz", x=x, y=y)
    ds = load_data(str(tmp_path / "unit.npz"), seed=0, val_fraction=0, test_fraction=0)
    assert ds.input_shape == (6, 6, 3) and ds.class_names == ["0", "1", "2"]
    order = np.random.default_rng(0).permutation(30)
    np.testing.assert_array_equal(ds.x_train, x[order])           # kept as given, only shuffled
    np.testing.assert_array_equal(ds.y_train, (np.arange(30) % 3)[order])
    np.savez(tmp_path / "scaled.npz", x=x * 255, y=np.arange(30) % 3)
    scaled = load_data(str(tmp_path / "scaled.npz"), seed=0, val_fraction=0, test_fraction=0)
    np.testing.assert_allclose(scaled.x_train, x[order], atol=1e-6)


@pytest.mark.parametrize("arrays, kwargs, message", [
    ({"images": np.zeros((4, 8, 8))}, {}, "needs an array 'x' (images)"),
    ({"x": np.zeros((4, 8, 8)), "y": np.zeros(5, int)}, {}, "4 images but 5 labels"),
    ({"x": np.zeros((10, 8, 8)), "y": np.arange(10) % 4}, {"num_classes": 3}, "has 4 classes but the model outputs 3"),
    ({"x": np.zeros((10, 8, 8)), "y": np.arange(10) - 1}, {}, "labels must be >= 0"),
    ({"x": np.zeros((10, 8, 8)), "y": np.full(10, 0.5)}, {}, "must be integers"),
    ({"x": np.full((10, 8, 8), 300.0), "y": np.zeros(10, int)}, {}, "[0, 1] or [0, 255]"),
    ({"x": np.zeros((10, 8, 8, 5)), "y": np.zeros(10, int)}, {}, "has 5 channels"),
    ({"x": np.zeros((10, 8)), "y": np.zeros(10, int)}, {}, "N,H,W or N,H,W,C"),
])
def test_bad_npz_files_are_one_line_user_errors(tmp_path, arrays, kwargs, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError) as info:
        load_data(str(tmp_path / "bad.npz"), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_corrupt_npz_is_a_user_error(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_data(str(tmp_path / "junk.npz"))
    with pytest.raises(UserError, match="no such file"):
        load_data(str(tmp_path / "absent.npz"))


# ------------------------------------------------------------------------------ tfds


def test_tfds_offline_never_downloads_and_says_why_it_cannot_load():
    with pytest.raises(UserError) as info:
        load_data("tfds:optkit_no_such_dataset", offline=True)
    text = str(info.value)
    if importlib.util.find_spec("tensorflow_datasets") is None:
        assert "needs the tensorflow-datasets package" in text
    else:
        assert "unknown or unreadable tfds dataset" in text or "offline mode forbids downloading" in text


# ------------------------------------------------------------------------------ import cost


def test_loading_synthetic_folder_and_npz_data_imports_no_tensorflow(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.arange(10) % 2)
    code = (f"import sys; from optkit.data import load_data; load_data('synthetic:shapes?n=40');"
            f"load_data({str(root)!r}, input_shape=(8, 8, 3)); load_data({str(tmp_path / 'd.npz')!r});"
            "print([m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------ learnability


@pytest.mark.slow
def test_a_small_cnn_learns_synthetic_shapes_well_above_chance_but_not_perfectly():
    """3 CPU epochs on the demo's 3,000 samples: the task must show model changes in accuracy."""
    from optkit import keras_io

    keras = keras_io.keras3()
    ds = load_data("synthetic:shapes?n=3000", seed=0)
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([
        keras.Input(ds.input_shape),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.Flatten(),
        L.Dense(64, activation="relu"), L.Dense(ds.num_classes, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(ds.x_train, ds.y_train, epochs=3, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(ds.x_test, ds.y_test, verbose=0)
    assert 0.2 < accuracy < 0.95, accuracy   # chance is 0.1; measured 0.30 (seed 0)


def test_splits_are_stratified_disjoint_and_exact_in_size():
    ds = load_data("synthetic:shapes?classes=3&n=240", seed=1)
    summary = data.split_summary(ds)
    assert (summary["train"], summary["val"], summary["test"]) == (168, 36, 36)
    assert summary["per_class"]["test"] == [12, 12, 12] and summary["per_class"]["val"] == [12, 12, 12]
    # No image is in two splits (the test split is never trained on).
    rows = lambda x: {a.tobytes() for a in x}
    assert not rows(ds.x_test) & rows(ds.x_train) and not rows(ds.x_val) & rows(ds.x_train)
    # Imbalanced classes keep their share; a class with one sample trains.
    y = np.array([0] * 90 + [1] * 9 + [2])
    train, val, test = data.stratified_split(y, 15, 15)
    assert np.bincount(y[test], minlength=3).tolist() == [14, 1, 0]
    assert 2 in y[train] and len(train) + len(val) + len(test) == 100


def test_small_data_is_named_in_one_line_and_large_data_is_not():
    small = load_data("synthetic:shapes?classes=2&n=240")
    note = data.small_data_note(small)
    assert note and "\n" not in note and "240 labelled images" in note and "168/36/36" in note
    assert data.split_summary(small)["small"]
    assert data.small_data_note(load_data("synthetic:shapes?classes=2&n=1200")) is None
    assert data.is_small(np.array([0] * 600 + [1] * 40))   # one class below 50


def test_keras_datasets_not_in_the_cache_offline_or_unknown_are_user_errors():
    """(Reading the Keras cache itself is tests/test_keras_datasets.py: CIFAR's reader imports TensorFlow.)"""
    with pytest.raises(UserError, match="offline mode forbids downloading"):
        load_data("keras:cifar100", offline=True)
    with pytest.raises(UserError, match="unknown Keras dataset"):
        load_data("keras:imagenet", offline=True)


# ------------------------------------------------------------------------------ segmentation, unlabelled, model space


def test_segmentation_masks_from_npz_and_from_images_masks_folders(tmp_path):
    from tests.user_models import segmentation_pixels, write_segmentation_folder

    x, masks = segmentation_pixels(20, seed=1, size=16)
    np.savez(tmp_path / "seg.npz", x=x, y=masks)
    ds = load_data(str(tmp_path / "seg.npz"), input_shape=(8, 8, 3), num_classes=3)
    assert ds.task == "segmentation" and ds.y_train.shape[1:] == (8, 8)
    assert set(np.unique(ds.y_train)) <= {0, 1, 2}            # nearest-neighbour: no blended labels
    root = write_segmentation_folder(str(tmp_path / "segdir"), x, masks)
    folder = load_data(root, seed=0)
    assert folder.task == "segmentation" and len(folder) == 20 and folder.y_test.shape[1:] == (16, 16)
    with pytest.raises(UserError, match="more than|classes but the model outputs"):
        load_data(root, num_classes=2)


def test_images_without_labels_npz_and_folder(tmp_path):
    from tests.user_models import write_unlabelled_folder

    x = np.random.default_rng(0).integers(0, 256, (12, 10, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", x=x)
    ds = load_data(str(tmp_path / "x.npz"), num_classes=4)
    assert not ds.labelled and ds.y_train is None and ds.task == "unlabelled" and len(ds) == 12
    folder = load_data(write_unlabelled_folder(str(tmp_path / "imgs"), x))
    assert not folder.labelled and folder.x_train.max() <= 1.0 and len(folder) == 12


def test_data_already_in_model_space_is_kept_as_given(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (20, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "tf.npz", x=x, y=np.arange(20) % 2)
    ds = load_data(str(tmp_path / "tf.npz"), input_shape=(4, 4, 3), val_fraction=0, test_fraction=0.1)
    assert ds.details["space"] == "model" and ds.x_train.min() < -0.5   # resized, not clipped to [0, 1]


def test_small_calibration_and_evaluation_sets_are_said_out_loud():
    six = load_data("synthetic:shapes?classes=3&n=6&size=8")
    lines = data.size_warnings(six)
    assert any("calibration images (< 100)" in l for l in lines) and all("\n" not in l for l in lines)
    assert any("per class" in l for l in lines)
    big = load_data("synthetic:shapes?classes=2&n=400&size=8")
    assert data.size_warnings(big) == []
