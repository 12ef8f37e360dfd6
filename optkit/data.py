"""Labelled image data for `--data SRC`, split into train/validation/test and shaped for a model.

Sources:
- a directory with one sub-folder of images per class (class names = sorted folder names);
- a directory with `images/` and `masks/` (same file stems; masks hold class indices per pixel):
  a segmentation set; a directory of images with no sub-folders: images only (no labels);
- a `.npz` with `x` (N,H,W[,C], uint8 0-255 or float) and `y` (N integer labels, one-hot rows,
  or N,H,W segmentation masks), optionally `class_names`; `x` alone: images only;
- `keras:NAME` (mnist, fashion_mnist, cifar10, cifar100): keras.datasets, read from its cache
  (KERAS_HOME or ~/.keras, `datasets/`), downloaded by Keras when missing unless offline;
- `tfds:NAME` (or `tfds:NAME?split=train`): a TensorFlow Datasets set, downloaded by tfds when
  missing unless offline (needs the tensorflow-datasets package);
- `synthetic:shapes[?n=3000&size=32&classes=10&seed=0]`: ten procedurally drawn shape classes
  (the embedded default, see `synthetic_shapes`), drawn at the model's input size unless
  `size` is given; without `n` or a limit, large images get fewer than 3,000 samples (~200 MB).

Every image comes back float32 pixels / 255 (in [0, 1]), NHWC, resized to `input_shape[:2]` and
converted to `input_shape[2]` channels (gray <-> RGB); labels are int64 (masks resized nearest).
optkit.contract maps these pixels into a model's input space. Float data with negative values
cannot be pixels: it is kept as given (`details["space"] == "model"`, e.g. [-1, 1] for a
preprocess_input "tf" model). Unlabelled sources give `y_* = None` (`Dataset.labelled` False).
Offline (`offline=True` or OPTKIT_OFFLINE=1): nothing is downloaded. Pure numpy + Pillow:
TensorFlow is imported only for `tfds:` and `keras:`. Anything wrong with the source is a
one-line UserError.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from optkit.errors import UserError

DEFAULT_SOURCE = "synthetic:shapes"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "ellipse", "hexagon", "arrow",
                 "heart")
SYNTHETIC_DEFAULTS = {"n": 3000, "size": 32, "classes": len(SHAPE_CLASSES), "seed": None}
# Without ?n= or a limit, fewer samples for large images: at most ~200 MB, at least 200 samples.
SYNTHETIC_MAX_DEFAULT_BYTES = 200e6
SYNTHETIC_MIN_DEFAULT_N = 200
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
# Below either, fine-tuning and its validation/test numbers are shaky: a test split of 30 images
# moves 3.3 points per image. optimize says so in one line (small_data_note).
SMALL_PER_CLASS = 50
SMALL_TOTAL = 500


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: List[str]
    num_classes: int
    input_shape: Tuple[int, int, int]
    source: str
    details: dict = field(default_factory=dict)   # e.g. synthetic generator options

    def __len__(self):
        return len(self.x_train) + len(self.x_val) + len(self.x_test)

    @property
    def labelled(self) -> bool:
        return self.y_test is not None

    @property
    def task(self) -> str:
        """"segmentation" (masks N,H,W), "classification" (N labels) or "unlabelled"."""
        if self.y_test is None:
            return "unlabelled"
        return "segmentation" if self.y_test.ndim == 3 else "classification"


def load_data(src: Optional[str] = None, *, input_shape: Optional[Sequence[int]] = None,
              num_classes: Optional[int] = None, seed: int = 0, limit: Optional[int] = None,
              val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
              offline: Optional[bool] = None) -> Dataset:
    """Load `src` (default `synthetic:shapes`) as a shuffled, split Dataset.

    `input_shape` (H, W, C) is what the model takes (default: the source's own size; 3 channels
    unless the images are grayscale); H and W may be None for a model that takes any size.
    `num_classes` is the model's output count: a source with more classes (or labels out of
    range) is a UserError; fewer is allowed (the extra outputs are never the right answer).
    `limit` caps the number of samples before splitting; `seed` fixes the shuffle (and the
    synthetic drawing). `offline` (default: OPTKIT_OFFLINE=1) forbids downloads.
    """
    if offline is None:
        offline = os.environ.get("OPTKIT_OFFLINE", "") not in ("", "0")
    src = DEFAULT_SOURCE if src is None else str(src)
    wanted = _check_shape(input_shape)
    # Loaders get a complete shape or none; a model with dynamic H/W takes the source's size.
    shape = wanted if wanted is not None and None not in wanted else None
    if num_classes is not None and (not isinstance(num_classes, (int, np.integer)) or num_classes < 1):
        raise UserError(f"number of classes must be a positive integer, got {num_classes!r}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"validation/test fractions must be in [0, 1) and sum below 1, got "
                        f"{val_fraction}/{test_fraction}")

    details = {}
    if src.startswith("synthetic:"):
        x, y, names, details = _load_synthetic(src, shape, num_classes, seed, limit)
    elif src.startswith("tfds:"):
        x, y, names = _load_tfds(src, limit, offline)
    elif src.startswith("keras:"):
        x, y, names = _load_keras(src, offline)
    elif os.path.isdir(src):
        x, y, names = _load_folder(src, shape, seed, limit)
    elif src.lower().endswith(".npz") or os.path.isfile(src):
        x, y, names = _load_npz(src)
    else:
        raise UserError(f"--data {src}: no such file or directory (expected an image folder, a .npz, "
                        "keras:NAME, tfds:NAME or synthetic:shapes)")

    if y is not None and len(x) != len(y):
        raise UserError(f"--data {src}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise UserError(f"--data {src}: no samples")
    names = _check_classes(src, y, names, num_classes)
    order = np.random.default_rng(seed).permutation(len(x))
    if limit is not None:
        order = order[:limit]
    x = _to_unit_float(x[order], src)
    y = y[order] if y is not None else None
    target = shape or _default_shape(x, wanted)
    # Pixels never go below 0: negative values mean the data is already in a model's input space.
    space = "model" if x.size and float(x.min()) < 0 else "pixels"
    details = dict(details, space=space)
    if space == "model":
        details["value_range"] = [float(x.min()), float(x.max())]
    x = _shape_images(x, target, clip=space == "pixels")
    if y is not None and y.ndim == 3:
        y = _shape_masks(y, target[:2])
    return _split(x, None if y is None else y.astype(np.int64), names, target, src, val_fraction,
                  test_fraction, details)


# Below these sizes a figure is said to be shaky: int8 calibration on fewer than ~100 images
# misses the activation ranges of rarer inputs (TFLite's converter suggests 100-500 samples),
# and with fewer than 10 test images per class one image moves accuracy by 10 points or more.
MIN_CALIBRATION_IMAGES = 100
MIN_EVAL_PER_CLASS = 10


def size_warnings(data) -> List[str]:
    """One line per reason to distrust figures computed on `data` (calibration = training
    split, evaluation = test split): the line to print and the note to keep in the report."""
    lines = []
    n_cal = len(data.x_train)
    if n_cal < MIN_CALIBRATION_IMAGES:
        lines.append(f"only {n_cal} calibration images (< {MIN_CALIBRATION_IMAGES}): int8 ranges may miss "
                     "real inputs; give more data")
    y = data.y_test
    if y is not None and y.ndim == 1 and len(y):
        counts = np.bincount(y, minlength=max(1, data.num_classes))
        seen = counts[counts > 0]
        if seen.min() < MIN_EVAL_PER_CLASS:
            lines.append(f"accuracy is measured on {len(y)} test image{'s' if len(y) != 1 else ''} "
                         f"({int(seen.min())} in the smallest "
                         f"class, < {MIN_EVAL_PER_CLASS} per class): one image moves it by "
                         f"{100 / len(y):.1f} points")
    return lines


# ------------------------------------------------------------------------------------ checks


def _check_shape(input_shape):
    if input_shape is None:
        return None
    try:
        shape = tuple(None if d is None else int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"input shape must be H,W,C integers, got {input_shape!r}") from None
    if len(shape) != 3 or shape[2] is None or min(d for d in shape if d is not None) < 1:
        raise UserError(f"input shape must be (H, W, C) with positive sizes, got {shape}")
    if shape[2] not in (1, 3, 4):
        raise UserError(f"images can be given 1, 3 or 4 channels, not {shape[2]} (input shape {shape})")
    return shape


def _check_classes(src, y, names, num_classes):
    if y is None:   # images only: the model's outputs name the classes, if any
        return list(names or [f"class_{i}" for i in range(num_classes or 0)])
    if y.ndim not in (1, 3):
        raise UserError(f"--data {src}: labels must be one integer per sample or an H,W mask per "
                        f"image, got shape {y.shape}")
    if len(y) and y.min() < 0:
        raise UserError(f"--data {src}: labels must be >= 0 (found {int(y.min())})")
    found = len(names) if names else int(y.max()) + 1
    if not names:
        names = [str(i) for i in range(found)]
    if num_classes is not None:
        if found > num_classes:
            raise UserError(f"--data {src} has {found} classes but the model outputs {num_classes}")
        if len(names) < num_classes:
            # A model with more outputs than the data has classes (e.g. an ImageNet head on
            # synthetic shapes) can still be calibrated and evaluated; the extra outputs are unused.
            names = list(names) + [f"class_{i}" for i in range(len(names), num_classes)]
    return list(names)


def _default_shape(x, wanted=None):
    """The images' own size (3 channels unless gray), overridden by what `wanted` fixes."""
    channels = x.shape[3] if x.ndim == 4 else 1
    own = (int(x.shape[1]), int(x.shape[2]), 1 if channels == 1 else 3)
    return tuple(o if w is None else w for o, w in zip(own, wanted or (None, None, None)))


