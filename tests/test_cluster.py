"""`cluster` step: at most k distinct values per clustered kernel, every init, per-channel,
sparsity kept after prune, Keras 3 in and out."""
import numpy as np
import pytest

from optkit import compression, keras_io, steps
from optkit.errors import UserError

from test_compression_helpers import base, data, context, quadrant_task, small_cnn, trained_cnn  # noqa: F401 (fixtures)
from test_compression_helpers import run_step as run




@pytest.mark.parametrize("init", ["kmeans_plus_plus", "linear", "density", "random"])
def test_each_clustered_kernel_holds_at_most_k_values(base, data, init):
    result = run("cluster", base, data, clusters="8", init=init)
    assert result.info["clustered_layers"] == ["stem", "body", "head"]
    for name in result.info["clustered_layers"]:
        values = np.unique(result.model.get_layer(name).kernel.numpy())
        assert 2 <= values.size <= 8, (name, values.size)
    assert result.info["within_limit"] is True
    assert result.info["unique_values_per_kernel"] == compression.unique_values_per_kernel(result.model)


def test_clustering_keeps_accuracy_and_shrinks_the_gzip_size(base, data):
    info = run("cluster", base, data, clusters="16").info
    assert info["accuracy_before"] >= 0.9
    assert info["accuracy_after"] >= info["accuracy_before"] - 0.05
    assert info["size_after"]["bytes"] == info["size_before"]["bytes"]
    assert info["size_after"]["gzip_bytes"] < 0.7 * info["size_before"]["gzip_bytes"]


def test_per_channel_clustering_bounds_values_per_output_channel(base, data):
    result = run("cluster", base, data, clusters="4", per_channel="true", layers="body")
    assert result.info["clustered_layers"] == ["body"]
    for name in ("body",):
        kernel = result.model.get_layer(name).kernel.numpy()
        per_channel = [np.unique(kernel[..., c]).size for c in range(kernel.shape[-1])]
        assert max(per_channel) <= 4
        # ...while the kernel as a whole uses more than 4 values: channels have their own centroids.
        assert np.unique(kernel).size > 4
    assert result.info["unique_values_per_channel_max"]["body"] <= 4


def test_without_training_data_weights_are_snapped_to_the_initial_centroids(base):
    result = run("cluster", base, None, epochs=0, clusters="8")
    assert isinstance(result.info["fine_tune"], str) and "no training data" in result.info["fine_tune"]
    assert max(result.info["unique_values_per_kernel"].values()) <= 8
    assert result.info["accuracy_before"] is None


def test_clustering_after_pruning_keeps_the_zeros(base, data):
    pruned = run("prune", base, data, epochs=2, sparsity="0.6", schedule="constant", lr="3e-3").model
    result = run("cluster", pruned, data, history=["prune"], clusters="8")
    assert result.info["preserve_sparsity"] is True
    assert result.info["history"]["source"] == "pipeline"
    for name in ("stem", "body", "head"):
        kernel = result.model.get_layer(name).kernel.numpy()
        assert np.mean(kernel == 0) >= 0.6 - 0.01, name
        assert np.unique(kernel).size <= 8 + 1     # k centroids + the preserved zero


def test_pruned_model_is_recognised_from_its_weights_without_a_record(base, data):
    pruned = run("prune", base, data, epochs=2, sparsity="0.6", schedule="constant", lr="3e-3").model
    result = run("cluster", pruned, data, clusters="8")
    assert result.info["history"] == {"pruned": True, "clustered": False, "source": "weights"}
    assert result.info["preserve_sparsity"] is True


def test_keras3_model_is_clustered_not_silently_returned(data, tmp_path):
    import keras

    model = trained_cnn(data, "keras3", epochs=2)
    result = run("cluster", model, data, clusters="8")
    path = keras_io.save(result.model, str(tmp_path / "clustered.keras"))
    loaded = keras.saving.load_model(path)
    assert np.unique(loaded.get_layer("body").kernel.numpy()).size <= 8


def test_bad_cluster_options_are_user_errors(base, data):
    with pytest.raises(UserError, match="init must be one of"):
        run("cluster", base, data, init="kmeans")
    with pytest.raises(UserError, match=r"clusters must be in \[2, 256\]"):
        run("cluster", base, data, clusters="1")
