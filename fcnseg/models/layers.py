"""Small shared pieces for the fcnseg models.

Bilinear kernels for transposed convolutions (Long et al., "Fully Convolutional
Networks for Semantic Segmentation", CVPR 2015, sec. 3.3), in-model input
preprocessing, the pad/crop pair that lets every model take any H x W, two
layers with a faster TensorFlow CPU kernel, and a transposed convolution and a
max pool that XLA differentiates fast. Everything is written with
``keras.ops`` so the models run on every Keras backend; TensorFlow is imported
only where its kernels are used. All custom layers are registered so a saved
``.keras`` model reloads, under any backend.
"""

from __future__ import annotations

import functools
from typing import Sequence

import keras
import numpy as np
from keras import ops

# ImageNet statistics. Caffe VGG weights expect BGR minus the per-channel mean
# in 0..255; torchvision-style encoders expect RGB in 0..1 standardised.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
# Batch norm as torchvision's ResNet has it (momentum 0.1 there: the weight of the new batch), so
# converted torchvision weights and their statistics behave as in PyTorch.
TORCH_BN = dict(epsilon=1e-5, momentum=0.9)


def scaled(filters: int, width: float) -> int:
    """Filter count ``filters`` scaled by ``width``, never below 1."""
    return max(1, int(round(filters * width)))


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """Bilinear upsampling kernel for a ``Conv2DTranspose``.

    Same formula as the FCN reference ``upsample_filt``. With ``size = 2 * f``,
    stride ``f`` and ``padding="same"`` the transposed convolution equals
    half-pixel bilinear resizing (``tf.image.resize``) away from the border.

    Args:
        size: kernel size, ``2 * factor`` for an upsampling factor.
        channels: number of channels; channel ``c`` maps only to channel ``c``.

    Returns:
        float32 array of shape ``(size, size, channels, channels)``, the
        ``(k, k, out, in)`` layout Keras uses for transposed convolutions.

    Example:
        >>> bilinear_kernel(4, 1)[:, :, 0, 0][0]
        array([0.0625, 0.1875, 0.1875, 0.0625], dtype=float32)
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    filt1d = 1.0 - np.abs(og - center) / factor
    filt = np.outer(filt1d, filt1d).astype(np.float32)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = filt[..., None]
    return kernel


@keras.saving.register_keras_serializable(package="fcnseg")
def bilinear_initializer(shape: Sequence[int], dtype: str | None = None):
    """Kernel initializer giving a ``Conv2DTranspose`` bilinear upsampling.

    Use with ``kernel_size = 2 * stride``. Input and output channel counts must
    match (each channel is upsampled on its own).

    Example:
        >>> up = keras.layers.Conv2DTranspose(
        ...     21, 4, strides=2, padding="same", use_bias=False,
        ...     kernel_initializer=bilinear_initializer)
    """
    k, k2, out_ch, in_ch = shape
    if k != k2 or out_ch != in_ch:
        raise ValueError(f"bilinear kernel needs square size and in == out channels, got {shape}")
    return ops.convert_to_tensor(bilinear_kernel(k, in_ch), dtype=dtype or "float32")


@keras.saving.register_keras_serializable(package="fcnseg")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0..255 -> BGR minus ImageNet mean, as Caffe-trained VGG16 expects.

    Example:
        >>> CaffePreprocess()(np.full((1, 2, 2, 3), 128.0, "float32")).shape
        TensorShape([1, 2, 2, 3])
    """

    def call(self, x):
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="fcnseg")
class ImageNetNormalize(keras.layers.Layer):
    """RGB 0..255 -> (x / 255 - mean) / std, the torchvision convention."""

    def call(self, x):
        mean = ops.convert_to_tensor(IMAGENET_RGB_MEAN, dtype=x.dtype)
        std = ops.convert_to_tensor(IMAGENET_RGB_STD, dtype=x.dtype)
        return (x / 255.0 - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="fcnseg")
