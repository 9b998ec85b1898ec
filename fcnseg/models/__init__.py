"""Segmentation models: FCN-8s/16s/32s (VGG16) and LinkNet (ResNet18/34).

Every builder returns a ``keras.Model`` from float32 RGB 0..255 images
(B, H, W, 3) to float32 logits (B, H, W, num_classes) for any H and W.
"""

from fcnseg.models.fcn import fcn8s, fcn16s, fcn32s
from fcnseg.models.linknet import linknet

MODELS = {"fcn8s": fcn8s, "fcn16s": fcn16s, "fcn32s": fcn32s, "linknet": linknet}

__all__ = ["MODELS", "fcn8s", "fcn16s", "fcn32s", "linknet"]
