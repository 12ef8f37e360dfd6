"""Hand-written course architectures (standard Keras 3 layers only, so they cross to tf_keras cleanly).

Each builder is `build(keras, input_shape, num_classes) -> keras.Model`; optkit.zoo.build
validates the arguments, seeds Keras and imports it before calling.
"""
from __future__ import annotations

# BatchNormalization momentum for the hand-written models: Keras' default 0.99 leaves the moving
# statistics unconverged after the few hundred steps optkit trains for (held-out accuracy at
# chance while training accuracy climbs; shared/STACK.md), 0.9 follows the weights closely enough.
BN_MOMENTUM = 0.9

# Lesson 14's "Naive" model, reconstructed. The course gives only its parameter counts:
# Naive 7,476,742; with GlobalAveragePooling2D instead of Flatten ("Pooling") 5,873,478; with
# separable convolutions as well ("Separable") 679,137. No stack reaches the first exactly
# together with the other two by a pure Flatten->GAP swap: the difference, 1,603,264 =
# 2^6*13*41*47, would have to equal dense_units * channels * (H*W - 1) of the last feature map.
# Separable convolutions removing 5,194,341 of 5.87 M parameters also means nearly all weights
# sit in wide convolutions and the pooled head is small. This stack was found by a search over
# VGG-style stacks (32x32x3 input, 10 classes, Conv-BN-ReLU, max-pools), keeping those within 1%
# of all three counts and taking the one with the fewest multiply-adds (178 M per image, so the
# demo trains in minutes on a CPU):
#   Naive (Flatten)            7,481,673  (+0.07%)
#   GlobalAveragePooling2D     5,876,553  (+0.05%)
#   + SeparableConv2D          678,580    (-0.08%; 680,809, +0.25%, if the 3-channel stem stays
#                                          a Conv2D, as optkit's separable rewrite leaves it)
# BatchNormalization after the hidden Dense keeps its ReLUs alive at Adam's default 1e-3 (without
# it the 8192-wide Flatten head died in the first epoch and accuracy stayed at chance).
LESSON14_LAYERS = (  # (filters, kernel, max-pool after?)
    (32, 5, True),
    (128, 5, True),
    (384, 5, True),
    (384, 3, False),
    (384, 3, False),
    (512, 3, False),
)
LESSON14_DENSE = 209


def lesson14(keras, input_shape, num_classes):
    """Lesson 14's 'Naive' CNN: Conv2D-BatchNorm-ReLU stack, three max-pools, Flatten, Dense, softmax.

    At its default input (32x32x3, 10 classes) it has 7,481,673 parameters, 0.07% over the
    course's 7,476,742 (an exact match is not reachable together with the table's other two
    counts; see LESSON14_LAYERS). The optimize ladder's rewrites turn it into the table's
    'Pooling' and 'Separable' rungs.
    """
    L = keras.layers
    layers = [keras.Input(shape=input_shape, name="image")]
    for filters, kernel, pool in LESSON14_LAYERS:
        layers += [L.Conv2D(filters, kernel, padding="same"), L.BatchNormalization(momentum=BN_MOMENTUM), L.Activation("relu")]
        if pool:
            layers.append(L.MaxPooling2D(2))
    layers += [
        L.Flatten(),
        L.Dense(LESSON14_DENSE),
        L.BatchNormalization(momentum=BN_MOMENTUM),
        L.Activation("relu"),
        L.Dense(num_classes, activation="softmax", name="predictions"),
    ]
    return keras.Sequential(layers, name="lesson14")


def custom_cnn(keras, input_shape, num_classes):
    """Lesson 3's custom CNN: Conv-BN-ReLU x2 + max-pool + dropout per block, then a Dense head."""
    L = keras.layers
    x = inputs = keras.Input(shape=input_shape, name="image")
    for filters in (32, 64, 128):
        for _ in range(2):
            x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = L.BatchNormalization(momentum=BN_MOMENTUM)(x)
            x = L.Activation("relu")(x)
        x = L.MaxPooling2D(2)(x)
        x = L.Dropout(0.25)(x)
    x = L.Flatten()(x)
    x = L.Dense(256, activation="relu")(x)
    x = L.Dropout(0.5)(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def lenet5(keras, input_shape, num_classes):
    """LeNet-5: 5x5 tanh convolutions (6, 16 maps) with 2x2 average pooling, Dense 120-84-classes."""
    L = keras.layers
    return keras.Sequential([
        keras.Input(shape=input_shape, name="image"),
        L.Conv2D(6, 5, activation="tanh"),
        L.AveragePooling2D(2),
        L.Conv2D(16, 5, activation="tanh"),
        L.AveragePooling2D(2),
        L.Flatten(),
        L.Dense(120, activation="tanh"),
        L.Dense(84, activation="tanh"),
        L.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="lenet5")


def alexnet(keras, input_shape, num_classes):
    """AlexNet: 11x11/4, 5x5, three 3x3 convolutions, overlapping 3x3/2 max pooling, two Dense 4096.

    BatchNormalization stands in for the original local response normalisation (not a Keras layer).
    """
    L = keras.layers
    return keras.Sequential([
        keras.Input(shape=input_shape, name="image"),
        L.Conv2D(96, 11, strides=4, activation="relu"),
        L.BatchNormalization(momentum=BN_MOMENTUM),
        L.MaxPooling2D(3, strides=2),
        L.Conv2D(256, 5, padding="same", activation="relu"),
        L.BatchNormalization(momentum=BN_MOMENTUM),
        L.MaxPooling2D(3, strides=2),
        L.Conv2D(384, 3, padding="same", activation="relu"),
        L.Conv2D(384, 3, padding="same", activation="relu"),
        L.Conv2D(256, 3, padding="same", activation="relu"),
        L.MaxPooling2D(3, strides=2),
        L.Flatten(),
        L.Dense(4096, activation="relu"),
        L.Dropout(0.5),
        L.Dense(4096, activation="relu"),
        L.Dropout(0.5),
        L.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="alexnet")


def resnet_cifar(keras, input_shape, num_classes, blocks_per_stage=3):
    """ResNet-20 for CIFAR-10 (He et al. 2016, section 4.2): 6n+2 layers with n=3.

    Projection shortcuts (1x1 conv) where the shape changes, global average pooling, softmax.
    """
    L = keras.layers

    def conv_bn(x, filters, strides=1, relu=True):
        x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                     kernel_initializer="he_normal")(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM)(x)
        return L.Activation("relu")(x) if relu else x

    x = inputs = keras.Input(shape=input_shape, name="image")
    x = conv_bn(x, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = conv_bn(x, filters, strides)
            y = conv_bn(y, filters, relu=False)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = L.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
                shortcut = L.BatchNormalization(momentum=BN_MOMENTUM)(shortcut)
            x = L.Activation("relu")(L.Add()([y, shortcut]))
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet_cifar")
