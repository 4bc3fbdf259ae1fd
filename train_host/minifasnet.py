"""MiniFASNetV2 / MiniFASNetV1SE (Silent-Face, Apache-2.0, Minivision) as Keras 3 models.

A port of ``../shared/peers/silentface/reference/MiniFASNet.py`` that loads the published weights
from their ``.npz`` form (plain arrays; ``np.load`` with its default loads nothing else). Host
only: imports Keras. Layout differences from PyTorch, handled in ``load_npz_weights``:
- convolutions: PyTorch ``[out, in, kh, kw]`` -> Keras ``[kh, kw, in, out]``; depthwise
  ``[c, 1, kh, kw]`` -> ``[kh, kw, c, 1]``; linear ``[out, in]`` -> ``[in, out]``;
- PyTorch pads 1 pixel on every side before a strided 3x3 convolution; Keras ``"same"`` pads
  only right/bottom for stride 2 on even sizes, so the padding is explicit here;
- BatchNorm epsilon is PyTorch's 1e-5.

Input: ``80 x 80 x 3`` BGR pixels as floats 0-255 (the original ``ToTensor`` does not divide by
255). Output of a branch: 3 logits; class 1 is "real", 0 and 2 are two kinds of attack.
``make_liveness_minifasnet`` wraps one or two branches into LiveGate's two-class model
(``LABELS = ("fake", "real")``): P(fake) = P(class 0) + P(class 2), and with two branches (one
input, 3 channels per crop scale) the two softmaxes are averaged as the original predictor does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers

BN_EPSILON = 1e-5
EMBEDDING = 128
N_CLASSES = 3
REAL_CLASS = 1

# keep_dict of the reference: channel counts of every block ("1.8M_" = V2, "1.8M" = V1/V1SE).
KEEP_V2 = [32, 32, 103, 103, 64, 13, 13, 64, 13, 13, 64, 13, 13, 64, 13, 13, 64, 231, 231, 128,
           231, 231, 128, 52, 52, 128, 26, 26, 128, 77, 77, 128, 26, 26, 128, 26, 26, 128, 308,
           308, 128, 26, 26, 128, 26, 26, 128, 512, 512]  # fmt: skip
KEEP_V1 = [32, 32, 103, 103, 64, 13, 13, 64, 26, 26, 64, 13, 13, 64, 52, 52, 64, 231, 231, 128,
           154, 154, 128, 52, 52, 128, 26, 26, 128, 52, 52, 128, 26, 26, 128, 26, 26, 128, 308,
           308, 128, 26, 26, 128, 26, 26, 128, 512, 512]  # fmt: skip

VARIANTS: dict[str, tuple[list[int], bool]] = {
    "MiniFASNetV2": (KEEP_V2, False),
    "MiniFASNetV1SE": (KEEP_V1, True),
}


@keras.saving.register_keras_serializable(package="livegate")
class ChannelSlice(layers.Layer):
    """Channels ``start:stop`` of an NHWC tensor (a named layer, so saved models load safely)."""

    def __init__(self, start: int, stop: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        return x[..., self.start : self.stop]

    def compute_output_shape(self, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*shape[:-1], self.stop - self.start)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="livegate")
class HorizontalFlip(layers.Layer):
    """The NHWC image mirrored left to right."""

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        return keras.ops.flip(x, axis=2)


def with_flip_average(model: keras.Model) -> keras.Model:
    """``model``'s output averaged over its input and the input's mirror image.

    A face and its mirror image are the same presentation; averaging the two verdicts smooths
    the network's left/right quirks (measured with the pretrained pair, int8, all frames of the
    pool: APCER 23.8 % -> 20.0 % at BPCER 5 %). The crops of both context scales are mirrored
    together, so each branch still sees its own scale. Twice the compute per face.
    """
    inputs = keras.Input(shape=model.input_shape[1:], name="face")
    mirrored = HorizontalFlip(name="mirror")(inputs)
    out = layers.Average(name="flip_average")([model(inputs), model(mirrored)])
    return keras.Model(inputs, out, name=f"{model.name}_flip")


class _Builder:
    """Builds the functional graph with layer names that mirror the PyTorch state-dict keys."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def conv_block(
        self,
        x: keras.KerasTensor,
        key: str,
        out_c: int,
        kernel: int,
        stride: int,
        depthwise: bool,
        activation: bool = True,
        padding: int = 0,
    ) -> keras.KerasTensor:
        if padding:
            x = layers.ZeroPadding2D(padding, name=self.name(f"{key}.pad"))(x)
        if depthwise:
            x = layers.DepthwiseConv2D(
                kernel, strides=stride, use_bias=False, name=self.name(f"{key}.conv")
            )(x)
        else:
            x = layers.Conv2D(
                out_c, kernel, strides=stride, use_bias=False, name=self.name(f"{key}.conv")
            )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=self.name(f"{key}.bn"))(x)
        if activation:
            x = layers.PReLU(shared_axes=[1, 2], name=self.name(f"{key}.prelu"))(x)
        return x

    def se_module(self, x: keras.KerasTensor, key: str, channels: int) -> keras.KerasTensor:
        reduction = 4
        s = layers.GlobalAveragePooling2D(keepdims=True, name=self.name(f"{key}.pool"))(x)
        s = layers.Conv2D(channels // reduction, 1, use_bias=False, name=self.name(f"{key}.fc1"))(s)
        s = layers.BatchNormalization(epsilon=BN_EPSILON, name=self.name(f"{key}.bn1"))(s)
        s = layers.ReLU(name=self.name(f"{key}.relu"))(s)
        s = layers.Conv2D(channels, 1, use_bias=False, name=self.name(f"{key}.fc2"))(s)
        s = layers.BatchNormalization(epsilon=BN_EPSILON, name=self.name(f"{key}.bn2"))(s)
        s = layers.Activation("sigmoid", name=self.name(f"{key}.sigmoid"))(s)
        return layers.Multiply(name=self.name(f"{key}.scale"))([x, s])

    def depth_wise(
        self,
        x: keras.KerasTensor,
        key: str,
        c1: int,
        c3: int,
        stride: int,
        residual: bool,
        se: bool = False,
    ) -> keras.KerasTensor:
        shortcut = x
        y = self.conv_block(x, f"{key}.conv", c1, 1, 1, depthwise=False)
        y = self.conv_block(y, f"{key}.conv_dw", c1, 3, stride, depthwise=True, padding=1)
        y = self.conv_block(y, f"{key}.project", c3, 1, 1, depthwise=False, activation=False)
        if residual:
            if se:
                y = self.se_module(y, f"{key}.se_module", c3)
            y = layers.Add(name=self.name(f"{key}.add"))([shortcut, y])
        return y

    def residual(
        self, x: keras.KerasTensor, key: str, keep: Sequence[int], start: int, n: int, se: bool
    ) -> keras.KerasTensor:
        # Blocks i of a Residual stage use keep[start + 3i + 1] (expanded) and keep[start + 3i + 3].
        for i in range(n):
            base = start + 3 * i
            x = self.depth_wise(
                x,
                f"{key}.model.{i}",
                keep[base + 1],
                keep[base + 3],
                1,
                residual=True,
                se=se and i == n - 1,
            )
        return x


def minifasnet_logits(
    inputs: keras.KerasTensor,
    variant: str,
    prefix: str,
    conv6_kernel: int = 5,
    dropout: float = 0.2,
) -> keras.KerasTensor:
    """The 3 logits of one MiniFASNet on ``inputs`` (N x 80 x 80 x 3, BGR 0-255)."""
    keep, se = VARIANTS[variant]
    b = _Builder(prefix)
    x = b.conv_block(inputs, "conv1", keep[0], 3, 2, depthwise=False, padding=1)
    x = b.conv_block(x, "conv2_dw", keep[1], 3, 1, depthwise=True, padding=1)
    x = b.depth_wise(x, "conv_23", keep[2], keep[4], 2, residual=False)
    x = b.residual(x, "conv_3", keep, 4, 4, se)
    x = b.depth_wise(x, "conv_34", keep[17], keep[19], 2, residual=False)
    x = b.residual(x, "conv_4", keep, 19, 6, se)
    x = b.depth_wise(x, "conv_45", keep[38], keep[40], 2, residual=False)
    x = b.residual(x, "conv_5", keep, 40, 2, se)
    x = b.conv_block(x, "conv_6_sep", keep[47], 1, 1, depthwise=False)
    x = b.conv_block(x, "conv_6_dw", keep[48], conv6_kernel, 1, depthwise=True, activation=False)
    # Reshape, not Flatten: Keras 3 Flatten adds shape ops the int8 export trips on (FACTS.md).
    x = layers.Reshape((keep[48],), name=b.name("conv_6_flatten"))(x)
    x = layers.Dense(EMBEDDING, use_bias=False, name=b.name("linear"))(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=b.name("bn"))(x)
    x = layers.Dropout(dropout, name=b.name("drop"))(x)
    return layers.Dense(N_CLASSES, use_bias=False, name=b.name("prob"))(x)


def make_liveness_minifasnet(
    variants: Sequence[str], size: int = 80, name: str = "minifasnet"
) -> keras.Model:
    """LiveGate's two-class model [P(fake), P(real)] over one or more MiniFASNet branches.

    Branch i reads channels 3i..3i+2 of the one input (the crop at context scale i).
    """
    if not variants or any(v not in VARIANTS for v in variants):
        raise ValueError(f"variants must be from {sorted(VARIANTS)}, got {list(variants)}")
    inputs = keras.Input(shape=(size, size, 3 * len(variants)), name="face")
    probs = []
    for i, variant in enumerate(variants):
        branch_in = inputs
        if len(variants) > 1:
            branch_in = ChannelSlice(3 * i, 3 * i + 3, name=f"b{i}_slice")(inputs)
        logits = minifasnet_logits(branch_in, variant, prefix=f"b{i}_")
        probs.append(layers.Softmax(name=f"b{i}_softmax")(logits))
    p = probs[0] if len(probs) == 1 else layers.Average(name="fuse")(probs)
    # Classes 0 and 2 are both attacks: a fixed 3 -> 2 sum, kept out of training.
    to_two = layers.Dense(2, use_bias=False, trainable=False, name="to_fake_real")
    out = to_two(p)
    to_two.set_weights([np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)])
    return keras.Model(inputs, out, name=name)


