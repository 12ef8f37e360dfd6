"""optkit.metrics: accuracy, mIoU and pixel accuracy, with the sample count behind each."""
import numpy as np
import pytest

from optkit import metrics

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


def test_classification_accuracy_counts_every_sample():
    out = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert metrics.score(out, [0, 1, 1, 1]) == {"accuracy": 0.75, "n": 4}
    # a one-unit binary head: probability thresholded at 0.5, a logit at 0
    assert metrics.accuracy(np.array([[0.9], [0.2]]), [1, 0]) == 1.0
    assert metrics.accuracy(np.array([[-3.0], [2.0]]), [0, 1]) == 1.0


def test_segmentation_miou_and_pixel_accuracy():
    masks = np.zeros((1, 4, 4), np.int64)
    masks[0, :2] = 1                                  # top half class 1
    pred = np.zeros((1, 4, 4), np.int64)
    pred[0, :1] = 1                                   # predicted: only the first row
    onehot = np.eye(2)[pred]                          # (1, 4, 4, 2) "probabilities"
    result = metrics.score(onehot, masks)
    assert result["n"] == 1
    assert result["pixel_accuracy"] == result["accuracy"] == pytest.approx(12 / 16)
    # class 1: 4 / 8 ; class 0: 8 / 12
    assert result["miou"] == pytest.approx((4 / 8 + 8 / 12) / 2)
    # all background predicted: class 1 IoU 0, background 8/16
    assert metrics.miou(np.eye(2)[np.zeros_like(masks)], masks) == pytest.approx(0.25)


def test_evaluate_in_batches_equals_one_shot():
    rng = np.random.default_rng(0)
    out = rng.random((10, 3, 5, 4))
    masks = rng.integers(0, 4, (10, 3, 5))
    whole = metrics.score(out, masks)
    batched = metrics.evaluate(lambda x: [out[x]], np.arange(10), masks, batch=3)
    assert batched == pytest.approx(whole)
    assert metrics.format_metric(whole).endswith("(n=10)")
