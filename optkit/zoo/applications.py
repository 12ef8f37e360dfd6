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


def _builder(cls_name, name, **extra):
    """A zoo builder for one keras.applications class (the registry looks builders up by name)."""
    def build(keras, input_shape, num_classes):
        return _app(keras, cls_name, input_shape, num_classes, name, **extra)

    build.__name__ = name
    return build


vgg16 = _builder("VGG16", "vgg16")
resnet50 = _builder("ResNet50", "resnet50")
inception_v3 = _builder("InceptionV3", "inception_v3")
xception = _builder("Xception", "xception")
densenet121 = _builder("DenseNet121", "densenet121")
mobilenet_v2 = _builder("MobileNetV2", "mobilenet_v2")
mobilenet_v3_small = _builder("MobileNetV3Small", "mobilenet_v3_small", include_preprocessing=False)
mobilenet_v3_large = _builder("MobileNetV3Large", "mobilenet_v3_large", include_preprocessing=False)
nasnet_mobile = _builder("NASNetMobile", "nasnet_mobile")
efficientnet_b0 = _builder("EfficientNetB0", "efficientnet_b0")
convnext_tiny = _builder("ConvNeXtTiny", "convnext_tiny", include_preprocessing=False)