def _torch_to_keras(layer: layers.Layer, key: str, arrays: dict[str, np.ndarray]) -> list[str]:
    """Assign one layer's weights from the state dict; returns the keys used."""
    if isinstance(layer, layers.DepthwiseConv2D):
        w = arrays[f"{key}.weight"]
        layer.set_weights([w.transpose(2, 3, 0, 1)])
        return [f"{key}.weight"]
    if isinstance(layer, layers.Conv2D):
        layer.set_weights([arrays[f"{key}.weight"].transpose(2, 3, 1, 0)])
        return [f"{key}.weight"]
    if isinstance(layer, layers.Dense):
        layer.set_weights([arrays[f"{key}.weight"].T])
        return [f"{key}.weight"]
    if isinstance(layer, layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        layer.set_weights([arrays[f"{key}.{n}"] for n in names])
        return [f"{key}.{n}" for n in names] + [f"{key}.num_batches_tracked"]
    if isinstance(layer, layers.PReLU):
        alpha = arrays[f"{key}.weight"]
        layer.set_weights([alpha.reshape(1, 1, -1)])
        return [f"{key}.weight"]
    return []


def load_npz_weights(model: keras.Model, npz_path: Path, branch: int = 0) -> int:
    """Load Silent-Face ``.npz`` weights into branch ``branch`` of ``model``; returns tensors set.

    Every array of the file must be used exactly once (a port that silently skips a layer would
    still run, and score nonsense).
    """
    with np.load(Path(npz_path)) as data:  # numpy's default: plain arrays only
        arrays = {k.removeprefix("module."): data[k] for k in data.files}
    prefix = f"b{branch}_"
    used: list[str] = []
    for layer in model.layers:
        if not layer.name.startswith(prefix) or not layer.weights:
            continue
        key = layer.name.removeprefix(prefix)
        # The SE block's layers are named "<block>.se_module.fc1" etc. like the state dict.
        got = _torch_to_keras(layer, key, arrays)
        if not got:
            raise ValueError(f"no weights in {npz_path} for layer {layer.name}")
        used.extend(got)
    unused = sorted(set(arrays) - set(used))
    if unused:
        raise ValueError(
            f"{npz_path}: {len(unused)} arrays not used by the port, e.g. {unused[:5]}"
        )
    return len(used)


# LiveGate architectures built from these branches: name -> the branches, in input-channel order.
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "minifasnet_v2": ("MiniFASNetV2",),
    "minifasnet_v1se": ("MiniFASNetV1SE",),
    "minifasnet_pair": ("MiniFASNetV2", "MiniFASNetV1SE"),
}
# Each branch's published weights and the context scale they were trained on.
PRETRAINED_FILES: dict[str, str] = {
    "MiniFASNetV2": "2.7_80x80_MiniFASNetV2.npz",
    "MiniFASNetV1SE": "4_0_0_80x80_MiniFASNetV1SE.npz",
}
CONTEXT_SCALES: dict[str, float] = {"MiniFASNetV2": 2.7, "MiniFASNetV1SE": 4.0}
INPUT_PX = 80