# ------------------------------------------------------------------------------------ shaping


def _to_unit_float(x, src=""):
    """uint8 0-255 -> /255; floats already in [0, 1] kept; floats in (1, 255] taken as 0-255;
    values below 0 are not pixels: kept as given (the data is in a model's input space)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"--data {src}: images must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.size and not np.isfinite(x).all():
        raise UserError(f"--data {src}: images contain NaN or infinite values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0:
        return x
    if hi > 255:
        raise UserError(f"--data {src}: pixel values must be in [0, 1] or [0, 255] (or data already in the "
                        f"model's input space, with negative values), found [{lo:g}, {hi:g}]")
    return x / 255.0 if hi > 1.0 else x


def _shape_images(x, shape, clip=True):
    """float [0, 1] NHW/NHWC -> float32 NHWC at shape (H, W, C)."""
    if x.ndim == 3:
        x = x[..., None]
    h, w, c = shape
    if x.shape[1:3] != (h, w):
        x = _resize(x, h, w, clip)
    return _convert_channels(x, c).astype(np.float32, copy=False)


def _shape_masks(y, size):
    """Masks N,H,W -> N,h,w by nearest neighbour (class indices must not be blended)."""
    h, w = size
    if y.shape[1:3] == (h, w):
        return y
    rows = (np.arange(h) * y.shape[1] // h)
    cols = (np.arange(w) * y.shape[2] // w)
    return y[:, rows][:, :, cols]


def _pillow():
    """PIL.Image, or a UserError: Pillow comes with the `tf` extra, not with a runtime-only install."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("reading or resizing images needs Pillow (pip install pillow)") from None
    return Image


