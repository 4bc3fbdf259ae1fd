"""Rewrite a Keras model into the same function made of ops XNNPACK runs in int8 (host only).

TFLite's int8 ``PRELU`` is not taken by the XNNPACK delegate: each one splits the delegated
graph and runs on the reference kernel. MiniFASNet has 66 of them; measured on this machine, one
thread, they were most of the pair's 7.7 ms per face, and 0.84 ms remained without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import numpy as np


class PReLUAsAddRelu(keras.layers.Layer):
    """PReLU computed as ``x + relu((alpha - 1) * x)``.

    For slopes ``alpha < 1`` that is PReLU exactly (x > 0: x; x < 0: alpha * x) and converts to
    MUL (with the ReLU fused) and ADD, both delegated in int8.
    """

    def __init__(self, alpha: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._slope_minus_one = np.asarray(alpha, np.float32) - 1.0

    def build(self, input_shape: Any) -> None:
        self.slope_minus_one = self.add_weight(
            shape=self._slope_minus_one.shape,
            initializer="zeros",
            trainable=False,
            name="slope_minus_one",
        )
        self.slope_minus_one.assign(self._slope_minus_one)

    def call(self, x: Any) -> Any:
        return x + keras.ops.relu(x * self.slope_minus_one)


def _rewritable(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.PReLU) and bool(np.all(layer.get_weights()[0] < 1.0))


def _leaf_pairs(
    model: keras.Model, twin: keras.Model | None = None
) -> Iterator[tuple[keras.layers.Layer, keras.layers.Layer | None]]:
    """Every layer of ``model`` that has weights, nested models walked into, with its namesake
    in ``twin``."""
    for layer in model.layers:
        if not layer.weights:
            continue
        other = twin.get_layer(layer.name) if twin is not None else None
        if isinstance(layer, keras.Model):
            yield from _leaf_pairs(layer, other)
        else:
            yield layer, other


def delegable_prelu(model: keras.Model) -> keras.Model:
    """``model`` with every PReLU whose slopes are all below 1 replaced by
    :class:`PReLUAsAddRelu`; every other layer keeps its config and weights. Returns ``model``
    itself when there is nothing to rewrite (a PReLU with a slope >= 1 stays a PReLU)."""
    if not any(_rewritable(layer) for layer, _ in _leaf_pairs(model)):
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if _rewritable(layer):
            return PReLUAsAddRelu(layer.get_weights()[0], name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    rewritten = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for layer, twin in _leaf_pairs(model, rewritten):
        if not _rewritable(layer) and twin is not None:
            twin.set_weights(layer.get_weights())
    return rewritten