class PerImageStandardize(keras.layers.Layer):
    """RGB 0..255 -> the same image with each channel's mean and standard deviation moved onto
    ImageNet's (in 0..255), per image.

    The output is still an RGB 0..255-scaled image, so the encoder's own preprocessing (and its
    ImageNet weights) follow unchanged; what it removes is each image's overall brightness,
    contrast and colour cast (any per-channel ``a * x + b`` with ``a > 0`` gives the same output),
    which is how a dusk or overcast test sequence differs most from daylight training images.

    Args:
        min_std: floor on each channel's standard deviation (0..255 units), so a flat image is
            shifted, not amplified into noise.
    """

    def __init__(self, min_std: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.min_std = float(min_std)

    def call(self, x):
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True))
        target_mean = ops.convert_to_tensor([255.0 * m for m in IMAGENET_RGB_MEAN], dtype=x.dtype)
        target_std = ops.convert_to_tensor([255.0 * s for s in IMAGENET_RGB_STD], dtype=x.dtype)
        return (x - mean) * (target_std / ops.maximum(std, self.min_std)) + target_mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_std": self.min_std}


@keras.saving.register_keras_serializable(package="fcnseg")
class PadToMultiple(keras.layers.Layer):
    """Pads H and W at the bottom/right up to a multiple of ``multiple``.

    Padding only at the far end keeps pixel (0, 0) in place, so cropping
    ``[:H, :W]`` afterwards restores the exact input grid and every stride-s
    feature map is exactly ``padded / s`` (no off-by-one between skips).

    Args:
        multiple: the total stride of the network, e.g. 32.
        mode: ``"constant"`` (zeros; after mean subtraction that is the mean
            colour, like Caffe FCN's pad 100) or ``"reflect"`` (needs the pad
            to be smaller than the image side).
    """

    def __init__(self, multiple: int = 32, mode: str = "constant", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("constant", "reflect"):
            raise ValueError(f"mode must be 'constant' or 'reflect', got {mode!r}")
        self.multiple = multiple
        self.mode = mode

    def call(self, x):
        shape = ops.shape(x)
        pad_h = (-shape[1]) % self.multiple
        pad_w = (-shape[2]) % self.multiple
        return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode=self.mode)

    def compute_output_shape(self, input_shape):
        def up(d):
            return None if d is None else -(-d // self.multiple) * self.multiple

        return (input_shape[0], up(input_shape[1]), up(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple, "mode": self.mode}


@keras.saving.register_keras_serializable(package="fcnseg")
class CropToReference(keras.layers.Layer):
    """Crops ``x`` to the height and width of ``reference`` (top-left anchored).

    Called as ``CropToReference()([x, reference])``; ``x`` must be at least as
    large as ``reference``. Works with H/W unknown when the graph is traced.
    """

    def call(self, inputs):
        x, reference = inputs
        ref_shape, x_shape = ops.shape(reference), ops.shape(x)
        # A slice, not x[:, :h, :w]: TensorFlow differentiates the strided slice with
        # StridedSliceGrad, 3x slower here than Slice's gradient (a Pad) on the full-size logits.
        return ops.slice(x, [0, 0, 0, 0], [x_shape[0], ref_shape[1], ref_shape[2], x_shape[3]])

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def fast_cpu_kernels() -> bool:
    """Whether the TensorFlow CPU kernels of the layers below are used.

    True only under the TensorFlow backend in a process where TensorFlow sees
    no GPU: the fused batch norm and the matrix-product convolution were
    measured faster than Keras' own ops on CPUs only. On a GPU, cuDNN's batch
    norm and convolution (which Keras' layers reach) stay until measured
    otherwise; under JAX or PyTorch the layers are plain Keras layers (but see
    :func:`patch_matmul_convolutions`). The
    choice is made when a layer is called (traced), so a checkpoint written
    under one backend or device loads and runs under any other.
    """
    return keras.backend.backend() == "tensorflow" and not _tensorflow_sees_gpu()


def patch_matmul_convolutions() -> bool:
    """Whether :class:`PatchMatmulConv2D` computes its convolution as one matrix product.

    On TensorFlow's CPU kernels (:func:`fast_cpu_kernels`) and under JAX on a
    CPU: XLA's CPU convolution ran FCN's fc6 (7x7, 128 -> 1024 channels on an
    8x6 map) 150x slower than the matrix product (docs/benchmarks.md, "Keras
    backends"). On a GPU, and under PyTorch (not measured), Conv2D stays.
    """
    return fast_cpu_kernels() or (keras.backend.backend() == "jax" and _jax_runs_on_cpu())


@functools.cache
def _jax_runs_on_cpu() -> bool:
    import jax

    return jax.default_backend() == "cpu"


@functools.cache
def _tensorflow_sees_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


@keras.saving.register_keras_serializable(package="fcnseg")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` on TensorFlow's fused kernel for NHWC maps.

    Same weights, arguments and statistics as the Keras layer (moving
    variance from the biased batch variance, as Keras keeps it). Keras 3
    computes batch norm from a dozen separate element-wise ops and their
    gradients, each a pass over the feature map; TensorFlow's
    ``FusedBatchNormV3`` (oneDNN on the CPU) does the forward and the backward
    pass in one each, and takes bfloat16 maps with float32 statistics without
    casting the map. LinkNet-ResNet18 trains 1.4x faster in float32 and 2.2x
    faster under mixed bfloat16 with it (README "Benchmarks"). Anything the
    fused kernel does not cover (masks, renorm, synchronized statistics,
    another axis or rank), and every backend or device where
    :func:`fast_cpu_kernels` is false, goes through the Keras layer unchanged.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (mask is None and not self.renorm and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3))

    def call(self, inputs, training=None, mask=None):
        if not (fast_cpu_kernels() and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        return self._fused_call(inputs, training)

    def _fused_call(self, inputs, training):
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        # bfloat16/float16 maps stay in their dtype: the kernel accumulates statistics in float32.
        x = tf.cast(inputs, self.compute_dtype)
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, unbiased_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            n = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)  # int32 overflows on big batches
            variance = unbiased_var * ((n - 1.0) / tf.maximum(n, 1.0))
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1.0 - m))
            self.moving_variance.assign(
                self.moving_variance * m + tf.cast(variance, self.moving_variance.dtype) * (1.0 - m))
            return y
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
        return y


@keras.saving.register_keras_serializable(package="fcnseg")
class PatchMatmulConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` computed as im2col and one matrix product.

    For a large kernel on a small map (FCN's fc6: 7x7, 512 -> 4096 channels on
    a 12x15 pool5 map at 480x360) oneDNN's direct convolution, and above all
    its weight gradient, runs far below the machine's matmul rate. Gathering
    the kh*kw shifted copies of the input into one (positions, kh*kw*cin)
    matrix turns the layer into a single large GEMM forward and two backward.
    The kernel keeps Conv2D's (kh, kw, cin, cout) layout and name, so weights,
    checkpoints and converted VGG fc1 weights load unchanged. Strided,
    dilated, grouped or channels-first convolutions, and every backend or
    device where :func:`patch_matmul_convolutions` is false, go through Conv2D.
    """

    def _patchable(self) -> bool:
        return (self.groups == 1 and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1) and self.data_format == "channels_last")

    def convolution_op(self, inputs, kernel):
        if not (patch_matmul_convolutions() and self._patchable()):
            return super().convolution_op(inputs, kernel)
        kh, kw = self.kernel_size
        cin = kernel.shape[2]
        if self.padding == "same":
            # TensorFlow's SAME for stride 1: the odd pixel of an even kernel goes bottom/right.
            inputs = ops.pad(inputs, [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]])
        shape = ops.shape(inputs)
        rows, cols = shape[1] - kh + 1, shape[2] - kw + 1
        # Concatenating slices (not tf.image.extract_patches) keeps the
        # gradient a cheap sum of pads; extract_patches' is a segment sum.
        patches = ops.concatenate(
            [inputs[:, dy:dy + rows, dx:dx + cols, :] for dy in range(kh) for dx in range(kw)], axis=-1)
        out = ops.matmul(ops.reshape(patches, (-1, kh * kw * cin)),
                         ops.reshape(kernel, (kh * kw * cin, self.filters)))
        return ops.reshape(out, (shape[0], rows, cols, self.filters))


def pixel_shuffle_transposed_convs() -> bool:
    """Whether :class:`PixelShuffleConv2DTranspose` runs as a convolution and a depth-to-space.

    Under JAX only: XLA differentiates the transposed convolution (a convolution with lhs
    dilation) with a kernel gradient far slower than a plain convolution's (jax-ml/jax#23783,
    #31662), and on an H200 fcnseg's LinkNet and FCN-8s trained at 0.23-0.73x the PyTorch peer's
    speed with it (docs/benchmarks.md, "GPU"). TensorFlow's and PyTorch's own transposed
    convolutions stay.
    """
    return keras.backend.backend() == "jax"


@keras.saving.register_keras_serializable(package="fcnseg")
class PixelShuffleConv2DTranspose(keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` computed as one stride-1 convolution and a depth-to-space.

    A stride-s transposed convolution writes input pixel i's contribution to output rows
    s*i .. s*i + k - 1, so output row s*q + r (phase r) only ever sees kernel rows r, r + s,
    r + 2s, ...: each of the s x s phases is a plain convolution of the input with a
    ceil(k/s) x ceil(k/s) slice of the kernel. One convolution with all phases as output channels,
    interleaved by a depth-to-space and cropped as "same"/"valid" crops, gives exactly the
    transposed convolution (Shi et al., "Is the deconvolution layer the same as a convolutional
    layer?", 2016), and it is differentiated as an ordinary convolution. Kernel zero-padded to a
    multiple of s: a 3x3 stride-2 layer does 16 taps where 9 are needed, still faster under XLA.
    Same weights, kernel layout and config as the Keras layer, so checkpoints load either way;
    dilated, channels-first or output-padded layers, and backends where
    :func:`pixel_shuffle_transposed_convs` is false, go through the Keras layer.
    """

    def _shufflable(self) -> bool:
        return (self.data_format == "channels_last" and self.output_padding is None
                and tuple(self.dilation_rate) == (1, 1))

    def call(self, inputs):
        if not (pixel_shuffle_transposed_convs() and self._shufflable()):
            return super().call(inputs)
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        mh, mw = -(-kh // sh), -(-kw // sw)  # taps per phase
        cin, cout = self.kernel.shape[3], self.filters
        kernel = ops.pad(self.kernel, [[0, mh * sh - kh], [0, mw * sw - kw], [0, 0], [0, 0]])
        kernel = ops.reshape(kernel, (mh, sh, mw, sw, cout, cin))  # [m, r, n, t] = K[s*m + r, s*n + t]
        kernel = ops.flip(ops.transpose(kernel, (0, 2, 5, 1, 3, 4)), axis=(0, 1))  # convolution, not correlation
        kernel = ops.reshape(kernel, (mh, mw, cin, sh * sw * cout))
        x = ops.pad(inputs, [[0, 0], [mh - 1, mh - 1], [mw - 1, mw - 1], [0, 0]])
        y = ops.conv(x, kernel, padding="valid")
        batch, rows, cols = y.shape[0], y.shape[1], y.shape[2]
        y = ops.reshape(y, (batch, rows, cols, sh, sw, cout))
        y = ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)), (batch, rows * sh, cols * sw, cout))
        out_shape = self.compute_output_shape(inputs.shape)
        top, left = ((max(kh - sh, 0) // 2, max(kw - sw, 0) // 2) if self.padding == "same" else (0, 0))
        y = y[:, top:top + out_shape[1], left:left + out_shape[2], :]
        if self.use_bias:
            y = ops.add(y, ops.reshape(self.bias, (1, 1, 1, cout)))
        return self.activation(y) if self.activation is not None else y


def reshape_max_pools() -> bool:
    """Whether :class:`ReshapeMaxPooling2D` runs as a reshape and a max over each window's axes.

    Under JAX only: XLA differentiates a pooling window (reduce-window max) with a select-and-scatter,
    which on a CPU under JAX took 3.8x the time of a reshape-and-max's gradient at VGG pool1's size
    (docs/benchmarks.md, "GPU"). TensorFlow's and PyTorch's own pooling stays.
    """
    return keras.backend.backend() == "jax"


@keras.saving.register_keras_serializable(package="fcnseg")
class ReshapeMaxPooling2D(keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` whose windows do not overlap, computed as a reshape and a max.

    With pool size equal to the stride each output pixel owns a p x q block of the input: reshaping
    (B, H, W, C) to (B, H/p, p, W/q, q, C) and taking the max over the block axes gives the same
    values, and its gradient is a compare-and-select rather than a select-and-scatter. "valid" drops
    the rows and columns that do not fill a window, "same" pads them with -inf as Keras does (extra
    row at the bottom). Where a window holds the maximum more than once the gradient is shared
    among the ties (Keras' goes to the first); after a ReLU the only likely ties are zeros, whose
    gradient the ReLU stops either way. Same config as the Keras layer; overlapping windows,
    channels-first data, and backends where :func:`reshape_max_pools` is false go through it.
    """

    def _reshapable(self) -> bool:
        return self.data_format == "channels_last" and tuple(self.pool_size) == tuple(self.strides)

    def call(self, inputs):
        if not (reshape_max_pools() and self._reshapable()):
            return super().call(inputs)
        (ph, pw), (_, rows, cols, channels) = self.pool_size, inputs.shape
        if self.padding == "same":
            pad_h, pad_w = -rows % ph, -cols % pw
            inputs = ops.pad(inputs, [[0, 0], [pad_h // 2, pad_h - pad_h // 2],
                                      [pad_w // 2, pad_w - pad_w // 2], [0, 0]], constant_values=-np.inf)
        out_h, out_w = inputs.shape[1] // ph, inputs.shape[2] // pw
        x = inputs[:, :out_h * ph, :out_w * pw, :]
        x = ops.reshape(x, (-1, out_h, ph, out_w, pw, channels))
        return ops.max(x, axis=(2, 4))


@keras.saving.register_keras_serializable(package="fcnseg")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling of (B, H, W, C) into ``bins`` x ``bins`` cells, any H and W.

    PyTorch's ``AdaptiveAvgPool2d``: cell i spans rows ``floor(i H / bins)``
    to ``ceil((i + 1) H / bins)`` (cells overlap where ``bins`` does not divide
    H), likewise columns. Written as two small averaging matrices built from
    the runtime shape, so it needs no static size (TF graphs with unknown H/W,
    JAX) and no kernel size fixed at build time. PSPNet's pyramid pooling.
    """

    def __init__(self, bins: int, **kwargs):
        super().__init__(**kwargs)
        self.bins = bins

    def _matrix(self, size, dtype):
        cells = ops.arange(self.bins, dtype="int32")[:, None]
        index = ops.arange(size, dtype="int32")[None, :]
        start = (cells * size) // self.bins
        end = ((cells + 1) * size + self.bins - 1) // self.bins
        inside = ops.cast(ops.logical_and(index >= start, index < end), dtype)
        return inside / ops.sum(inside, axis=1, keepdims=True)

    def call(self, x):
        shape = ops.shape(x)
        rows = self._matrix(shape[1], x.dtype)
        cols = self._matrix(shape[2], x.dtype)
        return ops.einsum("ih,bhwc,jw->bijc", rows, x, cols)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


def _bilinear_matrix(size_in, size_out):
    """(size_out, size_in) float32 weights of half-pixel bilinear sampling, edges clamped."""
    scale = ops.cast(size_in, "float32") / ops.cast(size_out, "float32")
    src = (ops.arange(size_out, dtype="float32") + 0.5) * scale - 0.5
    src = ops.clip(src, 0.0, ops.cast(size_in - 1, "float32"))
    low = ops.floor(src)
    frac = (src - low)[:, None]
    low = ops.cast(low, "int32")[:, None]
    high = ops.minimum(low + 1, size_in - 1)
    index = ops.arange(size_in, dtype="int32")[None, :]
    return (1.0 - frac) * ops.cast(index == low, "float32") + frac * ops.cast(index == high, "float32")


@keras.saving.register_keras_serializable(package="fcnseg")
class ResizeToReference(keras.layers.Layer):
    """Bilinear resize of ``x`` to the height and width of ``reference``, any size.

    Called as ``ResizeToReference()([x, reference])``; half-pixel sampling,
    i.e. PyTorch's ``interpolate(..., mode="bilinear", align_corners=False)``.
    A 1x1 ``x`` (global pooling) is broadcast. Written as two interpolation
    matrices built from the runtime shapes (not ``ops.image.resize``, whose
    size must be known when a SavedModel/ONNX export traces the model with
    H and W unknown), so it also runs under JAX. Float32 weights: a float16
    bilinear resize in TensorFlow has a mixed-precision gradient XLA rejects.
    """

    def call(self, inputs):
        x, reference = inputs
        shape, size = ops.shape(x), ops.shape(reference)
        rows = _bilinear_matrix(shape[1], size[1])
        cols = _bilinear_matrix(shape[2], size[2])
        return ops.cast(ops.einsum("ih,bhwc,jw->bijc", rows, ops.cast(x, "float32"), cols), x.dtype)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])
