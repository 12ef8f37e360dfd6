"""keras.applications architectures, always `weights=None` (random init, nothing downloaded).

`include_top=True, classes=num_classes` keeps each application's own head; the input shape is
passed explicitly, which keras.applications accepts at any size >= its minimum when no
pretrained weights are requested. Where an application has a built-in preprocessing switch it
is turned off: optkit.data already feeds images scaled to [0, 1], and fewer layers make the
Keras 3 <-> tf_keras conversion simpler.
"""
from __future__ import annotations


def _app(keras, cls_name, input_shape, num_classes, name, **extra):
    cls = getattr(keras.applications, cls_name)
    model = cls(weights=None, include_top=True, input_shape=tuple(input_shape), classes=num_classes,
                classifier_activation="softmax", **extra)
    model.name = name  # zoo name, so inspect/reports say which zoo entry a file came from
    return model


def vgg16(keras, input_shape, num_classes):
    return _app(keras, "VGG16", input_shape, num_classes, "vgg16")


def resnet50(keras, input_shape, num_classes):
    return _app(keras, "ResNet50", input_shape, num_classes, "resnet50")


def inception_v3(keras, input_shape, num_classes):
    return _app(keras, "InceptionV3", input_shape, num_classes, "inception_v3")


def xception(keras, input_shape, num_classes):
    return _app(keras, "Xception", input_shape, num_classes, "xception")


def densenet121(keras, input_shape, num_classes):
    return _app(keras, "DenseNet121", input_shape, num_classes, "densenet121")


def mobilenet_v2(keras, input_shape, num_classes):
    return _app(keras, "MobileNetV2", input_shape, num_classes, "mobilenet_v2")


def mobilenet_v3_small(keras, input_shape, num_classes):
    return _app(keras, "MobileNetV3Small", input_shape, num_classes, "mobilenet_v3_small",
                include_preprocessing=False)


def mobilenet_v3_large(keras, input_shape, num_classes):
    return _app(keras, "MobileNetV3Large", input_shape, num_classes, "mobilenet_v3_large",
                include_preprocessing=False)


def nasnet_mobile(keras, input_shape, num_classes):
    return _app(keras, "NASNetMobile", input_shape, num_classes, "nasnet_mobile")


def efficientnet_b0(keras, input_shape, num_classes):
    return _app(keras, "EfficientNetB0", input_shape, num_classes, "efficientnet_b0")


def convnext_tiny(keras, input_shape, num_classes):
    return _app(keras, "ConvNeXtTiny", input_shape, num_classes, "convnext_tiny",
                include_preprocessing=False)
