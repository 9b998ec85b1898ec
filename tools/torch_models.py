"""PyTorch peers of fcnseg's FCN-8s/16s/32s and LinkNet, for tools/benchmark.py and tools/gpu_bench.py.

Plain ``torch.nn`` modules with the same layers, filter counts, kernel sizes,
strides and input pad/crop as ``fcnseg.models`` (parameter counts match
exactly; the benchmark prints both). Weights are random: they exist to be
timed, not trained. Layout is PyTorch's default NCHW.
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


def build(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """``fcn8s``, ``fcn16s``, ``fcn32s``, ``linknet-resnet18`` or ``linknet-resnet34``; ``width`` as fcnseg's."""
    if name in ("fcn8s", "fcn16s", "fcn32s"):
        return FCN8s(num_classes, name, width)
    if name.startswith("linknet-"):
        return LinkNet(num_classes, name.split("-", 1)[1], width)
    raise ValueError(f"no torch peer for {name!r}")
