"""Dataset sources (``fcnseg.sources``): one module per dataset in this folder.

Each module defines ``make_source(data_dir, image_size=None, seed=0, **options)``
and draws the folder tree it expects in its docstring; ``fcnseg.source`` states
the contract a source keeps. Nothing is imported until a source is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from fcnseg.errors import FcnsegError

if TYPE_CHECKING:
    from fcnseg.source import Source

# name -> module; a plain dict, so the built-ins are visible at a glance.
BUILTIN: dict[str, str] = {
    "synthetic": "fcnseg.sources.synthetic",
    "kitti": "fcnseg.sources.kitti",
    "cityscapes": "fcnseg.sources.cityscapes",
    "camvid": "fcnseg.sources.camvid",
    "folder": "fcnseg.sources.folder",
    "lyft": "fcnseg.sources.lyft",
    "bdd100k": "fcnseg.sources.bdd100k",
    "carvana": "fcnseg.sources.carvana",
}

ENTRY_POINT_GROUP = "fcnseg.sources"


def available() -> dict[str, str]:
    """Every source name this installation knows: built-ins, then plugins
    registered by other packages under the ``fcnseg.sources`` entry point group."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _module_for(name: str):
    if name.endswith(".py") or os.sep in name:
        if not os.path.isfile(name):
            raise FcnsegError(f"--data-source {name}: no such source file")
        spec = importlib.util.spec_from_file_location(f"fcnseg_user_source_{abs(hash(name))}", name)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a user's file: report where it broke, in one line
            raise FcnsegError(f"--data-source {name}: could not import it: {type(e).__name__}: {e}") from e
        return module
    known = available()
    if name not in known:
        raise FcnsegError(f"--data-source {name!r} is unknown; choose one of {', '.join(sorted(known))}"
                          " or give the path of a source .py file")
    target = known[name]
    module = importlib.import_module(target.split(":")[0])
    return module


def load(name: str, data_dir: str | None = None, image_size: tuple[int, int] | None = None, seed: int = 0, *,
         collect_orphans: bool = False, **options) -> Source:
    """Build the source called ``name`` (a built-in, a plugin or a .py path) and check that it
    keeps ``fcnseg.source.Source``'s contract.

    ``collect_orphans``: a file source records unpaired images and labels (``orphans_of``)
    instead of failing on the first, as check-labels needs; ``options`` are --source-option's.
    """
    from fcnseg.classes import ClassTable
    from fcnseg.source import CONTRACT, FileSource

    if not isinstance(collect_orphans, bool):  # --source-option collect_orphans=...: not a dataset option
        raise FcnsegError("--source-option collect_orphans: the sources have no such option")
    module = _module_for(name)
    make = getattr(module, "make_source", None)
    if make is None:
        raise FcnsegError(f"--data-source {name}: the module defines no make_source(data_dir, image_size, seed, ...)")
    params = inspect.signature(make).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in options:
        if not takes_any and key not in params:
            raise FcnsegError(f"--source-option {key}: the {name} source has no such option")
    passes_orphans = collect_orphans and (takes_any or "collect_orphans" in params)
    try:
        source = make(data_dir, image_size=image_size, seed=seed, **options,
                      **({"collect_orphans": True} if passes_orphans else {}))
    except TypeError as e:
        if "abstract" in str(e):  # a DataSource/FileSource subclass that lacks a method to write
            raise FcnsegError(f"--data-source {name}: {e}") from e
        raise FcnsegError(f"--source-option: {name}: {e}") from e
    if collect_orphans and not passes_orphans and isinstance(source, FileSource):
        source.orphans = []  # a make_source written before the option: collect all the same
    # dir(), not hasattr(): hasattr would run properties such as num_validation,
    # listing every split (and failing on data that has only some of them).
    missing = [a for a in CONTRACT if a not in dir(source)]
    if missing:
        raise FcnsegError(f"--data-source {name}: the source lacks {', '.join(missing)} (subclass "
                          "fcnseg.source.DataSource or FileSource; see the fcnseg.source docstring)")
    if not isinstance(source.classes, ClassTable):
        raise FcnsegError(f"--data-source {name}: the source's classes is a {type(source.classes).__name__}, "
                          "not a ClassTable (build it with fcnseg.classes.table)")
    return source