def _resize(x, h, w, clip=True):
    """Bilinear resize, one channel at a time in Pillow's float mode (no 8-bit rounding)."""
    Image = _pillow()

    out = np.empty((x.shape[0], h, w, x.shape[3]), np.float32)
    for i in range(x.shape[0]):
        for ch in range(x.shape[3]):
            img = Image.fromarray(np.ascontiguousarray(x[i, :, :, ch], dtype=np.float32), mode="F")
            out[i, :, :, ch] = np.asarray(img.resize((w, h), Image.BILINEAR))
    return np.clip(out, 0.0, 1.0) if clip else out


def _convert_channels(x, c):
    have = x.shape[3]
    if have == c:
        return x
    if have == 4:                       # drop alpha, then convert as RGB
        x, have = x[..., :3], 3
        if c == 3:
            return x
    if have == 1 and c == 3:
        return np.repeat(x, 3, axis=3)
    if have == 3 and c == 1:            # ITU-R 601 luma, what Pillow's "L" conversion uses
        return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if c == 4:                          # opaque alpha
        rgb = _convert_channels(x, 3)
        return np.concatenate([rgb, np.ones(rgb.shape[:3] + (1,), np.float32)], axis=3)
    raise UserError(f"cannot convert {have}-channel images to {c} channels")


def _split(x, y, names, shape, src, val_fraction, test_fraction, details):
    n = len(x)
    # A requested split is never empty: evaluation code may rely on having one sample.
    n_test = max(1, int(round(n * test_fraction))) if test_fraction > 0 else 0
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    if n - n_test - n_val < 1:
        raise UserError(f"--data {src}: {n} samples are too few to split into train/validation/test")
    if y is not None and y.ndim == 1:
        train, val, test = stratified_split(y, n_val, n_test)
    else:   # masks or no labels: nothing to stratify on
        a, b = n - n_val - n_test, n - n_test
        train, val, test = np.arange(a), np.arange(a, b), np.arange(b, n)
    ys = (None, None, None) if y is None else (y[train], y[val], y[test])
    return Dataset(x[train], ys[0], x[val], ys[1], x[test], ys[2], class_names=list(names),
                   num_classes=len(names), input_shape=tuple(int(d) for d in shape), source=src,
                   details=details)


def stratified_split(y, n_val: int, n_test: int):
    """Index arrays (train, val, test) with each class in every split in proportion to its share.

    `y` is already shuffled; each split takes each class's samples in that order. Class quotas
    are the split size times the class share, rounded by largest remainder so the sizes are
    exact. A class with a single sample goes to training. Indices keep the shuffled order."""
    y = np.asarray(y)
    n = len(y)
    classes, counts = np.unique(y, return_counts=True)
    test_q = _quotas(counts, n_test, n)
    val_q = _quotas(counts - test_q, n_val, n - n_test)
    parts = {"train": [], "val": [], "test": []}
    for c, q_test, q_val in zip(classes, test_q, val_q):
        idx = np.flatnonzero(y == c)
        parts["test"].append(idx[:q_test])
        parts["val"].append(idx[q_test:q_test + q_val])
        parts["train"].append(idx[q_test + q_val:])
    return tuple(np.sort(np.concatenate(parts[k])) for k in ("train", "val", "test"))


