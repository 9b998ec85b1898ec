"""FCN on a dilated ResNet (torchvision's FCN-ResNet50/101), model name ``fcn``.

Long, Shelhamer, Darrell's fully convolutional head on a ResNet whose last two
stages are dilated instead of strided (output stride 8), as torchvision's
``fcn_resnet50`` builds it: ``FCNHead`` = 3x3 conv (no bias) to 1/4 of the
encoder's channels, batch norm, ReLU, dropout 0.1, 1x1 classifier, then
bilinear upsampling to the input size. The VGG16 FCN-8s/16s/32s of the paper
are in ``fcn.py``; torchvision's auxiliary classifier (``aux_loss``) is not built.

Parameter count (tests/test_dilated_models.py): with each side's encoder
subtracted, ``dilated_fcn(21, "resnet50")`` has exactly the trainable
parameters of torchvision's ``fcn_resnet50(num_classes=21, aux_loss=False)``
(32,957,013 in all; 9,448,981 in its head). keras.applications' ResNet50
differs from torchvision's only by its conv biases (tested too).
"""

from __future__ import annotations

import keras

from fcnseg.models.blocks import conv_bn_relu, upsample
from fcnseg.models.encoders import ENCODERS, build_encoder, encoder_features, preprocess_input
from fcnseg.models.layers import CropToReference, PadToMultiple, scaled

OUTPUT_STRIDE = 8


def dilated_fcn(num_classes: int, encoder: str = "resnet50", encoder_weights: str | None = None,
                width: float = 1.0, input_norm: str = "encoder") -> keras.Model:
    """FCN head on an encoder of the table built at output stride 8 (``--model fcn``).

    Named ``dilated_fcn`` rather than ``fcn`` so it does not shadow the module
    ``fcnseg.models.fcn`` in the package namespace.

    Args:
        num_classes: number of output channels (logits).
        encoder: an encoder with output stride 8 (resnet18/34/50/101).
        encoder_weights: ``None``, ``"imagenet"`` or a local path, as
            :func:`fcnseg.models.encoders.build_encoder` takes.
        width: multiplier on the head's filters (and fcnseg's own encoders').
        input_norm: a key of ``INPUT_NORMS``: ``"per-image"`` standardises each
            image's colour statistics before the encoder's preprocessing.

    Returns:
        ``keras.Model`` named ``fcn_<encoder>`` mapping float32 RGB 0..255
        images (B, H, W, 3) to float32 logits (B, H, W, num_classes), any H, W.

    Example:
        >>> model = dilated_fcn(12, "resnet18", width=0.25)
    """
    backbone = build_encoder(encoder, width, encoder_weights, output_stride=OUTPUT_STRIDE)

    inputs = keras.Input((None, None, 3), name="image")
    x = preprocess_input(inputs, encoder, input_norm)
    x = PadToMultiple(OUTPUT_STRIDE, name="pad")(x)
    x = encoder_features(backbone, x)[32]  # nominal key 32: stride 8 here
    x = conv_bn_relu(x, scaled(ENCODERS[encoder].channels[-1] // 4, width), 3, "head")
    x = keras.layers.Dropout(0.1, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = upsample(x, OUTPUT_STRIDE, "upsample", dtype="float32")  # logits: float32 under mixed precision
    x = CropToReference(name="crop")([x, inputs])
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"fcn_{encoder}")
