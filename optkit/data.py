"""Labelled image data for `--data SRC`, split into train/validation/test and shaped for a model.

Sources:
- a directory with one sub-folder of images per class (class names = sorted folder names);
- a `.npz` with `x` (N,H,W[,C], uint8 0-255 or float) and `y` (N integer labels, or one-hot),
  optionally `class_names`;
- `tfds:NAME` (or `tfds:NAME?split=train`): a TensorFlow Datasets set already in the local tfds
  cache; nothing is downloaded (needs the tensorflow-datasets package);
- `synthetic:shapes[?n=3000&size=32&classes=10&seed=0]`: ten procedurally drawn shape classes
  (the embedded default, see `synthetic_shapes`), drawn at the model's input size unless
  `size` is given; without `n` or a limit, large images get fewer than 3,000 samples (~200 MB).

Every image comes back float32 in [0, 1], NHWC, resized to `input_shape[:2]` and converted to
`input_shape[2]` channels (gray <-> RGB); labels are int64. Pure numpy + Pillow: TensorFlow is
imported only for `tfds:`. Anything wrong with the source is a one-line UserError.
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
        return len(self.y_train) + len(self.y_val) + len(self.y_test)


def load_data(src: Optional[str] = None, *, input_shape: Optional[Sequence[int]] = None,
              num_classes: Optional[int] = None, seed: int = 0, limit: Optional[int] = None,
              val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION) -> Dataset:
    """Load `src` (default `synthetic:shapes`) as a shuffled, split Dataset.

    `input_shape` (H, W, C) is what the model takes (default: the source's own size; 3 channels
    unless the images are grayscale); H and W may be None for a model that takes any size.
    `num_classes` is the model's output count: a source with more classes (or labels out of
    range) is a UserError; fewer is allowed (the extra outputs are never the right answer).
    `limit` caps the number of samples before splitting; `seed` fixes the shuffle (and the
    synthetic drawing).
    """
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
        x, y, names = _load_tfds(src, limit)
    elif os.path.isdir(src):
        x, y, names = _load_folder(src, shape, seed, limit)
    elif src.lower().endswith(".npz") or os.path.isfile(src):
        x, y, names = _load_npz(src)
    else:
        raise UserError(f"--data {src}: no such file or directory (expected an image folder, a .npz, "
                        "tfds:NAME or synthetic:shapes)")

    if len(x) != len(y):
        raise UserError(f"--data {src}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise UserError(f"--data {src}: no samples")
    names = _check_classes(src, y, names, num_classes)
    order = np.random.default_rng(seed).permutation(len(x))
    if limit is not None:
        order = order[:limit]
    x, y = x[order], y[order]
    target = shape or _default_shape(x, wanted)
    x = _shape_images(x, target)
    return _split(x, y.astype(np.int64), names, target, src, val_fraction, test_fraction, details)


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
    if y.ndim != 1:
        raise UserError(f"--data {src}: labels must be one integer per sample, got shape {y.shape}")
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
    """uint8 0-255 -> /255; floats already in [0, 1] kept; floats in (1, 255] taken as 0-255."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"--data {src}: images must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.size and not np.isfinite(x).all():
        raise UserError(f"--data {src}: images contain NaN or infinite values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise UserError(f"--data {src}: pixel values must be in [0, 1] or [0, 255], found [{lo:g}, {hi:g}]")
    return x / 255.0 if hi > 1.0 else x


def _shape_images(x, shape):
    """float [0, 1] NHW/NHWC -> float32 NHWC at shape (H, W, C)."""
    if x.ndim == 3:
        x = x[..., None]
    h, w, c = shape
    if x.shape[1:3] != (h, w):
        x = _resize(x, h, w)
    return _convert_channels(x, c).astype(np.float32, copy=False)


def _pillow():
    """PIL.Image, or a UserError: Pillow comes with the `tf` extra, not with a runtime-only install."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("reading or resizing images needs Pillow (pip install pillow)") from None
    return Image


def _resize(x, h, w):
    """Bilinear resize, one channel at a time in Pillow's float mode (no 8-bit rounding)."""
    Image = _pillow()

    out = np.empty((x.shape[0], h, w, x.shape[3]), np.float32)
    for i in range(x.shape[0]):
        for ch in range(x.shape[3]):
            img = Image.fromarray(np.ascontiguousarray(x[i, :, :, ch], dtype=np.float32), mode="F")
            out[i, :, :, ch] = np.asarray(img.resize((w, h), Image.BILINEAR))
    return np.clip(out, 0.0, 1.0)


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
    train, val, test = stratified_split(y, n_val, n_test)
    return Dataset(x[train], y[train], x[val], y[val], x[test], y[test], class_names=list(names),
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
    return {"train": int(len(ds.y_train)), "val": int(len(ds.y_val)), "test": int(len(ds.y_test)),
            "per_class": {split: class_counts(getattr(ds, f"y_{split}"), ds.num_classes)
                          for split in ("train", "val", "test")},
            "stratified": True, "small": is_small(np.concatenate([ds.y_train, ds.y_val, ds.y_test]))}


def small_data_note(ds: "Dataset") -> Optional[str]:
    """One line when the data is too small to fine-tune and score reliably, else None."""
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
    Image = _pillow()
    from PIL import UnidentifiedImageError

    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise UserError(f"--data {root}: expected one sub-folder of images per class, found no sub-folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        images = sorted(f for f in os.listdir(folder)
                        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not images:
            raise UserError(f"--data {root}: class folder '{name}' has no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        files += [os.path.join(folder, f) for f in images]
        labels += [label] * len(images)

    def read(path):
        try:
            with Image.open(path) as img:
                img.load()
                return img.copy()
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UserError(f"--data: cannot read image {path}: {' '.join(str(exc).split())}") from None

    if shape is None:   # the first image of the first class, whatever `limit` keeps
        first = read(files[0])
        gray = first.mode in ("1", "L", "I", "I;16", "F")
        shape = (first.height, first.width, 1 if gray else 3)
    labels = np.asarray(labels, np.int64)
    if limit is not None and limit < len(files):
        # Read only the images that will be used: the same permutation load_data applies later.
        keep = np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])
        files, labels = [files[i] for i in keep], labels[keep]
    h, w, c = shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    x = np.empty((len(files), h, w, c), np.uint8)
    for i, path in enumerate(files):
        img = read(path)
        if img.mode != mode:
            img = img.convert(mode)
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        x[i] = np.asarray(img).reshape(h, w, c)
    return _to_unit_float(x), labels, classes


def _load_npz(path):
    if not os.path.isfile(path):
        raise UserError(f"--data {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"x", "y"} <= keys:
                raise UserError(f"--data {path}: a .npz needs arrays 'x' (images) and 'y' (labels); "
                                f"found {sorted(keys) or 'none'}")
            x, y = archive["x"], archive["y"]
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
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:                    # one-hot
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise UserError(f"--data {path}: 'y' must be N labels or N one-hot rows, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise UserError(f"--data {path}: labels in 'y' must be integers, got dtype {y.dtype}")
    if names is not None and len(y) and y.max() >= len(names):
        raise UserError(f"--data {path}: label {int(y.max())} but only {len(names)} class_names")
    return _to_unit_float(x, path), y.astype(np.int64), names


def _load_tfds(src, limit):
    name, options = _parse_options(src[len("tfds:"):], {"split": None})
    if not name:
        raise UserError("--data tfds:NAME needs a dataset name, e.g. tfds:mnist")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f"--data {src} needs the tensorflow-datasets package, which is not installed "
                        "(and nothing is downloaded at run time; use an image folder or a .npz)") from None
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
        x, y = tfds.as_numpy(tfds.load(name, split=split, as_supervised=True, batch_size=-1, download=False))
    except Exception as exc:
        raise UserError(f"--data {src}: split '{split}' is not in the local tfds cache and nothing is "
                        f"downloaded at run time; prepare it first with tfds ({type(exc).__name__})") from None
    label = builder.info.features["label"] if "label" in builder.info.features else None
    names = list(label.names) if label is not None and hasattr(label, "names") else None
    if x.ndim == 4 and x.shape[3] not in (1, 3, 4):
        raise UserError(f"--data {src}: images with {x.shape[3]} channels are not supported")
    return _to_unit_float(np.asarray(x), src), np.asarray(y).astype(np.int64), names


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
