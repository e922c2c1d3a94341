"""The shipped bundles: which ones there are, which one is the default, and what a
``--bundle`` value names.

``models/`` holds one folder per bundle (``models/mnist/bundle.json`` + model files,
``models/fashion-mnist/...``) and a small index, ``models/index.json``::

    {"default": "mnist", "order": ["mnist", "fashion-mnist"], "why": "..."}

``default`` is the bundle ``python -m app`` and every command open when none is named
(chosen from measurements; ``why`` says which); ``order`` is the order the lab lists
them in (bundles it does not name follow alphabetically). Without an index, or when its
default is not shipped, the default is the first bundle in that order.

A ``--bundle`` value is a bundle *name* (the folder's name under ``models/``, or the
``name`` in its bundle.json) or a *path* (a bundle folder or its bundle.json):
:func:`resolve_bundle` turns either into a folder and names the shipped bundles when it
matches none. The models folder is ``$RCG_MODELS_DIR`` when set, else ``models/`` of
the checkout this code runs from, else the copy ``pip install`` put beside the packages
(the data package ``rcg_models``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsonfile import read_json_object

INDEX_FILE = "index.json"
MANIFEST = "bundle.json"
MODELS_DIR_ENV = "RCG_MODELS_DIR"  # another folder of bundles (e.g. a deployment's own), same layout
FALLBACK_NAME = "mnist"  # where the project's demo bundle is built when none is shipped yet


class UnknownBundle(LookupError):
    """A ``--bundle`` value that is neither a shipped bundle's name nor a bundle path."""


@dataclass(frozen=True)
class ShippedBundle:
    """One folder of the models folder that holds a bundle.json."""

    name: str  # the folder's name, e.g. "mnist"
    folder: Path
    title: str  # the manifest's own "name" (e.g. "mnist-demo"), or the folder's name

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "folder": str(self.folder), "title": self.title}


def _holds_bundles(folder: Path) -> bool:
    return folder.is_dir() and ((folder / INDEX_FILE).is_file() or any(folder.glob(f"*/{MANIFEST}")))


def models_root() -> Path:
    """The folder of the shipped bundles: ``$RCG_MODELS_DIR`` when set (a folder of
    bundle folders of one's own), else the checkout's ``models/`` when it holds any,
    else the installed ``rcg_models`` package's folder when it does, else the checkout
    path (where ``python -m train.bundle add`` builds one)."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV]).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent / "models"
    if _holds_bundles(checkout):
        return checkout
    spec = importlib.util.find_spec("rcg_models")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if _holds_bundles(Path(location)):
            return Path(location).resolve()
    return checkout


def read_index(root: Path | None = None) -> dict[str, Any]:
    """``index.json`` of the models folder, or {} when there is none (a broken file is
    an error: the lead's choice of default must not be ignored silently)."""
    path = (root or models_root()) / INDEX_FILE
    if not path.is_file():
        return {}
    return read_json_object(path, ValueError, "the bundle index: an object with 'default' and 'order'")


def _title(folder: Path) -> str:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return folder.name
    return str(manifest.get("name") or folder.name) if isinstance(manifest, dict) else folder.name


def shipped_bundles(root: Path | None = None) -> list[ShippedBundle]:
    """Every ``<root>/*/bundle.json``, in the index's ``order``, the rest alphabetically."""
    root = root or models_root()
    if not root.is_dir():
        return []
    found = {p.parent.name: p.parent for p in sorted(root.glob(f"*/{MANIFEST}")) if p.is_file()}
    order = [n for n in read_index(root).get("order", []) if n in found]
    names = order + sorted(n for n in found if n not in order)
    return [ShippedBundle(n, found[n], _title(found[n])) for n in names]


def default_bundle_name(root: Path | None = None) -> str | None:
    """The index's ``default`` when that bundle is shipped, else the first in order; None
    when nothing is shipped."""
    root = root or models_root()
    bundles = shipped_bundles(root)
    if not bundles:
        return None
    wanted = read_index(root).get("default")
    names = [b.name for b in bundles]
    return wanted if wanted in names else names[0]


def default_bundle_dir(root: Path | None = None) -> Path:
    """The default bundle's folder (``models/<default>``); ``models/mnist`` when no
    bundle is shipped, so the message of a missing bundle names where it belongs."""
    root = root or models_root()
    name = default_bundle_name(root)
    return root / (name or FALLBACK_NAME)


def choices_text(root: Path | None = None) -> str:
    """'mnist, fashion-mnist' (default first marked), for messages."""
    root = root or models_root()
    bundles = shipped_bundles(root)
    if not bundles:
        return f"none shipped in {root}"
    default = default_bundle_name(root)
    return ", ".join(b.name + (" (default)" if b.name == default else "") for b in bundles)


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith((".", "~")) or text.endswith(".json")


def resolve_bundle(spec: str | Path | None, root: Path | None = None) -> Path:
    """The folder (or bundle.json) a ``--bundle`` value names.

    - None or "": the default bundle's folder;
    - an existing bundle folder or bundle.json: itself;
    - a shipped bundle's name (folder name, or the ``name`` in its bundle.json): its folder;
    - anything else that looks like a path (has a ``/``, starts with ``.`` or ``~``,
      ends in ``.json``) or exists: itself (loading then says what is missing there);
    - any other word: :class:`UnknownBundle`, listing the shipped bundles."""
    root = root or models_root()
    if spec is None or str(spec).strip() == "":
        return default_bundle_dir(root)
    text = str(spec).strip()
    path = Path(text).expanduser()
    if (path / MANIFEST).is_file() or (path.is_file() and path.name.endswith(".json")):
        return path
    if not _looks_like_path(text):
        bundles = shipped_bundles(root)
        for b in bundles:
            if b.name == text:
                return b.folder
        titled = [b for b in bundles if b.title == text]
        if len(titled) == 1:
            return titled[0].folder
        if not path.exists():
            raise UnknownBundle(f"no bundle named {text!r}: the shipped bundles are {choices_text(root)} "
                                "(or give a bundle folder's path)")
    return path


def writable_bundle_dir(spec: str | Path | None, root: Path | None = None) -> Path:
    """The folder a command that *writes* a bundle (``train.bundle add``) should use: as
    :func:`resolve_bundle`, except that a new bare name makes ``<models>/<name>``, so
    ``--bundle fashion-mnist`` builds ``models/fashion-mnist/``."""
    root = root or models_root()
    try:
        return resolve_bundle(spec, root)
    except UnknownBundle:
        return root / str(spec).strip()


__all__ = ["MODELS_DIR_ENV", "ShippedBundle", "UnknownBundle", "choices_text", "default_bundle_dir",
           "default_bundle_name", "models_root", "read_index", "resolve_bundle", "shipped_bundles",
           "writable_bundle_dir"]
