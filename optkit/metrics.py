"""Task metrics: the one place optkit turns model outputs and labels into a score.

- classification: outputs (N, classes) (or (N, 1) for a one-unit binary head), labels (N,) ->
  top-1 `accuracy`;
- segmentation: outputs (N, H, W, classes) (or (N, H, W, 1) binary), masks (N, H, W) ->
  `accuracy` = pixel accuracy and `miou` = mean intersection-over-union over the classes present
  in the masks or the predictions (a class absent from both says nothing and is left out).

Every score carries `n`, the number of labelled samples behind it: a figure without its sample
count cannot be judged (8 test images give steps of 12.5 points).

Scores accumulate batch by batch (`Tally`), so callers never hold every output in memory.
numpy only: bench, parity and the runner side use it without TensorFlow.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

CLASSIFICATION, SEGMENTATION = "classification", "segmentation"


def task_of(output_shape: Sequence, label_shape: Optional[Sequence] = None) -> str:
    """`segmentation` for a per-pixel output (N, H, W, C) (or labels shaped N, H, W), else
    `classification`. Shapes include the batch dimension."""
    if label_shape is not None and len(label_shape) == 3:
        return SEGMENTATION
    return SEGMENTATION if len(output_shape) == 4 else CLASSIFICATION


def predicted_labels(outputs) -> np.ndarray:
    """Class per sample (N,) or per pixel (N, H, W): arg-max over the last axis; a single unit is
    a binary head (probability thresholded at 0.5, or a logit at 0)."""
    out = np.asarray(outputs)
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[-1] == 1:
        threshold = 0.5 if out.size and out.min() >= 0.0 and out.max() <= 1.0 else 0.0
        return (out[..., 0] > threshold).astype(np.int64)
    if out.ndim == 2 or out.ndim == 4:
        return out.argmax(axis=-1)
    return out.reshape(len(out), -1).argmax(axis=1)


class Tally:
    """Running counts for one task: feed (outputs, labels) batches, read `result()`."""

    def __init__(self, task: Optional[str] = None, num_classes: Optional[int] = None):
        self.task = task
        self.num_classes = num_classes
        self.n = 0
        self.correct = 0
        self.pixels = 0
        self.confusion = None   # segmentation: (classes, classes) counts, rows = truth

    def update(self, outputs, labels) -> "Tally":
        out = np.asarray(outputs)
        labels = np.asarray(labels)
        if self.task is None:
            self.task = task_of(out.shape, labels.shape)
        pred = predicted_labels(out)
        if self.task == SEGMENTATION:
            labels = labels.reshape(pred.shape).astype(np.int64)
            classes = self.num_classes or (out.shape[-1] if out.shape[-1] > 1 else 2)
            classes = max(classes, int(labels.max()) + 1 if labels.size else 0, int(pred.max()) + 1 if pred.size else 0)
            self._grow(classes)
            k = self.confusion.shape[0]
            self.confusion += np.bincount(labels.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)
            self.pixels += int(labels.size)
        else:
            labels = labels.reshape(-1)
            if len(labels) != len(pred):
                raise ValueError(f"{len(pred)} predictions for {len(labels)} labels")
            self.correct += int(np.sum(pred == labels))
        self.n += int(len(labels))
        return self

    def _grow(self, classes):
        if self.confusion is None:
            self.confusion = np.zeros((classes, classes), np.int64)
        elif classes > self.confusion.shape[0]:
            grown = np.zeros((classes, classes), np.int64)
            k = self.confusion.shape[0]
            grown[:k, :k] = self.confusion
            self.confusion = grown

    def result(self) -> dict:
        """{"accuracy", "n"} (+ "miou", "pixel_accuracy" for segmentation); accuracy None when n == 0."""
        if self.task == SEGMENTATION and self.confusion is not None:
            return {"accuracy": pixel_accuracy_from(self.confusion), "miou": miou_from(self.confusion),
                    "pixel_accuracy": pixel_accuracy_from(self.confusion), "n": self.n}
        return {"accuracy": self.correct / self.n if self.n else None, "n": self.n}


def miou_from(confusion: np.ndarray) -> Optional[float]:
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present])) if present.any() else None


def pixel_accuracy_from(confusion: np.ndarray) -> Optional[float]:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else None


def accuracy(outputs, labels) -> float:
    """Top-1 accuracy (classification) or pixel accuracy (segmentation)."""
    return Tally().update(outputs, labels).result()["accuracy"]


def miou(outputs, masks, num_classes: Optional[int] = None) -> Optional[float]:
    return Tally(SEGMENTATION, num_classes).update(outputs, masks).result()["miou"]


def pixel_accuracy(outputs, masks) -> Optional[float]:
    return Tally(SEGMENTATION).update(outputs, masks).result()["pixel_accuracy"]


def score(outputs, labels, task: Optional[str] = None) -> dict:
    """All metrics of the task for one set of outputs: {"accuracy", "n"[, "miou", "pixel_accuracy"]}."""
    return Tally(task).update(outputs, labels).result()


def evaluate(predict: Callable[[np.ndarray], object], x: np.ndarray, y: np.ndarray, *,
             batch: int = 32, task: Optional[str] = None) -> dict:
    """Score `predict` (batch of inputs -> outputs; a list/tuple means the first output counts)
    on every sample of (x, y), `batch` samples at a time."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    tally = Tally(task)
    batch = max(1, int(batch))
    for i in range(0, len(x), batch):
        out = predict(x[i:i + batch])
        if isinstance(out, (list, tuple)):
            out = out[0]
        tally.update(np.asarray(out), y[i:i + batch])
    return tally.result()


def format_metric(result: Optional[dict]) -> str:
    """'85.3% (n=300)' or 'mIoU 61.2%, pixel acc 93.0% (n=80)'; '-' without a score."""
    if not result or result.get("accuracy") is None:
        return "-"
    n = f" (n={result['n']})" if result.get("n") is not None else ""
    if result.get("miou") is not None:
        return f"mIoU {100 * result['miou']:.1f}%, pixel acc {100 * result['accuracy']:.1f}%{n}"
    return f"{100 * result['accuracy']:.1f}%{n}"
