"""Segmentation architectures: per-pixel class probabilities, output (N, H, W, num_classes).

Built from standard Keras 3 layers only (no custom layers, no Lambda), so they load with
safe_mode on and cross to tf_keras. Input height and width must be multiples of 16
(optkit.zoo checks it): skips are concatenated at matching sizes.
"""
from __future__ import annotations

# BatchNormalization momentum for the hand-written models: Keras' default 0.99 leaves the moving
# statistics unconverged after the few hundred steps optkit trains for (held-out accuracy at
# chance while training accuracy climbs; shared/STACK.md), 0.9 follows the weights closely enough.
BN_MOMENTUM = 0.9
UNET_FILTERS = (16, 32, 64, 128)   # encoder levels; the bottleneck doubles the last


def unet(keras, input_shape, num_classes):
    """U-Net: Conv-BN-ReLU pairs, 2x2 max-pool down, transposed-conv up, skip concatenation."""
    L = keras.layers

    def double_conv(x, filters):
        for _ in range(2):
            x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = L.BatchNormalization(momentum=BN_MOMENTUM)(x)
            x = L.Activation("relu")(x)
        return x

    x = inputs = keras.Input(shape=input_shape, name="image")
    skips = []
    for filters in UNET_FILTERS:
        x = double_conv(x, filters)
        skips.append(x)
        x = L.MaxPooling2D(2)(x)
    x = double_conv(x, UNET_FILTERS[-1] * 2)
    for filters, skip in zip(reversed(UNET_FILTERS), reversed(skips)):
        x = L.Conv2DTranspose(filters, 2, strides=2, padding="same")(x)
        x = L.Concatenate()([x, skip])
        x = double_conv(x, filters)
    outputs = L.Conv2D(num_classes, 1, activation="softmax", name="mask")(x)
    return keras.Model(inputs, outputs, name="unet")


def deeplabv3_plus(keras, input_shape, num_classes):
    """DeepLabV3+ with a MobileNetV2 backbone (weights=None).

    Encoder features at output stride 16 ('block_13_expand_relu') go through ASPP (1x1 conv,
    3x3 atrous convs at rates 6/12/18, image pooling); the decoder upsamples x4, concatenates
    the stride-4 features ('block_3_expand_relu') reduced to 48 channels, refines with two 3x3
    convs and upsamples x4 back to the input size.
    """
    L = keras.layers
    h, w = input_shape[0], input_shape[1]
    inputs = keras.Input(shape=input_shape, name="image")
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, input_tensor=inputs)
    high = backbone.get_layer("block_13_expand_relu").output   # H/16
    low = backbone.get_layer("block_3_expand_relu").output     # H/4

    def conv_bn(x, filters, kernel=1, rate=1):
        x = L.Conv2D(filters, kernel, padding="same", dilation_rate=rate, use_bias=False)(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM)(x)
        return L.Activation("relu")(x)

    fh, fw = h // 16, w // 16
    pooled = L.AveragePooling2D(pool_size=(fh, fw))(high)
    pooled = conv_bn(pooled, 256)
    pooled = L.UpSampling2D(size=(fh, fw), interpolation="bilinear")(pooled)
    branches = [pooled, conv_bn(high, 256)] + [conv_bn(high, 256, 3, rate) for rate in (6, 12, 18)]
    x = conv_bn(L.Concatenate()(branches), 256)

    x = L.UpSampling2D(size=(4, 4), interpolation="bilinear")(x)
    x = L.Concatenate()([x, conv_bn(low, 48)])
    x = conv_bn(x, 256, 3)
    x = conv_bn(x, 256, 3)
    x = L.UpSampling2D(size=(4, 4), interpolation="bilinear")(x)
    outputs = L.Conv2D(num_classes, 1, activation="softmax", name="mask")(x)
    return keras.Model(inputs, outputs, name="deeplabv3_plus")
