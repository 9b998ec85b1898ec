"""PyTorch peers of fcnseg's FCN-8s and LinkNet, for tools/benchmark.py only.

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


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


class FCN8s(nn.Module):
    """VGG16, fc6 (7x7) / fc7 (1x1) as convs with dropout, staged 2x/2x/8x transposed-conv fusion."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers, c = [], 3
        self.blocks = nn.ModuleList()
        for filters in VGG16_BLOCKS:
            layers = []
            for f in filters:
                layers += [nn.Conv2d(c, f, 3, padding=1), nn.ReLU(inplace=True)]
                c = f
            layers.append(nn.MaxPool2d(2, 2))
            self.blocks.append(nn.Sequential(*layers))
        self.fc = nn.Sequential(nn.Conv2d(512, 4096, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, padding=1, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, padding=1, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, 8, padding=4, bias=False)
        self.register_buffer("mean", torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x.flip(1) - self.mean)  # RGB -> BGR minus mean, as Caffe VGG
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        x = self.upscore2(self.score_fr(self.fc(feats[4]))) + self.score_pool4(feats[3])
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

    def __init__(self, num_classes: int, encoder: str = "resnet18") -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, padding=1))
        self.stages, c = nn.ModuleList(), 64
        for s, (blocks, f) in enumerate(zip(RESNET_DEPTHS[encoder], (64, 128, 256, 512))):
            self.stages.append(nn.Sequential(*[BasicBlock(c if b == 0 else f, f, 2 if s and b == 0 else 1)
                                               for b in range(blocks)]))
            c = f
        self.decoders = nn.ModuleList(
            nn.Sequential(conv_bn(m, m // 4, 1, 1), (conv_bn(m // 4, m // 4, 3, 1) if i == 3 else deconv_bn(m // 4, m // 4)),
                          conv_bn(m // 4, n, 1, 1))
            for i, (m, n) in enumerate(DECODER_FILTERS)
        )
        self.head = nn.Sequential(deconv_bn(64, 32), conv_bn(32, 32, 3, 1),
                                  nn.ConvTranspose2d(32, num_classes, 2, 2))
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


def build(name: str, num_classes: int) -> nn.Module:
    """``fcn8s``, ``linknet-resnet18`` or ``linknet-resnet34``."""
    if name == "fcn8s":
        return FCN8s(num_classes)
    if name.startswith("linknet-"):
        return LinkNet(num_classes, name.split("-", 1)[1])
    raise ValueError(f"no torch peer for {name!r}")
