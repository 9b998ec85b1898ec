"""Converts a torchvision ResNet18/34 state_dict into an fcnseg encoder weights file.

    python tools/convert_torchvision_resnet.py resnet18-f37072fd.pth \
        --arch resnet18 --output resnet18_encoder.weights.h5

The output is what ``fcnseg.models.resnet.resnet18().save_weights(path)`` writes,
so ``linknet(n, encoder="resnet18", encoder_weights=path)`` (or the CLI's
``--encoder-weights PATH``) loads it. Conv kernels go from torch's OIHW to
Keras' HWIO; BatchNorm weight/bias/running_mean/running_var become gamma/beta/
moving_mean/moving_variance (both use epsilon 1e-5). ``fc.*`` and
``num_batches_tracked`` are ignored. torch is imported only here, only when a
file is read; every failure is a one-line ``ConversionError``.

Library use (e.g. from tests): ``convert_file(src, arch, output)`` or
``state_dict_to_keras(state_dict, arch)`` -> built, loaded Keras encoder.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import numpy as np

ARCHS = ("resnet18", "resnet34")


class ConversionError(ValueError):
    """The torchvision file is missing, not a state_dict, or not the declared arch."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def keras_to_torch_names(arch: str) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (torch module prefix, "conv" | "bn") for the encoder.

    Example:
        >>> keras_to_torch_names("resnet18")["stage2_block1_proj_bn"]
        ('layer2.0.downsample.1', 'bn')
    """
    from fcnseg.models.resnet import RESNET_DEPTHS

    names = {"conv1": ("conv1", "conv"), "conv1_bn": ("bn1", "bn")}
    for s, blocks in enumerate(RESNET_DEPTHS[arch], start=1):
        for b in range(1, blocks + 1):
            k, t = f"stage{s}_block{b}", f"layer{s}.{b - 1}"
            for i in (1, 2):
                names[f"{k}_conv{i}"] = (f"{t}.conv{i}", "conv")
                names[f"{k}_conv{i}_bn"] = (f"{t}.bn{i}", "bn")
            if s > 1 and b == 1:
                names[f"{k}_proj"] = (f"{t}.downsample.0", "conv")
                names[f"{k}_proj_bn"] = (f"{t}.downsample.1", "bn")
    return names


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")  # Keras' BN weight order


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype="float32")


def state_dict_to_keras(state_dict: Mapping, arch: str, source: str = "state_dict"):
    """Builds ``fcnseg.models.resnet.<arch>()`` and assigns a torchvision state_dict.

    Args:
        state_dict: torchvision ResNet parameter names -> tensors (or arrays).
        arch: ``"resnet18"`` or ``"resnet34"``.
        source: what to call the input in error messages (e.g. its path).

    Returns:
        The Keras encoder with the converted weights.

    Raises:
        ConversionError: a missing, unexpected or wrongly shaped key (named).

    Example:
        >>> encoder = state_dict_to_keras(torch.load(p, weights_only=True), "resnet18")
    """
    from fcnseg.models import resnet

    if arch not in ARCHS:
        raise ConversionError(f"--arch must be one of {list(ARCHS)}, got {arch!r}")
    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
        raise ConversionError(f"{source} is not a state_dict (a mapping of parameter names to tensors)")
    encoder = getattr(resnet, arch)()
    used: set[str] = set()
    for layer_name, (prefix, kind) in keras_to_torch_names(arch).items():
        layer = encoder.get_layer(layer_name)
        params = ("weight",) if kind == "conv" else _BN_PARAMS
        arrays = []
        for p, target in zip(params, layer.weights):
            key = f"{prefix}.{p}"
            if key not in state_dict:
                raise ConversionError(f"{source} is not a torchvision {arch}: missing key {key}")
            value = _to_numpy(state_dict[key])
            if kind == "conv":
                value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO
            if tuple(value.shape) != tuple(target.shape):
                raise ConversionError(
                    f"{source} is not a torchvision {arch}: {key} has shape "
                    f"{tuple(_to_numpy(state_dict[key]).shape)}, {layer_name} needs "
                    f"{tuple(target.shape)} (Keras layout)"
                )
            arrays.append(value)
            used.add(key)
        layer.set_weights(arrays)
    extra = sorted(
        k for k in state_dict
        if k not in used and not k.startswith("fc.") and not k.endswith(".num_batches_tracked")
    )
    if extra:
        raise ConversionError(
            f"{source} is not a torchvision {arch}: unexpected key {extra[0]}"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    return encoder


def read_state_dict(path: str):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors."""
    if not os.path.isfile(path):
        raise ConversionError(f"torchvision weights file not found: {path}")
    try:
        import torch
    except ImportError:
        raise ConversionError("PyTorch is needed to read .pth files: pip install torch") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"could not read {path} as a torch state_dict ({_first_line(exc)})") from None


def convert_file(src: str, arch: str, output: str) -> str:
    """Converts the torchvision file ``src`` and saves the Keras weights to ``output``.

    Returns:
        ``output``, loadable by ``linknet(n, encoder=arch, encoder_weights=output)``.

    Example:
        >>> convert_file("resnet18-f37072fd.pth", "resnet18", "resnet18_encoder.weights.h5")
    """
    if not str(output).endswith(".weights.h5"):
        raise ConversionError(f"--output must end with .weights.h5 (Keras 3), got {output}")
    encoder = state_dict_to_keras(read_state_dict(os.fspath(src)), arch, source=os.fspath(src))
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ConversionError(f"output folder does not exist: {parent}")
    encoder.save_weights(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", help="torchvision ResNet .pth (a state_dict)")
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--output", required=True, help="Keras weights file, *.weights.h5")
    args = parser.parse_args(argv)
    try:
        out = convert_file(args.src, args.arch, args.output)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.arch} encoder; load with --encoder-weights {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
