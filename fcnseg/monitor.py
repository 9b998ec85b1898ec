"""``--monitor``: the validation figure that picks best.keras, as an expression over one split's scores.

An expression is a weighted sum of terms, each a figure of :func:`fcnseg.metrics.scores`::

    mean_iou | pixel_accuracy | mean_accuracy | dice      (dice: mean Dice over classes present)
    iou(CLASS) | dice(CLASS) | precision(CLASS) | recall(CLASS) | fbeta(CLASS,BETA)
    lyft                                                   the Lyft challenge score,
                                                           (F0.5(road) + F2(vehicles)) / 2

e.g. ``"fbeta(road,0.5)+fbeta(vehicles,2)"``, ``"0.5*iou(car)+0.5*dice"``. Higher is better.
Class names are the source's; a per-class figure of a class absent from both the labels
and the predictions counts 0. Plain Python, no TensorFlow: the options check parses it
before anything is loaded.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from fcnseg.errors import FcnsegError

NAMED = ("mean_iou", "pixel_accuracy", "mean_accuracy", "dice", "lyft")
PER_CLASS = ("iou", "dice", "precision", "recall", "fbeta")  # figures of one class: NAME(CLASS)
_TERM = re.compile(r"^(?:([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*\*\s*)?([a-z_]+)\s*(?:\(([^()]*)\))?$")
Term = tuple[float, str, tuple]  # (weight, figure, (class[, beta]))


def parse(expr: str) -> list[Term]:
    """The terms of ``expr``; a one-line FcnsegError saying what is wrong."""
    if not isinstance(expr, str) or not expr.strip():
        raise FcnsegError(f"--monitor {expr!r}: empty; e.g. mean_iou or 'fbeta(road,0.5)+fbeta(vehicles,2)'")
    terms: list[Term] = []
    for text in expr.replace(" ", "").lower().split("+"):
        m = _TERM.match(text)
        if not m:
            raise FcnsegError(f"--monitor {expr!r}: cannot read {text!r}; a term is [WEIGHT*]NAME or "
                              "[WEIGHT*]NAME(CLASS[,BETA])")
        weight, name, args = float(m.group(1) or 1.0), m.group(2), m.group(3)
        if args is None:
            if name not in NAMED:
                raise FcnsegError(f"--monitor {expr!r}: unknown figure {name!r}; choose from "
                                  f"{', '.join(NAMED)} or {', '.join(f'{n}(CLASS)' for n in PER_CLASS)}")
            terms += _named(weight, name)
            continue
        if name not in PER_CLASS:
            raise FcnsegError(f"--monitor {expr!r}: {name}(...) is not a per-class figure; choose from "
                              f"{', '.join(PER_CLASS)}")
        parts = args.split(",")
        if len(parts) != (2 if name == "fbeta" else 1) or not parts[0]:
            raise FcnsegError(f"--monitor {expr!r}: {name} takes " + (
                "(CLASS,BETA), e.g. fbeta(road,0.5)" if name == "fbeta" else "(CLASS)"))
        if name == "fbeta":
            try:
                beta = float(parts[1])
            except ValueError:
                beta = -1.0
            if not (beta > 0 and math.isfinite(beta)):
                raise FcnsegError(f"--monitor {expr!r}: the beta of {text} must be a positive number")
            terms.append((weight, name, (parts[0], beta)))
        else:
            terms.append((weight, name, (parts[0],)))
    return terms


def _named(weight: float, name: str) -> list[Term]:
    if name == "lyft":  # vehicles: the lyft source's name; "car" also matches (see check_classes)
        return [(weight / 2, "fbeta", ("road", 0.5)), (weight / 2, "fbeta", ("vehicles", 2.0))]
    return [(weight, name, ())]


def problem(expr) -> str | None:
    """What is wrong with ``expr`` (for the options check), or None."""
    try:
        parse(expr)
    except FcnsegError as e:
        return str(e).removeprefix("--monitor ")
    return None


def resolve(expr: str, class_names: Sequence[str]) -> list[Term]:
    """The terms with class names checked against the source's (case-insensitive); a one-line
    FcnsegError naming the unknown class and the source's classes."""
    by_lower = {n.lower(): n for n in class_names}
    aliases = {"vehicles": "car", "car": "vehicles"}  # the lyft score reads either
    out = []
    for weight, name, args in parse(expr):
        if args:
            cls = args[0]
            found = by_lower.get(cls) or by_lower.get(aliases.get(cls, ""))
            if found is None:
                raise FcnsegError(f"--monitor {expr!r}: no class {cls!r} in this source; its classes are "
                                  + ", ".join(class_names))
            args = (found,) + args[1:]
        out.append((weight, name, args))
    return out


def value(expr: str, scores: dict) -> float:
    """The expression's value for ``scores`` (as :func:`fcnseg.metrics.scores` returns them)."""
    total = 0.0
    for weight, name, args in resolve(expr, list(scores["per_class"])):
        total += weight * _figure(scores, name, args)
    return total


def _figure(scores: dict, name: str, args: tuple) -> float:
    if not args:
        return float(scores["mean_dice"] if name == "dice" else scores[name])
    row = scores["per_class"][args[0]]
    if name == "fbeta":
        return fbeta(row["precision"], row["accuracy"], args[1])
    got = row[{"recall": "accuracy"}.get(name, name)]
    return 0.0 if got is None else float(got)


def fbeta(precision: float | None, recall: float | None, beta: float) -> float:
    """F-beta from precision and recall (None where undefined: no predictions / no pixels of the
    class), equal to (1 + b^2) TP / (b^2 |Y| + |P|) from the confusion matrix."""
    if precision is None or recall is None or precision + recall == 0:
        return 0.0  # TP = 0 whenever either is undefined
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)
