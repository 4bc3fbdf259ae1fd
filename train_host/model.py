"""LivenessNet (the seed tutorial's small CNN) as a Keras 3 factory. Host only: imports Keras."""

from __future__ import annotations

import keras
from keras import layers


def make_livenessnet(
    input_shape: tuple[int, int, int],
    filters: tuple[int, int] = (16, 32),
    dense_units: int = 64,
    n_classes: int = 2,
    standardize: bool = False,
) -> keras.Model:
    """(CONV=>BN=>RELU) x2 => POOL => DROPOUT per block (16 then 32 filters), FC 64, softmax.

    The seed's LivenessNet puts BN after the ReLU; here BN comes first so the converter folds it
    into the convolution: with BN after the ReLU the full-int8 export disagreed with Keras on 7 %
    of check crops (mean |diff| 0.11), which the export check refuses.
    Input: float32 in [0, 1] as made by ``edge.preprocess.preprocess_crop``.
    ``standardize`` puts a per-image standardisation first (mean 0, variance 1 over the whole
    crop: a built-in LayerNormalization without learnt scale), so a camera's overall brightness
    and contrast cannot stand in for "real" or "fake".
    """
    inputs = keras.Input(shape=input_shape, name="face")
    x = inputs
    if standardize:
        x = layers.LayerNormalization(
            axis=(1, 2, 3), center=False, scale=False, epsilon=1e-5, name="standardize"
        )(x)
    for block, n in enumerate(filters):
        for conv in range(2):
            x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"b{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"b{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"b{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"b{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"b{block}_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.Activation("relu", name="fc_relu")(x)
    x = layers.Dropout(0.5, name="fc_drop")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="livenessnet")


def make_augmenter(seed: int) -> keras.Sequential:
    """The seed's augmentation (rotation 20 deg, zoom 0.15, shift 0.2, shear 0.15, flips) plus
    brightness and contrast, since lighting is the most reported failure. Blur is added in
    ``train`` (per-batch down/up-sampling)."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(20.0 / 360.0, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom(0.15, fill_mode="reflect", seed=seed + 2),
            layers.RandomTranslation(0.2, 0.2, fill_mode="reflect", seed=seed + 3),
            layers.RandomShear(x_factor=0.15, y_factor=0.0, fill_mode="reflect", seed=seed + 4),
            layers.RandomBrightness(0.25, value_range=(0.0, 1.0), seed=seed + 5),
            layers.RandomContrast(0.3, value_range=(0.0, 1.0), seed=seed + 6),
        ],
        name="augment",
    )


def make_context_augmenter(seed: int, value_max: float = 255.0) -> keras.Sequential:
    """For context crops (BGR 0-255): mirror, lighting and contrast only. No rotation, zoom or
    shift: the crop's geometry is the daemon's, and reflected borders would paint the very edges
    (bezels, paper borders) a context model looks at. Blur is added in ``train``."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomBrightness(0.15, value_range=(0.0, value_max), seed=seed + 5),
            layers.RandomContrast(0.25, value_range=(0.0, value_max), seed=seed + 6),
        ],
        name="augment_context",
    )
