"""keras-hub SegFormer presets as fcnseg checkpoints (``fcnseg import-preset``).

The model conversion is :func:`fcnseg.models.segformer.from_hub_segmenter`; this
module adds what a checkpoint needs beside the model: the class table of the
dataset the preset was trained on and its training size.
"""

from __future__ import annotations

import os

from fcnseg.models.mit import keras_hub_module, load_hub_preset
from fcnseg.models.segformer import from_hub_segmenter


def preset_classes(preset: str, num_classes: int, dataset: str = "auto"):
    """(source name, ClassTable) for a preset: Cityscapes' 19 train ids, ADE20K's 150, or generic names.

    ``dataset="auto"`` reads the dataset from the preset's name (or its folder's name).
    """
    from fcnseg.classes import table
    from fcnseg.errors import FcnsegError

    if dataset == "auto":
        base = os.path.basename(os.path.normpath(preset)).lower()
        dataset = "cityscapes" if "cityscapes" in base else "ade20k" if "ade20k" in base else "generic"
    if dataset == "cityscapes":
        from fcnseg.sources.cityscapes import CLASSES as table_ref
    elif dataset == "ade20k":
        from fcnseg.ade20k import ade20k_classes

        table_ref = ade20k_classes()
    else:
        # Distinct colours from a fixed hue walk, so predictions stay readable.
        rows = [(f"class_{i}", i, i, ((i * 97) % 256, (i * 57 + 80) % 256, (i * 151 + 160) % 256))
                for i in range(num_classes)]
        return "generic", table(rows)
    if table_ref.num_classes != num_classes:
        raise FcnsegError(f"{preset} predicts {num_classes} classes, not {dataset}'s {table_ref.num_classes}: "
                          "pass --classes generic")
    return dataset, table_ref


def import_preset(preset: str, output: str, dataset: str = "auto", overwrite: bool = False) -> dict:
    """Write keras-hub SegFormer preset ``preset`` (a name or a local preset directory) as the
    fcnseg checkpoint ``output`` that ``fcnseg predict/evaluate/export`` take.

    Args:
        preset: keras-hub preset name or local preset directory.
        output: the ``.keras`` file to write (atomically; an existing one only with ``overwrite``).
        dataset: ``auto`` (from the preset's name), ``cityscapes``, ``ade20k`` or ``generic``.
        overwrite: replace an existing ``output``.

    Returns:
        the checkpoint's metadata (model name, source with class table and the preset's image size).

    Raises:
        fcnseg.errors.FcnsegError: one line; offline with a preset name, it names the
            local-directory route.

    Example:
        >>> import_preset("segformer_b0_cityscapes_1024", "segformer_b0_cityscapes.keras")
    """
    from fcnseg import checkpoint
    from fcnseg.errors import FcnsegError
    from fcnseg.models.weights import WeightsError

    if os.path.exists(output) and not overwrite:
        raise FcnsegError(f"{output} exists: pass --overwrite to replace it")
    try:
        hub = keras_hub_module(f"fcnseg import-preset {preset}")
        segmenter = load_hub_preset(hub.models.SegFormerImageSegmenter, preset, "SegFormer")
    except WeightsError as e:
        raise FcnsegError(str(e).replace("then pass DIR", "then pass DIR as PRESET")) from None
    model = from_hub_segmenter(segmenter)
    name, classes = preset_classes(preset, segmenter.num_classes, dataset)
    converter = getattr(segmenter.preprocessor, "image_converter", None)
    size = converter.image_size if converter is not None and converter.image_size else None
    height, width = size or segmenter.backbone.image_encoder.image_shape[:2]
    meta = {"model": model.name, "encoder": model.name.removeprefix("segformer_"),
            "source": {"name": name, "image_size": [int(width), int(height)], "classes": classes.to_json()},
            "keras_hub_preset": preset}
    checkpoint.save(model, output, meta)
    return meta