def context_scales(arch: str) -> tuple[float, ...]:
    return tuple(CONTEXT_SCALES[v] for v in ARCHITECTURES[arch])


def pretrained_model(arch: str, weights_dir: Path) -> keras.Model:
    """``arch`` with every branch loaded from Silent-Face's published ``.npz`` weights."""
    model = make_liveness_minifasnet(ARCHITECTURES[arch], INPUT_PX, name=arch)
    for i, variant in enumerate(ARCHITECTURES[arch]):
        path = Path(weights_dir) / PRETRAINED_FILES[variant]
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights {path} are missing (see ../shared/peers/silentface/README.md)"
            )
        load_npz_weights(model, path, branch=i)
    return model


# -- Fourier-spectrum auxiliary target (Silent-Face's MultiFTNet), training only ---------------
FT_SOURCE_LAYER = "b0_conv_4.model.5.add"  # branch 0 after conv_4: 10 x 10 x 128 for 80 px


def with_ft_head(model: keras.Model) -> keras.Model:
    """A training twin of ``model`` that also predicts the input's Fourier spectrum (10 x 10)
    from branch 0's conv_4 features, as Silent-Face's MultiFTNet does. It shares every layer
    with ``model``, so training it trains ``model``; the head itself is never exported."""
    x = model.get_layer(FT_SOURCE_LAYER).output
    for i, filters in enumerate((128, 64, 1)):
        x = layers.Conv2D(filters, 3, padding="same", name=f"ft_conv{i}")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"ft_bn{i}")(x)
        x = layers.ReLU(name=f"ft_relu{i}")(x)
    return keras.Model(model.input, {"probs": model.output, "ft": x}, name=f"{model.name}_ft")