def _quotas(counts, size, total):
    """Split `size` over classes in proportion to `counts` (largest remainder), taking a class's
    last sample (which then cannot train) only when no other class can give one."""
    counts = np.asarray(counts, np.int64)
    if size <= 0 or total <= 0:
        return np.zeros_like(counts)
    exact = counts * (size / total)
    quota = np.minimum(np.floor(exact).astype(np.int64), np.maximum(counts - 1, 0))
    order = np.argsort(-(exact - quota), kind="stable")
    for limit in (np.maximum(counts - 1, 0), counts):
        while quota.sum() < size and (quota < limit).any():
            for i in order:
                if quota.sum() < size and quota[i] < limit[i]:
                    quota[i] += 1
    return quota


def class_counts(y, num_classes: Optional[int] = None) -> List[int]:
    y = np.asarray(y).reshape(-1).astype(np.int64)
    return np.bincount(y, minlength=num_classes or 0).tolist() if len(y) else [0] * (num_classes or 0)


def is_small(y) -> bool:
    """Fewer than SMALL_PER_CLASS labelled images in some class, or SMALL_TOTAL in all."""
    counts = [c for c in class_counts(y) if c > 0]
    return not counts or sum(counts) < SMALL_TOTAL or min(counts) < SMALL_PER_CLASS


def split_summary(ds: "Dataset") -> dict:
    """Split sizes and per-class counts, for report.json."""
    if ds.task != "classification":   # masks or no labels: sizes only
        return {"train": int(len(ds.x_train)), "val": int(len(ds.x_val)), "test": int(len(ds.x_test)),
                "task": ds.task, "stratified": False}
    return {"train": int(len(ds.y_train)), "val": int(len(ds.y_val)), "test": int(len(ds.y_test)),
            "per_class": {split: class_counts(getattr(ds, f"y_{split}"), ds.num_classes)
                          for split in ("train", "val", "test")},
            "stratified": True, "small": is_small(np.concatenate([ds.y_train, ds.y_val, ds.y_test]))}


def small_data_note(ds: "Dataset") -> Optional[str]:
    """One line when the data is too small to fine-tune and score reliably, else None."""
    if ds.task != "classification":
        return None
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    if not is_small(y):
        return None
    smallest = min(c for c in class_counts(y) if c > 0)
    n_test = max(1, len(ds.y_test))
    return (f"small data: {len(y)} labelled images ({smallest} in the smallest class; below "
            f"{SMALL_PER_CLASS} per class or {SMALL_TOTAL} in all fine-tuning is unreliable): splits "
            f"{len(ds.y_train)}/{len(ds.y_val)}/{len(ds.y_test)} are stratified, fine-tunes stop early on "
            f"validation, and one test image is {100 / n_test:.1f} accuracy points")


# ------------------------------------------------------------------------------------ sources


def _load_folder(root, shape, seed, limit):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if {"images", "masks"} <= set(classes):
        return _load_segmentation_folder(root, shape)
    if not classes:
        loose = _image_files(root)
        if not loose:
            raise UserError(f"--data {root}: expected one sub-folder of images per class, images/ and "
                            "masks/, or image files; found none")
        x = _read_images([os.path.join(root, f) for f in loose], shape)
        return x, None, None
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        images = _image_files(folder)
        if not images:
            raise UserError(f"--data {root}: class folder '{name}' has no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        files += [os.path.join(folder, f) for f in images]
        labels += [label] * len(images)

    labels = np.asarray(labels, np.int64)
    if shape is None:   # the first image of the first class, whatever `limit` keeps
        shape = _image_shape(_read_image(files[0]))
    if limit is not None and limit < len(files):
        # Read only the images that will be used: the same permutation load_data applies later.
        # The kept samples are renumbered 0..limit-1 so load_data's own permutation keeps them all.
        keep = np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])
        files, labels = [files[i] for i in keep], labels[keep]
    return _read_images(files, shape), labels, classes


def _image_files(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _read_image(path):
    Image = _pillow()
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"--data: cannot read image {path}: {' '.join(str(exc).split())}") from None


def _image_shape(img):
    gray = img.mode in ("1", "L", "I", "I;16", "F")
    return (img.height, img.width, 1 if gray else 3)


def _read_images(files, shape):
    """uint8 N,H,W,C at `shape` (default: the first image's size; gray stays 1 channel)."""
    Image = _pillow()
    if shape is None:
        shape = _image_shape(_read_image(files[0]))
    h, w, c = shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    x = np.empty((len(files), h, w, c), np.uint8)
    for i, path in enumerate(files):
        img = _read_image(path)
        if img.mode != mode:
            img = img.convert(mode)
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        x[i] = np.asarray(img).reshape(h, w, c)
    return x


