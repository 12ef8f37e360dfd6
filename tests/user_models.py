"""Small models trained the way real users train them, and their data as users keep it.

Real third-party models do not all take [0, 1] inputs (shared/STACK.md, "Real models"): older
Keras code trains on raw 0-255 pixels with no scaling layer, Keras applications use
`preprocess_input` ("tf" = [-1, 1], "torch" = ImageNet mean/std, "caffe" = BGR minus the mean),
newer code puts a Rescaling layer inside the model. Each generator here trains such a model for a
few seconds on seeded synthetic data to clearly-above-chance accuracy and saves it the way users
have it (legacy tf_keras `.h5` or Keras 3 `.keras`), with its data as pixels 0-255 (`.npz` and
image folders; masks for segmentation).

Use `get(name)` (or the `user_model` helper fixture below): models are trained once per test
process and kept in one temporary folder that is removed at exit. `NAMES` lists what exists.

    from tests.user_models import get
    m = get("raw")                 # UserModel(path, contract, task, npz, x_test, y_test, float_metric, ...)
    m.model_input(m.x_test)        # pixels -> what the model takes (its contract)

Deterministic for a given TensorFlow build (seeded data, seeded initialisers, one thread).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

CLASSES = 4           # circle, square, triangle, star: learnable at 24x24 in a few epochs
SIZE = 24
SEG_SIZE = 32
SEG_CLASSES = 3       # background, disc, square
N_TRAIN, N_TEST = 1200, 300
SEG_TRAIN, SEG_TEST = 360, 80

# ImageNet statistics the Keras applications' "torch" and "caffe" modes use.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def to_model_space(pixels, contract: str) -> np.ndarray:
    """Pixels 0-255 -> the input a model trained under `contract` expects (the Keras
    applications' preprocess_input modes; `raw` keeps pixels, `unit` divides by 255)."""
    x = np.asarray(pixels, np.float32)
    if contract == "raw":
        return x
    if contract == "unit":
        return x / 255.0
    if contract == "tf":
        return x / 127.5 - 1.0
    if contract == "torch":
        return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    if contract == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    raise ValueError(f"unknown contract {contract!r}")


@dataclass
class UserModel:
    name: str
    path: str              # the model file as a user has it (.h5 legacy tf_keras or .keras Keras 3)
    flavour: str           # "tf_keras" | "keras3"
    contract: str          # what it expects: raw | unit | tf | torch | caffe (Rescaling inside -> raw)
    task: str              # "classification" | "segmentation"
    npz: str               # all labelled data as pixels 0-255 uint8 (x, y[, class_names])
    test_npz: str          # held-back images only (pixels 0-255) with labels
    x_test: np.ndarray     # held-back pixels 0-255 (uint8), never seen in training
    y_test: np.ndarray     # labels (N,) or masks (N, H, W)
    float_metric: float    # accuracy (classification) or mIoU (segmentation) on x_test under its contract
    model_contract: str = ""   # the contract the model applies itself ("raw" for a Rescaling layer)
    extra: Dict[str, str] = field(default_factory=dict)

    def model_input(self, pixels) -> np.ndarray:
        """What to feed the Keras model (and a float artifact): pixels under its contract."""
        return to_model_space(pixels, self.contract)


# ------------------------------------------------------------------------------------ data


def shapes_pixels(n: int, seed: int, size: int = SIZE, classes: int = CLASSES):
    """Synthetic shapes as users hold images: uint8 0-255."""
    from optkit.data import synthetic_shapes

    x, y = synthetic_shapes(n, (size, size), classes=classes, seed=seed)
    return np.round(x * 255).astype(np.uint8), y


def segmentation_pixels(n: int, seed: int, size: int = SEG_SIZE):
    """Images (uint8 0-255, N,H,W,3) with one to three discs and squares on a noisy gradient, and
    masks (uint8 N,H,W: 0 background, 1 disc, 2 square). Colours are random with a luminance gap
    from the background, so the classes differ by shape, not by colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        base = rng.uniform(0.0, 0.45, 3)
        ramp = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / size * 0.15
        img = base[None, None, :] + ramp[..., None]
        for _ in range(rng.integers(1, 4)):
            cls = int(rng.integers(1, SEG_CLASSES))
            r = rng.uniform(0.12, 0.22) * size
            cx, cy = rng.uniform(r, size - r, 2)
            if cls == 1:
                inside = np.hypot(xx - cx, yy - cy) <= r
            else:
                inside = np.maximum(np.abs(xx - cx), np.abs(yy - cy)) <= r * 0.85
            img[inside] = rng.uniform(0.55, 1.0, 3)
            masks[i][inside] = cls
        img += rng.normal(0, 0.03, img.shape)
        images[i] = np.clip(img, 0, 1)
    return np.round(images * 255).astype(np.uint8), masks


def write_image_folder(root, x, y, class_names=None):
    """One sub-folder of PNGs per class (what `--data DIR` reads)."""
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y)):
        name = class_names[label] if class_names else f"class_{int(label)}"
        os.makedirs(os.path.join(root, name), exist_ok=True)
        Image.fromarray(np.asarray(img, np.uint8)).save(os.path.join(root, name, f"{i:05d}.png"))
    return str(root)


def write_segmentation_folder(root, x, masks=None):
    """`images/` (and `masks/`, same file names, PNG class indices) as segmentation sets ship."""
    from PIL import Image

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    if masks is not None:
        os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray(np.asarray(img, np.uint8)).save(os.path.join(root, "images", f"{i:05d}.png"))
        if masks is not None:
            Image.fromarray(np.asarray(masks[i], np.uint8)).save(os.path.join(root, "masks", f"{i:05d}.png"))
    return str(root)


def write_unlabelled_folder(root, x):
    """A folder of images with no class sub-folders (calibration data without labels)."""
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray(np.asarray(img, np.uint8)).save(os.path.join(root, f"{i:05d}.png"))
    return str(root)


# ------------------------------------------------------------------------------------ models


def _classifier(k, input_shape, rescale=False, batchnorm=True):
    layers = [k.layers.Input(input_shape)]
    if rescale:
        layers.append(k.layers.Rescaling(1.0 / 255, name="rescale"))
    layers += [k.layers.Conv2D(16, 3, padding="same", name="conv1")]
    if batchnorm:
        layers.append(k.layers.BatchNormalization(momentum=0.9, name="bn1"))
    layers += [k.layers.Activation("relu"), k.layers.MaxPooling2D(),
               k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
               k.layers.MaxPooling2D(),
               k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
               k.layers.GlobalAveragePooling2D(),
               k.layers.Dense(CLASSES, activation="softmax", name="head")]
    x = layers[0]
    for layer in layers[1:]:
        x = layer(x)
    return k.Model(layers[0], x)


def _unet(k):
    inp = k.layers.Input((SEG_SIZE, SEG_SIZE, 3))
    c1 = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="enc1")(inp)
    c1 = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="enc1b")(c1)
    p1 = k.layers.MaxPooling2D()(c1)
    c2 = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="enc2")(p1)
    c2 = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="enc2b")(c2)
    u1 = k.layers.UpSampling2D()(c2)
    m = k.layers.Concatenate()([u1, c1])
    d1 = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="dec1")(m)
    out = k.layers.Conv2D(SEG_CLASSES, 1, activation="softmax", name="mask")(d1)
    return k.Model(inp, out)


# name -> (flavour, contract the data is fed in, task, build options)
SPECS = {
    "raw": ("tf_keras", "raw", "classification", {}),              # old Keras code: raw pixels, .h5
    "tf": ("tf_keras", "tf", "classification", {}),                # preprocess_input "tf": [-1, 1]
    "rescaling": ("keras3", "raw", "classification", {"rescale": True}),  # Rescaling(1/255) inside
    "unit": ("keras3", "unit", "classification", {}),              # x / 255
    "torch": ("keras3", "torch", "classification", {}),            # ImageNet mean/std
    "raw_keras3": ("keras3", "raw", "classification", {}),         # raw pixels, Keras 3 .keras
    "unet": ("keras3", "unit", "segmentation", {}),                # U-Net, masks N x H x W
}
NAMES = tuple(SPECS)
EPOCHS = {"classification": 8, "segmentation": 10}

_cache: Dict[str, UserModel] = {}
_root: Optional[str] = None


def _workdir():
    global _root
    if _root is None:
        _root = tempfile.mkdtemp(prefix="optkit-user-models-")
        atexit.register(shutil.rmtree, _root, True)
    return _root


def _miou(pred, masks, classes):
    ious = []
    for c in range(classes):
        inter = np.sum((pred == c) & (masks == c))
        union = np.sum((pred == c) | (masks == c))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def get(name: str) -> UserModel:
    """Train (once per process) and save the user model `name` (one of NAMES)."""
    if name in _cache:
        return _cache[name]
    if name not in SPECS:
        raise KeyError(f"no user model {name!r}; known: {', '.join(NAMES)}")
    from optkit import keras_io

    flavour, contract, task, options = SPECS[name]
    tf = keras_io.tf()
    k = keras_io.keras_module(flavour)
    tf.random.set_seed(0)
    np.random.seed(0)
    k.utils.set_random_seed(0)
    folder = os.path.join(_workdir(), name)
    os.makedirs(folder, exist_ok=True)

    if task == "segmentation":
        x, y = segmentation_pixels(SEG_TRAIN + SEG_TEST, seed=11)
        model = _unet(k)
        loss = "sparse_categorical_crossentropy"
    else:
        x, y = shapes_pixels(N_TRAIN + N_TEST, seed=7)
        model = _classifier(k, (SIZE, SIZE, 3), **options)
        loss = "sparse_categorical_crossentropy"
    n_train = SEG_TRAIN if task == "segmentation" else N_TRAIN
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    fed = to_model_space(x_train, contract)
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    model.fit(fed, y_train.astype(np.int64), epochs=EPOCHS[task], batch_size=32, verbose=0)
    probs = np.asarray(keras_io.predict(model, to_model_space(x_test, contract)))
    if task == "segmentation":
        metric = _miou(probs.argmax(-1), y_test, SEG_CLASSES)
    else:
        metric = float(np.mean(probs.argmax(-1) == y_test))

    path = os.path.join(folder, f"{name}.h5" if flavour == "tf_keras" else f"{name}.keras")
    model.save(path)
    npz = os.path.join(folder, f"{name}_data.npz")
    test_npz = os.path.join(folder, f"{name}_test.npz")
    np.savez(npz, x=x, y=y)
    np.savez(test_npz, x=x_test, y=y_test)
    _cache[name] = UserModel(name=name, path=path, flavour=flavour, contract=contract, task=task,
                             npz=npz, test_npz=test_npz, x_test=x_test, y_test=y_test,
                             float_metric=metric, model_contract="raw" if options.get("rescale") else contract)
    return _cache[name]


def chance(name: str) -> float:
    """Chance level of the task (accuracy of always guessing one class)."""
    return 1.0 / (SEG_CLASSES if SPECS[name][2] == "segmentation" else CLASSES)


if __name__ == "__main__":   # python tests/user_models.py: train everything, print what came out
    import time

    for model_name in NAMES:
        start = time.perf_counter()
        m = get(model_name)
        print(f"{model_name:11s} {m.flavour:8s} {m.contract:6s} {m.task:14s} "
              f"metric {m.float_metric:.3f}  {time.perf_counter() - start:.1f} s  {m.path}")
