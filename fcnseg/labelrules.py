"""Rules about label files that the training pipeline (TensorFlow ops, ``fcnseg.data``) and
``fcnseg check-labels`` (numpy) must apply identically, so they live below both."""

from __future__ import annotations

INTERPOLATED_MIN_PIXELS = 20  # at least this many "between" pixels...
INTERPOLATED_MIN_SHARE = 0.1  # ...and this share of class-border pixels (clean CamVid labels: at most 0.02)


def looks_interpolated(n_between, n_border):
    """Whether a label was resized with interpolation, from the count of pixels whose value lies
    between their neighbours' and the count of class-border pixels; numbers and tensors alike."""
    return (n_between >= INTERPOLATED_MIN_PIXELS) & (n_between >= INTERPOLATED_MIN_SHARE * n_border)
