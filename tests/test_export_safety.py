"""A failed export never looks like a good one (issue #17): artifacts reach their name only after
validation, failures are moved aside, killed runs' leftovers go, bad locations are one line."""
import os

import numpy as np
import pytest

import exporters
from optkit import keras_io
from optkit.export import artifact_path, export_model, export_one

INPUT = (16, 16, 3)


@pytest.fixture(scope="module")
def model():
    keras = keras_io.keras3()
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(INPUT, name="image"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, activation="softmax",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=1)),
    ], name="tiny")


@pytest.fixture(scope="module")
def keras_file(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("safety") / "tiny.keras")
    model.save(path)
    return path


def test_an_artifact_that_fails_validation_is_moved_aside_and_replaces_nothing(model, tmp_path):
    module = exporters.get("tflite")
    path = artifact_path(str(tmp_path), "tiny", module, "none")
    with open(path, "wb") as fh:
        fh.write(b"an older artifact")
    # The reference of another model: the real artifact cannot match it.
    wrong = np.random.default_rng(3)

    def reference(arrays):
        return [wrong.dirichlet(np.ones(5), size=len(arrays[0])).astype(np.float32)]

    art = export_one(module, model, path, reference=reference)
    aside = str(tmp_path / "tiny.failed.tflite")
    assert art.status == "failed" and art.path == aside
    assert art.details["failed_artifact"] == aside and aside in art.reason
    assert not os.path.exists(path), "a failed export left a file at the artifact's name"
    assert os.path.getsize(aside) > 1000
    assert sorted(os.listdir(tmp_path)) == ["tiny.failed.tflite"]
    # The next good export takes the name and the old failure goes.
    art = export_one(module, model, path)
    assert art.status == "ok" and sorted(os.listdir(tmp_path)) == ["tiny.tflite"]


def test_a_stale_temp_folder_is_gone_after_the_next_export(model, tmp_path):
    stale = tmp_path / ".tmp-4_aft__w"
    stale.mkdir()
    (stale / "artifact.onnx").write_bytes(b"partial 29 MB")
    (tmp_path / ".tmp-123-abcd.lock").write_text("")
    os.utime(tmp_path / ".tmp-123-abcd.lock", (0, 0))   # an old orphan lock file
    (art,) = export_model(model, "onnx", tmp_path)
    assert art.status == "ok"
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx"]


def test_cli_output_under_a_file_exits_2_with_one_line_naming_it(keras_file, tmp_path, capsys):
    from optkit.cli import main

    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "file" / "out")
    with pytest.raises(SystemExit) as info:
        main(["export", keras_file, "--to", "tflite", "-o", out])
    err = capsys.readouterr().err
    assert info.value.code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("optkit: error:")]
    assert out in line and ".tmp-" not in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_cli_output_that_is_a_file_exits_2_with_one_line(keras_file, tmp_path, capsys):
    from optkit.cli import main

    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "file")
    with pytest.raises(SystemExit) as info:
        main(["export", keras_file, "--to", "onnx", "-o", out])
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("optkit: error:")]
    assert info.value.code == 2 and out in line and "is a file" in line and "Traceback" not in err


def test_cli_read_only_output_folder_exits_2_with_one_line(keras_file, tmp_path, capsys):
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        os.chmod(folder, 0o555)
    try:
        from optkit.cli import main

        with pytest.raises(SystemExit) as info:
            main(["export", keras_file, "--to", "tflite", "-o", str(folder)])
        err = capsys.readouterr().err
        (line,) = [line for line in err.splitlines() if line.startswith("optkit: error:")]
        assert info.value.code == 2 and str(folder) in line and "Traceback" not in err
        assert "read-only" in line or "permission denied" in line
        assert os.listdir(folder) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=False)


def test_cli_disk_full_during_export_exits_1_with_one_line_and_leaves_nothing(keras_file, tmp_path, capsys):
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        from optkit.cli import main

        with pytest.raises(SystemExit) as info:
            main(["export", keras_file, "--to", "tflite", "-o", str(folder)])
        err = capsys.readouterr().err
        assert info.value.code == 1, err
        (line,) = [line for line in err.splitlines() if line.startswith("optkit: error:")]   # besides progress
        assert line.startswith("optkit: error: disk full while writing " + str(folder / "tiny.tflite"))
        assert ".tmp-" not in err and "Traceback" not in err
        assert os.listdir(folder) == []
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_value_checks_on_a_tiny_validation_split_are_topped_up_from_the_other_splits(model):
    from exporters import _common
    from optkit.data import Dataset

    rng = np.random.default_rng(0)

    def split(k):
        return rng.uniform(0, 1, (k,) + INPUT).astype(np.float32), np.zeros(k, np.int64)

    (xt, yt), (xv, yv), (xs, ys) = split(10), split(1), split(3)
    data = Dataset(xt, yt, xv, yv, xs, ys, ["a"] * 5, 5, INPUT, "six.npz")
    inputs, source = _common.sample_inputs(model, data, n=32, split="x_val")
    # one validation image: a centred SNR has nothing to centre on, so all 14 images are checked
    assert len(inputs[0]) == 14 and np.array_equal(inputs[0][0], xv[0])
    assert "validation split has only 1" in source and source.startswith("six.npz (14 samples")
    (xv, yv) = split(20)
    inputs, source = _common.sample_inputs(model, Dataset(xt, yt, xv, yv, xs, ys, ["a"] * 5, 5, INPUT, "d"),
                                           n=32, split="x_val")
    assert np.array_equal(inputs[0], xv) and source == "d (20 samples)"
