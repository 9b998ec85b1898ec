"""What ``fcnseg models`` prints: the model table and the encoder table, read from
``fcnseg.models.MODELS`` / ``MODEL_ENCODERS`` and ``fcnseg.models.encoders.ENCODERS``.

Nothing here lists a model or an encoder by name: a model registered in those
tables shows up by itself. Parameter counts need the networks built (ResNet101
or EfficientNet-B4 take seconds each on a CPU), so they are counted only when
asked for (``fcnseg models --params``); the plain listing builds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelRow:
    name: str
    encoders: tuple[str, ...]  # default first
    summary: str  # first line of the builder's docstring
    params: int | None = None  # on its default encoder at width 1, when counted


@dataclass(frozen=True)
class EncoderRow:
    name: str
    channels: tuple[int, ...]  # at strides 2, 4, 8, 16, 32, width 1
    preprocessing: str  # what the ImageNet weights expect, in words
    weights: str  # where --encoder-weights imagenet comes from
    scales_with_width: bool
    params: int | None = None  # at width 1, when counted


def model_rows(params: bool = False, num_classes: int = 11, only: tuple[str, ...] = ()) -> list[ModelRow]:
    """One row per model of ``MODELS`` (or of those in ``only``); with ``params`` each is built
    (default encoder, width 1, ``num_classes`` outputs, random weights) and its parameters counted."""
    from fcnseg.models import MODEL_ENCODERS, MODELS

    rows = []
    for name, builder in MODELS.items():
        if only and name not in only:
            continue
        encoders = tuple(MODEL_ENCODERS[name])
        doc = (builder.__doc__ or "").strip().splitlines()
        count = _count(builder(num_classes, encoder=encoders[0])) if params else None
        rows.append(ModelRow(name, encoders, doc[0] if doc else "", count))
    return rows


def encoder_rows(params: bool = False, only: tuple[str, ...] = ()) -> list[EncoderRow]:
    """One row per encoder of ``ENCODERS`` (or of ``only``); with ``params`` each is built at width 1
    and its parameters counted."""
    from fcnseg.models.encoders import ENCODERS, PREPROCESSING, build_encoder

    rows = []
    for name, row in ENCODERS.items():
        if only and name not in only:
            continue
        count = _count(build_encoder(name)) if params else None
        rows.append(EncoderRow(name, tuple(row.channels), PREPROCESSING[row.preprocess][1], row.weights,
                               row.scales_with_width, count))
    return rows


def _count(model) -> int:
    count = int(model.count_params())
    import keras

    keras.backend.clear_session()  # a dozen ImageNet-sized graphs must not pile up in memory
    return count


def _millions(count: int | None) -> str:
    return "" if count is None else f"{count / 1e6:.2f}M"


def format_catalog(models: list[ModelRow], encoders: list[EncoderRow]) -> str:
    """The two tables ``fcnseg models`` prints."""
    counted = any(m.params is not None for m in models)
    lines = ["Models (fcnseg train --model NAME --encoder ENCODER; the first encoder is the default):"]
    width = max([len(m.name) for m in models] + [5])
    for m in models:
        params = f"  {_millions(m.params):>8}" if counted else ""
        lines.append(f"  {m.name:<{width}}{params}  encoders: {', '.join(m.encoders)}")
        if m.summary:
            lines.append(f"  {'':<{width}}{' ' * len(params)}  {m.summary}")
    if counted:
        lines.append("  (parameters: default encoder, width 1, random weights)")
    lines += ["", "Encoders (channels at strides 2/4/8/16/32, - where it has none; --width narrows those marked *; "
                  "ImageNet weights with --encoder-weights imagenet):"]
    width = max([len(e.name) for e in encoders] + [7]) + 1
    for e in encoders:
        name = e.name + ("*" if e.scales_with_width else "")
        params = f"  {_millions(e.params):>8}" if any(r.params is not None for r in encoders) else ""
        lines.append(f"  {name:<{width}}{params}  {'/'.join(str(c) if c else '-' for c in e.channels):<22}  "
                     f"weights: {e.weights}; input: {e.preprocessing}")
    if not counted:
        lines += ["", "Parameter counts: fcnseg models --params (builds every network; slow)."]
    lines.append("Every model takes RGB 0..255 images; the encoder's preprocessing is inside the model.")
    return "\n".join(lines)
