"""Several shipped bundles (engine/bundle_index.py): models/NAME/ folders, the default
from models/index.json, and --bundle NAME|PATH at every front door, with a clear error
listing the shipped bundles for a name that is none of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from engine.bundle_index import (UnknownBundle, default_bundle_dir, default_bundle_name, models_root,
                                 resolve_bundle, shipped_bundles, writable_bundle_dir)
from engine.bundles import load_bundle
from engine.checkpoints import BundleError


def _models(tmp_path: Path, tiny_bundle_dir: Path, names: list[str], index: dict | None = None) -> Path:
    """A models folder holding a copy of the tiny bundle under each name."""
    root = tmp_path / "models"
    for name in names:
        shutil.copytree(tiny_bundle_dir, root / name)
        manifest = json.loads((root / name / "bundle.json").read_text())
        manifest["name"] = f"{name}-title"
        (root / name / "bundle.json").write_text(json.dumps(manifest))
    root.mkdir(exist_ok=True)
    if index is not None:
        (root / "index.json").write_text(json.dumps(index))
    return root


def test_the_checkout_ships_mnist_in_its_own_folder_and_names_a_default():
    root = models_root()
    assert root == ROOT / "models"
    names = [b.name for b in shipped_bundles()]
    assert "mnist" in names and not (root / "bundle.json").exists()  # no bundle at the top level any more
    index = json.loads((root / "index.json").read_text())
    assert index["default"] in names and set(index["order"]) <= set(names) and index["why"]
    assert default_bundle_name() == index["default"] and default_bundle_dir() == root / index["default"]


def test_default_follows_the_index_else_the_first_alphabetically(tmp_path, tiny_bundle_dir):
    root = _models(tmp_path, tiny_bundle_dir, ["zeta", "alpha", "mid"])
    assert [b.name for b in shipped_bundles(root)] == ["alpha", "mid", "zeta"]
    assert default_bundle_name(root) == "alpha"  # no index
    (root / "index.json").write_text(json.dumps({"default": "zeta", "order": ["zeta", "mid"], "why": "measured"}))
    assert [b.name for b in shipped_bundles(root)] == ["zeta", "mid", "alpha"]  # unlisted ones follow
    assert default_bundle_name(root) == "zeta" and default_bundle_dir(root) == root / "zeta"
    (root / "index.json").write_text(json.dumps({"default": "gone", "order": ["mid"]}))
    assert default_bundle_name(root) == "mid"  # a default that is not shipped: the first in order
    (root / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json"):
        default_bundle_name(root)


def test_a_bundle_is_named_by_folder_title_or_path(tmp_path, tiny_bundle_dir):
    root = _models(tmp_path, tiny_bundle_dir, ["mnist", "fashion-mnist"], {"default": "fashion-mnist"})
    assert resolve_bundle("mnist", root) == root / "mnist"
    assert resolve_bundle("fashion-mnist-title", root) == root / "fashion-mnist"  # the manifest's own name
    assert resolve_bundle(None, root) == resolve_bundle("", root) == root / "fashion-mnist"
    assert resolve_bundle(str(tiny_bundle_dir), root) == tiny_bundle_dir
    assert resolve_bundle(tiny_bundle_dir / "bundle.json", root) == tiny_bundle_dir / "bundle.json"
    assert resolve_bundle("./not/there", root) == Path("./not/there")  # a path: loading says what is missing
    with pytest.raises(UnknownBundle) as info:
        resolve_bundle("cifar", root)
    assert "'cifar'" in str(info.value) and "mnist" in str(info.value) and "fashion-mnist (default)" in str(info.value)
    assert writable_bundle_dir("cifar", root) == root / "cifar"  # train.bundle add builds a new one there
    assert writable_bundle_dir("mnist", root) == root / "mnist"


def test_load_bundle_takes_a_shipped_name_and_refuses_an_unknown_one_listing_the_choices():
    bundle = load_bundle("mnist")
    assert Path(bundle.source) == models_root() / "mnist" and bundle.class_names[3] == "3"
    with pytest.raises(BundleError) as info:
        load_bundle("no-such-bundle")
    text = str(info.value)
    assert "no-such-bundle" in text and all(b.name in text for b in shipped_bundles())


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.parametrize("argv", [
    ["app", "--bundle", "nonesuch", "--port", "1"],
    ["train.sample", "--bundle", "nonesuch", "--out", "/tmp/unused-rcg", "--num-samples", "1"],
    ["train.evaluate", "--bundle", "nonesuch", "--out", "/tmp/unused-rcg", "--methods", "vanilla:1"],
    ["train.alignment", "--bundle", "nonesuch", "--n", "1"],
    ["train.ablation", "/nonexistent.pt", "--bundle", "nonesuch", "--out", "/tmp/unused-rcg.json"],
    ["train.bundle", "show", "--bundle", "nonesuch"],
    ["survey", "create", "--db", "/tmp/unused-rcg.db", "--name", "x", "--from-bundle", "nonesuch"],
])
def test_every_front_door_names_the_shipped_bundles_for_an_unknown_name(argv):
    proc = _run(*argv)
    assert proc.returncode != 0
    assert "no bundle named 'nonesuch'" in proc.stderr and "mnist" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_front_doors_open_a_shipped_bundle_by_name(tmp_path):
    out = tmp_path / "samples"
    proc = _run("train.sample", "--bundle", "mnist", "--out", str(out), "--num-samples", "1", "--respacing", "2",
                "--guides", "vanilla", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(out.rglob("*.npz"))
    proc = _run("train.bundle", "list")
    assert proc.returncode == 0 and f"* {default_bundle_name()}" in proc.stdout
    assert all(b.name in proc.stdout for b in shipped_bundles())
