"""The course's architectures, built offline with Keras 3 (`weights=None`; nothing is downloaded).

This module holds only the registry metadata, so `optkit zoo list` and plan validation never
import TensorFlow. Each entry names its builder as "module:function"; the builder module is
imported (and with it Keras) only when a model is built.

Builders take `(input_shape, num_classes)` already validated here and return a Keras 3 model.
"""
from __future__ import annotations

import difflib
import importlib
import operator
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from optkit.errors import UserError

CLASSIFICATION, SEGMENTATION = "classification", "segmentation"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    lesson: str                 # where the course uses it
    task: str                   # "classification" (N,classes) or "segmentation" (N,H,W,classes)
    default_input_shape: Tuple[int, int, int]
    description: str
    default_classes: int = 10
    # Smallest H and W the architecture accepts (strides/pools would reach zero below it).
    min_size: int = 32
    # H and W must be multiples of this (encoder-decoders concatenate skips at matching sizes).
    size_multiple: int = 1
    builder: str = ""           # "module:function" inside optkit.zoo

    def to_json(self) -> dict:
        return {"name": self.name, "lesson": self.lesson, "task": self.task,
                "default_input_shape": list(self.default_input_shape)}


_APPS = "applications"
_E = ZooEntry
_ENTRIES: List[ZooEntry] = [
    _E("lesson14", "Lesson 14", CLASSIFICATION, (32, 32, 3),
       "The 'Naive' CNN of Lesson 14's optimization table: a Conv-BN-ReLU stack, Flatten, Dense "
       "(7,481,673 parameters at its default input, the course's 7,476,742 within 0.07%); the "
       "starting point of the optimize ladder.", default_classes=10, min_size=8, builder="classic:lesson14"),
    _E("custom_cnn", "Lesson 3", CLASSIFICATION, (64, 64, 3),
       "Lesson 3's first custom CNN: three Conv-BN-ReLU blocks with max pooling and dropout, "
       "Flatten and a Dense head.", min_size=8, builder="classic:custom_cnn"),
    _E("lenet5", "Lesson 7", CLASSIFICATION, (32, 32, 1),
       "LeNet-5 (LeCun et al., 1998): two tanh conv/average-pool stages and three Dense layers.",
       min_size=16, builder="classic:lenet5"),
    _E("alexnet", "Lesson 7", CLASSIFICATION, (227, 227, 3),
       "AlexNet (Krizhevsky et al., 2012), single-tower with BatchNormalization in place of LRN.",
       default_classes=1000, min_size=67, builder="classic:alexnet"),
    _E("vgg16", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "VGG16 from keras.applications (weights=None).", default_classes=1000, builder=_APPS + ":vgg16"),
    _E("resnet50", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "ResNet50 from keras.applications (weights=None).", default_classes=1000,
       builder=_APPS + ":resnet50"),
    _E("resnet_cifar", "Lesson 7", CLASSIFICATION, (32, 32, 3),
       "ResNet-20 for CIFAR (He et al., 2016): three stages of 16/32/64 filters, global pooling.",
       min_size=4, builder="classic:resnet_cifar"),
    _E("inception_v3", "Lesson 7", CLASSIFICATION, (299, 299, 3),
       "Inception V3 from keras.applications (weights=None).", default_classes=1000, min_size=75,
       builder=_APPS + ":inception_v3"),
    _E("xception", "Lesson 7", CLASSIFICATION, (299, 299, 3),
       "Xception from keras.applications (weights=None).", default_classes=1000, min_size=71,
       builder=_APPS + ":xception"),
    _E("densenet121", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "DenseNet121 from keras.applications (weights=None).", default_classes=1000,
       builder=_APPS + ":densenet121"),
    _E("mobilenet_v2", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "MobileNetV2 from keras.applications (weights=None).", default_classes=1000,
       builder=_APPS + ":mobilenet_v2"),
    _E("mobilenet_v3_small", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "MobileNetV3-Small from keras.applications (weights=None, no built-in rescaling).",
       default_classes=1000, builder=_APPS + ":mobilenet_v3_small"),
    _E("mobilenet_v3_large", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "MobileNetV3-Large from keras.applications (weights=None, no built-in rescaling).",
       default_classes=1000, builder=_APPS + ":mobilenet_v3_large"),
    _E("nasnet_mobile", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "NASNetMobile from keras.applications (weights=None).", default_classes=1000,
       builder=_APPS + ":nasnet_mobile"),
    _E("efficientnet_b0", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "EfficientNetB0 from keras.applications (weights=None).", default_classes=1000,
       builder=_APPS + ":efficientnet_b0"),
    _E("convnext_tiny", "Lesson 7", CLASSIFICATION, (224, 224, 3),
       "ConvNeXt-Tiny from keras.applications (weights=None, no built-in normalization; uses "
       "the LayerScale layer).", default_classes=1000, builder=_APPS + ":convnext_tiny"),
    _E("unet", "Lesson 12", SEGMENTATION, (128, 128, 3),
       "U-Net (Ronneberger et al., 2015), four levels from 16 to 128 filters, per-pixel softmax.",
       default_classes=3, min_size=16, size_multiple=16, builder="segmentation:unet"),
    _E("deeplabv3_plus", "Lesson 12", SEGMENTATION, (256, 256, 3),
       "DeepLabV3+ (Chen et al., 2018) as in Lesson 12 but on a MobileNetV2 backbone "
       "(weights=None; lighter than the lesson's ResNet50): ASPP at output stride 16, decoder "
       "with a stride-4 skip, per-pixel softmax.",
       default_classes=21, min_size=32, size_multiple=16, builder="segmentation:deeplabv3_plus"),
]
_BY_NAME = {e.name: e for e in _ENTRIES}