def _load_segmentation_folder(root, shape):
    """images/NAME.* with masks/NAME.* (class index per pixel, e.g. a palette or gray PNG)."""
    images = _image_files(os.path.join(root, "images"))
    masks = {os.path.splitext(f)[0]: f for f in _image_files(os.path.join(root, "masks"))}
    missing = [f for f in images if os.path.splitext(f)[0] not in masks]
    if not images:
        raise UserError(f"--data {root}: images/ holds no images")
    if missing:
        raise UserError(f"--data {root}: {len(missing)} image(s) without a mask in masks/ (e.g. {missing[0]})")
    x = _read_images([os.path.join(root, "images", f) for f in images], shape)
    y = np.empty(x.shape[:3], np.int64)
    for i, f in enumerate(images):
        mask = _read_image(os.path.join(root, "masks", masks[os.path.splitext(f)[0]]))
        if mask.mode not in ("L", "P", "I", "1"):
            raise UserError(f"--data {root}: mask {masks[os.path.splitext(f)[0]]} must hold one class index "
                            f"per pixel (a gray or palette image), not mode {mask.mode}")
        m = np.asarray(mask)
        if m.shape != x.shape[1:3]:
            m = _shape_masks(m[None], x.shape[1:3])[0]
        y[i] = m
    return x, y, None


def _load_npz(path):
    if not os.path.isfile(path):
        raise UserError(f"--data {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "x" not in keys:
                raise UserError(f"--data {path}: a .npz needs an array 'x' (images) and, for labels, 'y'; "
                                f"found {sorted(keys) or 'none'}")
            x = archive["x"]
            y = archive["y"] if "y" in keys else None
            names = [str(n) for n in archive["class_names"]] if "class_names" in keys else None
    except UserError:
        raise
    except Exception as exc:   # zipfile/pickle/format errors from a file that is not a valid .npz
        raise UserError(f"--data {path}: not a readable .npz ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None
    if x.ndim not in (3, 4):
        raise UserError(f"--data {path}: 'x' must be N,H,W or N,H,W,C images, got shape {x.shape}")
    if x.ndim == 4 and x.shape[3] not in (1, 3, 4):
        raise UserError(f"--data {path}: 'x' has {x.shape[3]} channels; expected 1, 3 or 4 (NHWC)")
    if y is None:
        return x, None, names
    y = np.asarray(y)
    if y.ndim == 3 or (y.ndim == 4 and y.shape[3] == 1):     # segmentation masks
        y = y.reshape(y.shape[:3])
        if y.shape[1:3] != x.shape[1:3]:
            raise UserError(f"--data {path}: masks are {y.shape[1]}x{y.shape[2]}, images {x.shape[1]}x{x.shape[2]}")
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:                    # one-hot
        y = y.argmax(axis=1)
    if y.ndim not in (1, 3):
        raise UserError(f"--data {path}: 'y' must be N labels, N one-hot rows or N,H,W masks, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise UserError(f"--data {path}: labels in 'y' must be integers, got dtype {y.dtype}")
    if names is not None and len(y) and y.max() >= len(names):
        raise UserError(f"--data {path}: label {int(y.max())} but only {len(names)} class_names")
    return x, y.astype(np.int64), names


def _load_tfds(src, limit, offline=False):
    name, options = _parse_options(src[len("tfds:"):], {"split": None})
    if not name:
        raise UserError("--data tfds:NAME needs a dataset name, e.g. tfds:mnist")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f"--data {src} needs the tensorflow-datasets package, which is not installed "
                        "(pip install tensorflow-datasets; or use an image folder or a .npz)") from None
    from optkit import keras_io

    keras_io.tf()   # quiet TF's logs before tfds imports it
    try:
        builder = tfds.builder(name)
        splits = list(builder.info.splits.keys())
    except Exception as exc:
        raise UserError(f"--data {src}: unknown or unreadable tfds dataset ({' '.join(str(exc).split())[:200]})") from None
    split = options["split"] or ("+".join(s for s in ("train", "validation", "test") if s in splits) or splits[0])
    if limit is not None and "+" not in split and "[" not in split:
        split = f"{split}[:{int(limit)}]"
    try:
        x, y = tfds.as_numpy(tfds.load(name, split=split, as_supervised=True, batch_size=-1,
                                       download=not offline))
    except Exception as exc:
        why = ("it is not in the local tfds cache and offline mode forbids downloading" if offline else
               "it is neither in the local tfds cache nor downloadable from here")
        raise UserError(f"--data {src}: split '{split}': {why} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]})") from None
    label = builder.info.features["label"] if "label" in builder.info.features else None
    names = list(label.names) if label is not None and hasattr(label, "names") else None
    if x.ndim == 4 and x.shape[3] not in (1, 3, 4):
        raise UserError(f"--data {src}: images with {x.shape[3]} channels are not supported")
    return np.asarray(x), np.asarray(y).astype(np.int64), names


# keras.datasets: the file (or folder) each loader leaves in the Keras cache, and class names.
KERAS_SETS = {
    "mnist": (("mnist.npz",), [str(i) for i in range(10)]),
    "fashion_mnist": ((os.path.join("fashion-mnist", "train-labels-idx1-ubyte.gz"),),
                      ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                       "bag", "ankle_boot"]),
    "cifar10": ((os.path.join("cifar-10-batches-py-target", "cifar-10-batches-py"), "cifar-10-batches-py"),
                ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]),
    "cifar100": ((os.path.join("cifar-100-python-target", "cifar-100-python"), "cifar-100-python"), None),
}


