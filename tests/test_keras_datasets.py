"""keras:NAME data sources read offline from the Keras cache. Not in the unit tier: CIFAR's
pickled batches are read with Keras' own reader (optkit.data._read_keras_cache), which imports
TensorFlow."""
import numpy as np

from optkit.data import load_data


def _cifar_batch(path, n, seed, label_key="labels"):
    import pickle

    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     label_key.encode(): [int(v) for v in rng.integers(0, 10, n)]}, fh)


def test_keras_datasets_read_from_the_keras_cache_offline(tmp_path, monkeypatch):
    """The folders keras.datasets leaves in $KERAS_HOME/datasets, written small, read offline."""
    import gzip

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cache = tmp_path / "datasets"
    folder = cache / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 6, i)
    _cifar_batch(folder / "test_batch", 10, 9)
    ds = load_data("keras:cifar10", offline=True, seed=0)
    assert len(ds) == 40 and ds.input_shape == (32, 32, 3) and ds.class_names[0] == "airplane"
    assert ds.details["space"] == "pixels" and 0 <= ds.x_train.min() and ds.x_train.max() <= 1

    rng = np.random.default_rng(0)
    np.savez(cache / "mnist.npz", x_train=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             y_train=np.arange(20) % 10, x_test=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             y_test=np.arange(5))
    mnist = load_data("keras:mnist", offline=True)
    assert len(mnist) == 25 and mnist.input_shape == (28, 28, 1) and mnist.num_classes == 10

    fashion = cache / "fashion-mnist"
    fashion.mkdir()
    for stem, n in (("train", 12), ("t10k", 4)):
        with gzip.open(fashion / f"{stem}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(b"\0" * 8 + (np.arange(n) % 10).astype(np.uint8).tobytes())
        with gzip.open(fashion / f"{stem}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(b"\0" * 16 + rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
    assert len(load_data("keras:fashion_mnist", offline=True, input_shape=(28, 28, 3))) == 16
