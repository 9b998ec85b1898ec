"""Naming the file behind a tf.data pipeline failure (corrupt, truncated, too large,
mismatched) with check-labels' own checks, for training and evaluation alike."""

from __future__ import annotations

import re

from fcnseg.check_labels import PIPELINE_FAILURES, check_labels
from fcnseg.errors import FcnsegError


def find_unreadable(source, splits=("train", "val")) -> str | None:
    """One line naming the first missing/corrupt file or size mismatch, else None."""
    if getattr(source, "cached_samples", None) is None:
        return None
    for split in splits:
        try:
            report = check_labels(source, (split,), values=False, num_previews=0)
        except FcnsegError:  # e.g. an empty split: not what broke the pipeline
            continue
        first = next((p for p in report.problems if p.reason in PIPELINE_FAILURES), None)
        if first is not None:
            return f"{first.path}: {first.message}" + (f" ({first.detail})" if first.detail else "")
    return None


def pipeline_error(error: Exception, source) -> str:
    """One line naming the file at fault for a tf.data failure (``error``) of ``source``'s pipeline."""
    bad = find_unreadable(source)
    if bad:
        return bad
    first = str(getattr(error, "message", error)).strip().splitlines()[0]
    # The pipeline's own checks (fcnseg.data) are asserts whose message names the file.
    asserted = re.search(r"assertion failed: \[(.*)\]", first)
    if asserted:
        return asserted.group(1).replace("] [", " ")
    return f"the input pipeline of the {source.name} source failed: {first}"