def keras_cache_dir() -> str:
    """Where keras.datasets keeps its files: $KERAS_HOME/datasets, else ~/.keras/datasets."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets")


def _load_keras(src, offline):
    """keras:NAME from the Keras cache (read with Keras' own readers), else keras.datasets'
    load_data(), which downloads (not when offline). Train and test sets are pooled; optkit
    splits them like any other source."""
    name = src[len("keras:"):].strip().lower().replace("-", "_")
    if name not in KERAS_SETS:
        raise UserError(f"--data {src}: unknown Keras dataset (available: {', '.join('keras:' + k for k in KERAS_SETS)})")
    candidates, names = KERAS_SETS[name]
    cache = keras_cache_dir()
    found = next((os.path.join(cache, c) for c in candidates if os.path.exists(os.path.join(cache, c))), None)
    from optkit import keras_io

    try:
        if found is not None:
            (x1, y1), (x2, y2) = _read_keras_cache(name, found)
        elif offline:
            raise UserError(f"--data {src}: not in the Keras cache ({os.path.join(cache, candidates[0])}) and "
                            "offline mode forbids downloading")
        else:
            datasets = keras_io.keras3().datasets
            with _quiet_download():
                (x1, y1), (x2, y2) = getattr(datasets, name).load_data()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--data {src}: could not load it ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None
    x = np.concatenate([x1, x2])
    y = np.concatenate([np.asarray(y1).reshape(-1), np.asarray(y2).reshape(-1)]).astype(np.int64)
    return x, y, names


def _read_keras_cache(name, path):
    import gzip

    if name == "mnist":
        with np.load(path, allow_pickle=False) as f:
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    if name == "fashion_mnist":
        folder = os.path.dirname(path)
        arrays = []
        for stem in ("train", "t10k"):
            with gzip.open(os.path.join(folder, f"{stem}-labels-idx1-ubyte.gz"), "rb") as fh:
                labels = np.frombuffer(fh.read(), np.uint8, offset=8)
            with gzip.open(os.path.join(folder, f"{stem}-images-idx3-ubyte.gz"), "rb") as fh:
                images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(len(labels), 28, 28)
            arrays.append((images, labels))
        return tuple(arrays)
    from optkit import keras_io

    load_batch = keras_io.cifar_load_batch()   # Keras' own CIFAR reader (a restricted unpickler)

    if name == "cifar10":
        parts = [load_batch(os.path.join(path, f"data_batch_{i}")) for i in range(1, 6)
                 if os.path.exists(os.path.join(path, f"data_batch_{i}"))]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([np.asarray(p[1]) for p in parts]))
        test = load_batch(os.path.join(path, "test_batch"))
    else:
        train = load_batch(os.path.join(path, "train"), label_key="fine_labels")
        test = load_batch(os.path.join(path, "test"), label_key="fine_labels")
    to_nhwc = lambda a: np.asarray(a).transpose(0, 2, 3, 1)
    return (to_nhwc(train[0]), train[1]), (to_nhwc(test[0]), test[1])


class _quiet_download:
    """Keras prints download progress on stdout, which is for --json."""

    def __enter__(self):
        import contextlib
        import io

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _parse_options(text, defaults):
    """'name?k=v&k2=v2' -> (name, {k: v}); keys must be in `defaults`."""
    name, _, query = text.partition("?")
    options = dict(defaults)
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in defaults:
            raise UserError(f"unknown option '{key}' in '{text}' (options: {', '.join(defaults)})")
        options[key] = value
    return name, options


# ------------------------------------------------------------------------------------ synthetic


def _load_synthetic(src, shape, num_classes, seed, limit):
    name, options = _parse_options(src[len("synthetic:"):], SYNTHETIC_DEFAULTS)
    if name != "shapes":
        raise UserError(f"unknown synthetic dataset '{name}' (available: synthetic:shapes)")
    explicit = {k for k in options if options[k] is not SYNTHETIC_DEFAULTS[k]}
    for key in ("n", "size", "classes", "seed"):
        if options[key] is not None:
            try:
                options[key] = int(options[key])
            except ValueError:
                raise UserError(f"{src}: option '{key}' expects an integer, got '{options[key]}'") from None
    n = options["n"] if "n" in explicit or limit is None else limit
    if "n" in explicit and limit is not None:
        n = min(n, limit)
    if "classes" in explicit:
        classes = options["classes"]
    else:
        classes = min(num_classes, len(SHAPE_CLASSES)) if num_classes else len(SHAPE_CLASSES)
    if not 2 <= classes <= len(SHAPE_CLASSES):
        raise UserError(f"{src}: classes must be between 2 and {len(SHAPE_CLASSES)}, got {classes}")
    if n < 1:
        raise UserError(f"{src}: n must be >= 1")
    if shape is not None and "size" not in explicit:
        h, w = shape[0], shape[1]
    else:
        h = w = options["size"]
    if min(h, w) < 8:
        raise UserError(f"{src}: images must be at least 8x8 to draw shapes on, got {h}x{w}")
    if "n" not in explicit and limit is None:
        # The default 3,000 is for small inputs; at ImageNet sizes it would be 1.8 GB of float32.
        n = min(n, max(SYNTHETIC_MIN_DEFAULT_N, int(SYNTHETIC_MAX_DEFAULT_BYTES // (h * w * 3 * 4))))
    draw_seed = options["seed"] if options["seed"] is not None else seed
    x, y = synthetic_shapes(n, (h, w), classes=classes, seed=draw_seed)
    details = {"generator": "shapes", "n": n, "size": [h, w], "classes": classes, "seed": draw_seed}
    return x, y, list(SHAPE_CLASSES[:classes]), details


def synthetic_shapes(n: int, size=(32, 32), classes: int = 10, seed: int = 0,
                     chunk_pixels: int = 1 << 20) -> Tuple[np.ndarray, np.ndarray]:
    """`n` RGB images (float32 [0, 1], N,H,W,3) of one shape each, and their labels (int64).

    Classes, in order: circle, square, triangle, star, cross, ring, ellipse, hexagon, arrow,
    heart (the first `classes` are used, balanced). Each image varies in shape and background
    colour (the shape brighter, with a luminance gap of at least 0.35 so grayscale copies stay
    learnable), position, scale (radius 30-45% of the side), rotation, background gradient,
    Gaussian noise and 0-2 distractor line segments, one sometimes drawn across the shape. At
    32x32, circle/hexagon/ring/heart and star/cross differ by a few pixels, so small CNNs learn it
    well above chance in a few epochs but not perfectly (see tests/test_data.py).
    Deterministic for a given seed, size and n; drawn with numpy in chunks (no Python per pixel).
    """
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    out = np.empty((n, h, w, 3), np.float32)
    # Images per chunk bounded by pixels, so temporaries stay ~12 MB per array at any image size.
    chunk = max(1, chunk_pixels // (h * w))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = _draw_chunk(rng, labels[start:stop], h, w)
    return out, labels


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Difficulty knobs (tuned so a small CNN learns the task in a few CPU epochs, not perfectly).
_MIN_CONTRAST = 0.35          # luminance gap between shape and background base colour
_RADIUS = (0.30, 0.45)        # shape radius as a fraction of the image side
_NOISE = (0.01, 0.08)         # per-image Gaussian noise sigma range
_MAX_LINES = 2                # distractor segments behind the shape
_OCCLUDE = 0.15               # chance of a segment across the shape
_GRADIENT = 0.35              # background ramp amplitude
_BRIGHT_SHAPES = 1.0          # fraction of images whose shape is brighter than the background


def _draw_chunk(rng, labels, h, w):
    m = len(labels)
    side = float(min(h, w))
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5,
                         indexing="ij")

    # Colours: a background base and a shape colour with a luminance gap between them (so
    # grayscale copies stay learnable); mostly a bright shape on a darker ground.
    base = rng.uniform(0, 1, (m, 3)).astype(np.float32)
    fg = rng.uniform(0, 1, (m, 3)).astype(np.float32)
    for _ in range(20):
        weak = np.abs((fg - base) @ _LUMA) < _MIN_CONTRAST
        if not weak.any():
            break
        fg[weak] = rng.uniform(0, 1, (int(weak.sum()), 3))
    swap = (((fg - base) @ _LUMA) < 0) & (rng.uniform(0, 1, m) < _BRIGHT_SHAPES)
    fg[swap], base[swap] = base[swap], fg[swap].copy()

    # Background: the base colour, a linear gradient in a random direction.
    angle = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
    slope = rng.uniform(-_GRADIENT, _GRADIENT, (m, 3)).astype(np.float32)
    ramp = ((xx[None] - w / 2) * np.cos(angle)[:, None, None] + (yy[None] - h / 2) * np.sin(angle)[:, None, None]) / side
    img = base[:, None, None, :] + ramp[..., None] * slope[:, None, None, :]

    # Distractors behind the shape: thin segments in random colours.
    n_lines = rng.integers(0, _MAX_LINES + 1, m)
    for k in range(_MAX_LINES):
        img = _draw_lines(rng, img, xx, yy, n_lines > k, h, w)

    # The shape: pose (position, scale, rotation, ellipse aspect), anti-aliased edge.
    radius = rng.uniform(*_RADIUS, m).astype(np.float32) * side
    cx = rng.uniform(0, 1, m).astype(np.float32) * (w - 1.6 * radius) + 0.8 * radius
    cy = rng.uniform(0, 1, m).astype(np.float32) * (h - 1.6 * radius) + 0.8 * radius
    theta = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
    aspect = rng.uniform(0.45, 0.7, m).astype(np.float32)
    dx = (xx[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (yy[None] - cy[:, None, None]) / radius[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    dist = np.empty_like(u)
    for label in np.unique(labels):
        idx = labels == label
        dist[idx] = _SDF[SHAPE_CLASSES[label]](u[idx], v[idx], aspect[idx][:, None, None])
    alpha = np.clip(0.5 - dist * radius[:, None, None], 0, 1)[..., None]   # ~1 px soft edge
    img = img * (1 - alpha) + fg[:, None, None, :] * alpha

    # One in four images gets a segment across the shape (partial occlusion).
    img = _draw_lines(rng, img, xx, yy, rng.uniform(0, 1, m) < _OCCLUDE, h, w)
    sigma = rng.uniform(*_NOISE, m).astype(np.float32)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma[:, None, None, None]
    return np.clip(img, 0, 1)


def _draw_lines(rng, img, xx, yy, active, h, w):
    """Draw one segment on the images where `active`; random draws for all, so results don't
    depend on which images are active (determinism per seed)."""
    m = img.shape[0]
    p0 = rng.uniform(0, 1, (m, 2)).astype(np.float32) * np.float32([w, h])
    p1 = rng.uniform(0, 1, (m, 2)).astype(np.float32) * np.float32([w, h])
    colour = rng.uniform(0, 1, (m, 3)).astype(np.float32)
    width = rng.uniform(0.6, 1.4, m).astype(np.float32)
    idx = np.flatnonzero(active)
    if not len(idx):
        return img
    p0, p1, colour, width = p0[idx], p1[idx], colour[idx], width[idx]
    d = p1 - p0
    length2 = np.maximum((d ** 2).sum(1), 1e-6)
    px, py = xx[None] - p0[:, 0, None, None], yy[None] - p0[:, 1, None, None]
    t = np.clip((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / length2[:, None, None], 0, 1)
    dist = np.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None])
    alpha = np.clip(width[:, None, None] / 2 + 0.5 - dist, 0, 1)[..., None]
    img[idx] = img[idx] * (1 - alpha) + colour[:, None, None, :] * alpha
    return img


# Signed distances (negative inside) in shape units: each shape fits a circle of radius ~1.
def _polygon(u, v, sides, inradius, phase):
    angles = phase + 2 * np.pi * np.arange(sides) / sides
    return np.max([u * np.cos(a) + v * np.sin(a) for a in angles], axis=0) - inradius


def _circle(u, v, a):
    return np.hypot(u, v) - 0.9


def _square(u, v, a):
    return np.maximum(np.abs(u), np.abs(v)) - 0.75


def _triangle(u, v, a):
    return _polygon(u, v, 3, 0.5, np.pi / 2)


def _hexagon(u, v, a):
    return _polygon(u, v, 6, 0.85, 0.0)


def _star(u, v, a):
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    frac = np.mod(phi * 5 / (2 * np.pi), 1.0)
    edge = 0.42 + 0.58 * np.abs(frac * 2 - 1)   # 1.0 at the five tips, 0.42 between them
    return (rho - edge) * 0.6


def _cross(u, v, a):
    bar = lambda p, q: np.maximum(np.abs(p) - 0.95, np.abs(q) - 0.28)
    return np.minimum(bar(u, v), bar(v, u))


def _ring(u, v, a):
    return np.abs(np.hypot(u, v) - 0.72) - 0.22


def _ellipse(u, v, a):
    return (np.hypot(u, v / a) - 0.95) * a


def _arrow(u, v, a):
    shaft = np.maximum(np.abs(v) - 0.15, np.abs(u + 0.3) - 0.6)
    head = np.maximum(0.15 - u, (np.abs(v) + 0.65 * u - 0.6) / np.hypot(1, 0.65))
    return np.minimum(shaft, head)


def _heart(u, v, a):
    # A diamond with two discs on its upper edges; +v points down the image.
    diamond = (np.abs(u) + np.abs(v - 0.1) - 0.85) / np.sqrt(2)
    lobes = np.minimum(np.hypot(u + 0.42, v + 0.33), np.hypot(u - 0.42, v + 0.33)) - 0.6
    return np.minimum(diamond, lobes)


_SDF = {"circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "cross": _cross,
        "ring": _ring, "ellipse": _ellipse, "hexagon": _hexagon, "arrow": _arrow, "heart": _heart}