def list_models() -> List[ZooEntry]:
    """Every zoo architecture, in the order the course meets them (no TensorFlow imported)."""
    return list(_ENTRIES)


def get(name: str) -> ZooEntry:
    """The entry called `name`, or a UserError with a did-you-mean."""
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(name, _BY_NAME, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(_BY_NAME)})"
        raise UserError(f"unknown zoo model '{name}'{hint}") from None


def resolve_input_shape(entry: ZooEntry, input_shape: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    """`input_shape` (or the entry's default) checked against what the architecture accepts."""
    if input_shape is None:
        return tuple(entry.default_input_shape)
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"input shape must be H,W,C integers, got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input shape must be three positive integers H,W,C, got {shape}")
    h, w, c = shape
    if min(h, w) < entry.min_size:
        raise UserError(f"{entry.name} needs inputs of at least {entry.min_size}x{entry.min_size} "
                        f"(got {h}x{w})")
    if entry.size_multiple > 1 and (h % entry.size_multiple or w % entry.size_multiple):
        raise UserError(f"{entry.name} needs height and width divisible by {entry.size_multiple} "
                        f"(got {h}x{w})")
    return shape


def build(name: str, input_shape: Optional[Sequence[int]] = None, num_classes: Optional[int] = None,
          seed: int = 0):
    """A fresh Keras 3 model of architecture `name`, randomly initialised from `seed`.

    `input_shape` is (H, W, C) without the batch dimension (default: the entry's);
    `num_classes` defaults to the entry's. Raises UserError for an unknown name or a shape or
    class count the architecture cannot take.
    """
    entry = get(name)
    shape = resolve_input_shape(entry, input_shape)
    classes = entry.default_classes if num_classes is None else num_classes
    try:
        classes = operator.index(classes)   # ints and numpy ints; not floats or strings
    except TypeError:
        classes = 0
    if classes < 1:
        raise UserError(f"number of classes must be a positive integer, got {num_classes!r}")
    module_name, function = entry.builder.split(":")
    builder = getattr(importlib.import_module(f"optkit.zoo.{module_name}"), function)

    from optkit import keras_io

    keras = keras_io.keras3()
    # Seeds Python, NumPy and the backend, so the same seed gives the same initial weights.
    keras.utils.set_random_seed(int(seed))
    try:
        return builder(keras, shape, classes)
    except ValueError as exc:
        # keras.applications and layer shape inference reject some shapes our checks let through
        # (e.g. a feature map that shrinks to zero); that is the user's shape, not a bug.
        text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())   # keras bolds with ANSI codes
        raise UserError(f"cannot build {name} at input {shape} with {classes} classes: {text[:300]}") from None