def ft_target(x: object, size: int = 10) -> object:
    """Silent-Face's ``generate_FT`` on branch 0's crop (channels 0-2, BGR 0-255), in
    TensorFlow for the input pipeline: grey, |FFT| shifted to the centre, log(1 + .),
    min-max scaled per image to [0, 1], resized to ``size`` x ``size``."""
    import tensorflow as tf

    bgr = tf.cast(x, tf.float32)[..., :3]
    grey = 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]
    spectrum = tf.abs(tf.signal.fft2d(tf.cast(grey, tf.complex64)))
    spectrum = tf.signal.fftshift(spectrum, axes=(1, 2))
    spectrum = tf.math.log(spectrum + 1.0)
    low = tf.reduce_min(spectrum, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(spectrum, axis=(1, 2), keepdims=True)
    scaled = (spectrum - low) / tf.maximum(high - low, 1e-6)
    return tf.image.resize(scaled[..., tf.newaxis], [size, size])


# Blocks of a branch from input to output (layer names are "b<i>_<block>..."): fine-tuning can
# start at one of them and keep every earlier one as published (frozen, BatchNorm in inference).
BLOCKS = ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5",
          "conv_6_sep", "conv_6_dw", "linear", "bn", "prob")  # fmt: skip


def freeze_before(model: keras.Model, block: str) -> int:
    """Freeze every layer of every branch that comes before ``block``; returns layers frozen."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; blocks: {list(BLOCKS)}")
    first = BLOCKS.index(block)
    frozen = 0
    for layer in model.layers:
        prefix, sep, rest = layer.name.partition("_")
        if not sep or not prefix.startswith("b") or not layer.weights:
            continue
        name = rest.split(".", 1)[0]
        if name in BLOCKS and BLOCKS.index(name) < first:
            layer.trainable = False
            frozen += 1
    return frozen
