"""Segmentation models: FCN-8s/16s/32s (VGG16); LinkNet, U-Net, FPN (any encoder of the table);
PSPNet, DeepLabv3+ and FCN-ResNet (``fcn``) on dilated ResNets; SegFormer (MiT).

Every builder returns a ``keras.Model`` from float32 RGB 0..255 images
(B, H, W, 3) to float32 logits (B, H, W, num_classes) for any H and W, and
takes ``encoder`` (a key of ``fcnseg.models.encoders.ENCODERS`` that
``MODEL_ENCODERS`` allows for it), ``encoder_weights``, ``width`` and ``input_norm`` (a key of
``fcnseg.models.encoders.INPUT_NORMS``).
"""

from fcnseg.models.deeplabv3plus import deeplabv3plus
from fcnseg.models.dilated_fcn import dilated_fcn
from fcnseg.models.encoders import ENCODERS, encoder_strides
from fcnseg.models.fcn import fcn8s, fcn16s, fcn32s
from fcnseg.models.fpn import fpn
from fcnseg.models.linknet import linknet
from fcnseg.models.mit import MIT_VARIANTS
from fcnseg.models.pspnet import pspnet
from fcnseg.models.segformer import segformer
from fcnseg.models.unet import unet

# "fcn" is torchvision's FCN-ResNet50/101 (a dilated encoder), beside the paper's VGG16 FCN-8s/16s/32s.
MODELS = {"fcn8s": fcn8s, "fcn16s": fcn16s, "fcn32s": fcn32s, "linknet": linknet, "unet": unet, "fpn": fpn,
          "pspnet": pspnet, "deeplabv3plus": deeplabv3plus, "fcn": dilated_fcn, "segformer": segformer}

# The encoders each model can take, its default first. FCN-8s/16s/32s are the paper's VGG16 net (fc6/fc7
# are VGG16's classifier), so they take no other.
MODEL_ENCODERS: dict[str, tuple[str, ...]] = {
    "fcn8s": ("vgg16",), "fcn16s": ("vgg16",), "fcn32s": ("vgg16",),
    "linknet": ("resnet18", *(name for name in ENCODERS if name != "resnet18")),
    # smp's defaults (resnet34). U-Net's last skip is the stride-2 map, which MiT lacks; FPN reads
    # strides 4..32 only, so it takes every encoder.
    "unet": ("resnet34", *(name for name in ENCODERS
                           if name != "resnet34" and 2 in encoder_strides(name))),
    "fpn": ("resnet34", *(name for name in ENCODERS if name != "resnet34")),
    "segformer": tuple(MIT_VARIANTS),  # the all-MLP head reads MiT's four stages (no stride 2 in MiT)
}
# The dilated-encoder decoders take the encoders that can be built at their output stride.
MODEL_ENCODERS.update({
    model: ("resnet50", *(name for name, row in ENCODERS.items()
                          if stride in row.output_strides and name != "resnet50"))
    for model, stride in (("pspnet", 8), ("deeplabv3plus", 16), ("fcn", 8))
})


def encoder_refusal(model: str, encoder: str | None) -> str | None:
    """Why ``model`` cannot take ``encoder`` (one line listing those it can), or None when it can."""
    valid = MODEL_ENCODERS[model]
    if encoder is None or encoder in valid:
        return None
    return f"--model {model} cannot take --encoder {encoder}; its encoders are: {', '.join(valid)}"


__all__ = ["ENCODERS", "MODELS", "MODEL_ENCODERS", "encoder_refusal", "deeplabv3plus", "dilated_fcn", "fcn8s",
           "fcn16s", "fcn32s", "fpn", "linknet", "pspnet", "segformer", "unet"]
