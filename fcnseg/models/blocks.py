"""Building blocks the decoders share: conv-BN-ReLU and bilinear upsampling.

One definition, so UNet, FPN, PSPNet, DeepLabv3+ and the dilated FCN build
their convolutions the same way (no bias before batch norm, torchvision's
batch-norm epsilon and momentum, the fused batch-norm fast path) and their
layer names follow one pattern (``{name}_conv``, ``{name}_bn``,
``{name}_relu``).
"""

from __future__ import annotations

import keras
from keras import ops

from fcnseg.models.layers import FusedBatchNormalization, TORCH_BN, fast_cpu_kernels


def conv_bn_relu(x, filters: int, kernel_size: int, name: str, *, strides: int = 1, dilation_rate: int = 1,
                 separable: bool = False, relu: bool = True):
    """Conv (no bias) -> batch norm -> ReLU, "same" padding.

    Args:
        x: input (B, H, W, C).
        filters: output channels.
        kernel_size: square kernel size.
        name: prefix of the three layer names.
        strides: conv stride.
        dilation_rate: atrous rate (ASPP, dilated encoders).
        separable: depthwise-separable conv as DeepLabv3+ uses it: depthwise
            conv, batch norm, then a pointwise conv (``{name}_pw``), as in
            segmentation_models.pytorch's ``SeparableConv2d``.
        relu: end with ReLU (False: conv and batch norm only).

    Returns:
        (B, H / strides, W / strides, filters) tensor.

    Example:
        >>> y = conv_bn_relu(keras.Input((None, None, 64)), 32, 3, "decoder1")
    """
    if separable:
        x = keras.layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
                                         use_bias=False, name=f"{name}_dw")(x)
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
                                use_bias=False, name=f"{name}_conv")(x)
    x = FusedBatchNormalization(**TORCH_BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


@keras.saving.register_keras_serializable(package="fcnseg")
class BilinearUpsample(keras.layers.Layer):
    """Bilinear x``factor`` upsampling with half-pixel centres, any H and W.

    What ``tf.image.resize`` and PyTorch's ``interpolate(align_corners=False)``
    compute for an integer factor, written as shifted weighted sums: Keras'
    bilinear ``UpSampling2D`` passes the runtime size to ``ops.image.resize``,
    whose ``size <= 0`` check fails in a TensorFlow graph traced with unknown
    H/W (predict on a second image size, dynamic-shape export).

    Where ``fast_cpu_kernels()`` holds (TensorFlow on a CPU) the layer calls
    ``tf.image.resize`` instead, the same function (to 1e-6): the gradients of
    the shifted slices are TensorFlow ``StridedSliceGrad`` ops, which took a
    third of SegFormer-MiT-B0's CPU training step, and ``ResizeBilinear`` with
    its gradient kernel ran the x2 ... x8 upsamplings 2-6x faster
    (docs/benchmarks.md).
    """

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def _axis(self, x, axis: int):
        def cut(start, stop):
            # Plain slices (strided slice, cheap to trace and differentiate) rather than gathers.
            return x[tuple(slice(start, stop) if i == axis else slice(None) for i in range(4))]

        before = ops.concatenate([cut(None, 1), cut(None, -1)], axis=axis)  # edges clamped
        after = ops.concatenate([cut(1, None), cut(-1, None)], axis=axis)
        parts = []
        for k in range(self.factor):
            # Output pixel k of each input pixel samples the input at offset d from it.
            d = (k + 0.5) / self.factor - 0.5
            parts.append((1 - abs(d)) * x + abs(d) * (before if d < 0 else after))
        y = ops.stack(parts, axis=axis + 1)
        shape = ops.shape(x)
        return ops.reshape(y, [shape[0], *[-1 if i == axis else shape[i] for i in (1, 2)], shape[3]])

    def call(self, x):
        if fast_cpu_kernels():
            import tensorflow as tf

            size = tf.shape(x)[1:3] * self.factor
            return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)
        return self._axis(self._axis(x, 1), 2)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h * self.factor, None if w is None else w * self.factor, c)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def upsample(x, factor: int, name: str, dtype: str | None = None):
    """Bilinear x``factor`` upsampling (the decoders' "interpolate" step), any input size.

    ``dtype="float32"`` for logits under mixed precision.
    """
    return BilinearUpsample(factor, name=name, dtype=dtype)(x)
