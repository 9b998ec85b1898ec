"""PyTorch peers of fcnseg's models, for tools/benchmark.py and tools/gpu_bench.py.

FCN-8s/16s/32s and LinkNet: plain ``torch.nn`` modules with the same layers,
filter counts, kernel sizes, strides and input pad/crop as ``fcnseg.models``
(parameter counts match exactly; the benchmark prints both).

The newer architectures use the reference implementations themselves, when
installed (they are optional; :func:`peer_missing` says why one is absent):

* ``unet-ENC``, ``fpn-ENC``: segmentation_models_pytorch ``Unet`` / ``FPN``
  (fcnseg's decoders follow smp's; parameter counts equal on ResNet18/34).
* ``deeplabv3plus-ENC``: smp ``DeepLabV3Plus(encoder_output_stride=16,
  decoder_atrous_rates=(6, 12, 18))``, the paper's rates as fcnseg has them
  (smp's default is 12/24/36).
* ``pspnet-ENC``: NOT smp's ``PSPNet`` (that taps the encoder at depth 3,
  undilated, with a 1x1 bottleneck and a 3x3 classifier). fcnseg's is the
  paper's / mmsegmentation's ``PSPHead`` on a dilated output-stride-8
  encoder, so the peer is smp's encoder built at output stride 8 plus that
  head written out here (:class:`PSPHead`).
* ``fcn-resnet50`` / ``fcn-resnet101``: torchvision ``fcn_resnet50/101(weights=None,
  weights_backbone=None, aux_loss=False)``.
* ``segformer-mit_bN``: smp ``Segformer("mit_bN")`` (all-MLP head, 256 channels).

Each is wrapped in :class:`Peer`: RGB 0..255 in, normalised, padded to the
multiple fcnseg pads to, logits cropped back, as fcnseg's models do in-graph.
keras.applications' ResNet50/101 (fcnseg's resnet50/101) carry conv biases
torchvision's lack, so those counts differ slightly. Weights are random: they
exist to be timed, not trained. Layout is PyTorch's default NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
RESNET_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
DECODER_FILTERS = ((512, 256), (256, 128), (128, 64), (64, 64))


def scaled(filters: int, width: float) -> int:
    """As fcnseg.models.layers.scaled: ``filters`` times ``width``, rounded, never below 1."""
    return max(1, int(round(filters * width)))


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


class FCN8s(nn.Module):
    """VGG16, fc6 (7x7) / fc7 (1x1) as convs with dropout, staged 2x/2x/8x transposed-conv fusion.

    ``variant`` "fcn16s" stops after the pool4 fusion (16x up), "fcn32s" upsamples score_fr 32x.
    """

    def __init__(self, num_classes: int, variant: str = "fcn8s", width: float = 1.0) -> None:
        super().__init__()
        self.variant = variant
        fc = scaled(4096, width)
        layers, c = [], 3
        self.blocks = nn.ModuleList()
        for filters in VGG16_BLOCKS:
            layers = []
            for f in filters:
                layers += [nn.Conv2d(c, scaled(f, width), 3, padding=1), nn.ReLU(inplace=True)]
                c = scaled(f, width)
            layers.append(nn.MaxPool2d(2, 2))
            self.blocks.append(nn.Sequential(*layers))
        self.fc = nn.Sequential(nn.Conv2d(c, fc, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        up = lambda f: nn.ConvTranspose2d(num_classes, num_classes, 2 * f, f, padding=f // 2, bias=False)  # noqa: E731
        if variant == "fcn32s":
            self.upscore32 = up(32)
        else:
            self.upscore2, self.score_pool4 = up(2), nn.Conv2d(scaled(512, width), num_classes, 1)
        if variant == "fcn16s":
            self.upscore16 = up(16)
        elif variant == "fcn8s":
            self.upscore_pool4, self.score_pool3, self.upscore8 = up(2), nn.Conv2d(scaled(256, width), num_classes, 1), up(8)
        self.register_buffer("mean", torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x.flip(1) - self.mean)  # RGB -> BGR minus mean, as Caffe VGG
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        x = self.score_fr(self.fc(feats[4]))
        if self.variant == "fcn32s":
            return self.upscore32(x)[..., :h, :w]
        x = self.upscore2(x) + self.score_pool4(feats[3])
        if self.variant == "fcn16s":
            return self.upscore16(x)[..., :h, :w]
        x = self.upscore_pool4(x) + self.score_pool3(feats[2])
        return self.upscore8(x)[..., :h, :w]


def conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, relu=False)
        self.proj = conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return F.relu(self.conv2(self.conv1(x)) + shortcut)


def deconv_bn(cin: int, cout: int) -> nn.Sequential:
    """3x3 stride-2 transposed conv doubling H and W (Keras padding="same")."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, 2, padding=1, output_padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LinkNet(nn.Module):
    """ResNet18/34 encoder; decoder blocks 1x1 m->m/4, 3x3 deconv x2 (decoder1: 3x3 conv, no upsampling), 1x1 m/4->n; skips added."""

    def __init__(self, num_classes: int, encoder: str = "resnet18", width: float = 1.0) -> None:
        super().__init__()
        c = scaled(64, width)
        self.stem = nn.Sequential(conv_bn(3, c, 7, 2), nn.MaxPool2d(3, 2, padding=1))
        self.stages = nn.ModuleList()
        for s, (blocks, f) in enumerate(zip(RESNET_DEPTHS[encoder], (64, 128, 256, 512))):
            f = scaled(f, width)
            self.stages.append(nn.Sequential(*[BasicBlock(c if b == 0 else f, f, 2 if s and b == 0 else 1)
                                               for b in range(blocks)]))
            c = f
        self.decoders = nn.ModuleList()
        for i, (m, n) in enumerate(DECODER_FILTERS):
            mid = scaled(m // 4, width)
            self.decoders.append(nn.Sequential(
                conv_bn(scaled(m, width), mid, 1, 1), conv_bn(mid, mid, 3, 1) if i == 3 else deconv_bn(mid, mid),
                conv_bn(mid, scaled(n, width), 1, 1)))
        c, h = scaled(64, width), scaled(32, width)
        self.head = nn.Sequential(deconv_bn(c, h), conv_bn(h, h, 3, 1), nn.ConvTranspose2d(h, num_classes, 2, 2))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.stem(pad_to_multiple((x / 255.0 - self.mean) / self.std))
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        x = skips[3]
        for level, decoder in zip((3, 2, 1, 0), self.decoders):
            x = decoder(x)
            if level:
                x = x + skips[level - 1]
        return self.head(x)[..., :h, :w]


class Peer(nn.Module):
    """A reference model as fcnseg runs its own: RGB 0..255 in, ImageNet-normalised, padded to
    ``multiple``, logits cropped to the input (a dict output's ``"out"``, as torchvision's)."""

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model, self.multiple = model, multiple
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.model(pad_to_multiple((x / 255.0 - self.mean) / self.std, self.multiple))
        return (y["out"] if isinstance(y, dict) else y)[..., :h, :w]


class PSPHead(nn.Module):
    """mmsegmentation's PSPHead (pool scales 1/2/3/6, branches 1x1 conv-BN-ReLU to C/4, 3x3
    bottleneck conv-BN-ReLU, dropout 0.1, 1x1 classifier), bilinear x8: fcnseg's PSPNet head."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        c = cin // 4
        self.branches = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn(cin, c, 1, 1))
                                       for s in (1, 2, 3, 6)])
        self.bottleneck = conv_bn(cin + 4 * c, c, 3, 1)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(c, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size, mode="bilinear", align_corners=False) for b in self.branches]
        y = self.classifier(self.bottleneck(torch.cat([x, *pooled], 1)))
        return F.interpolate(y, scale_factor=8, mode="bilinear", align_corners=False)


class DilatedPSPNet(nn.Module):
    """smp's encoder built at output stride 8 (dilated) + :class:`PSPHead` on its last map."""

    def __init__(self, encoder: str, num_classes: int) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        self.encoder = get_encoder(encoder, weights=None, output_stride=8)
        self.head = PSPHead(self.encoder.out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


# model -> (module that must be installed, the multiple fcnseg pads its input to)
REFERENCE_PEERS = {"unet": ("segmentation_models_pytorch", 32), "fpn": ("segmentation_models_pytorch", 32),
                   "deeplabv3plus": ("segmentation_models_pytorch", 16), "pspnet": ("segmentation_models_pytorch", 8),
                   "segformer": ("segmentation_models_pytorch", 32), "fcn": ("torchvision", 8)}


def split_name(name: str) -> tuple[str, str | None]:
    """``"unet-resnet34"`` -> ``("unet", "resnet34")``; ``"fcn8s"`` -> ``("fcn8s", None)``."""
    model, _, encoder = name.partition("-")
    return model, encoder or None


def peer_missing(name: str) -> str | None:
    """Why ``name`` has no PyTorch peer here (one line), or None when :func:`build` can make one."""
    import importlib.util

    model, encoder = split_name(name)
    if model in ("fcn8s", "fcn16s", "fcn32s") or (model == "linknet" and encoder in RESNET_DEPTHS):
        return None
    if model not in REFERENCE_PEERS or encoder is None:
        return f"no PyTorch peer for {name}"
    if model == "fcn" and encoder not in ("resnet50", "resnet101"):
        return f"torchvision has no FCN on {encoder}"
    module = REFERENCE_PEERS[model][0]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {module.replace('_', '-')} for the {model} peer)"
    return None


def reference(model: str, encoder: str, num_classes: int) -> nn.Module:
    """The reference implementation of ``model`` on ``encoder``, random weights, no auxiliary head."""
    if model == "fcn":
        from torchvision.models import segmentation

        return getattr(segmentation, f"fcn_{encoder}")(weights=None, weights_backbone=None, aux_loss=False,
                                                       num_classes=num_classes)
    import segmentation_models_pytorch as smp

    if model == "pspnet":
        return DilatedPSPNet(encoder, num_classes)
    if model == "deeplabv3plus":
        return smp.DeepLabV3Plus(encoder, encoder_weights=None, encoder_output_stride=16,
                                 decoder_atrous_rates=(6, 12, 18), classes=num_classes)
    cls = {"unet": smp.Unet, "fpn": smp.FPN, "segformer": smp.Segformer}[model]
    return cls(encoder, encoder_weights=None, classes=num_classes)


def build(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """``fcn8s``, ``fcn16s``, ``fcn32s``, ``linknet-resnet18/34`` (``width`` as fcnseg's), or a model of
    ``REFERENCE_PEERS`` as ``MODEL-ENCODER`` (full width only: the references have no width)."""
    if name in ("fcn8s", "fcn16s", "fcn32s"):
        return FCN8s(num_classes, name, width)
    missing = peer_missing(name)
    if missing:
        raise ValueError(missing)
    model, encoder = split_name(name)
    if model == "linknet":
        return LinkNet(num_classes, encoder, width)
    if width != 1.0:
        raise ValueError(f"the {model} reference has no width multiplier (asked for {width:g})")
    return Peer(reference(model, encoder, num_classes), REFERENCE_PEERS[model][1])
