"""Loading checkpoints and bundles: safe, and every failure explains itself."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from engine.bundles import load_bundle
from engine.checkpoints import BundleError, load_published, read_weights
from engine.nets.flags import create_classifier, parse_flags
from engine.presets import PRESETS, get_preset


def test_parse_flags_string_and_dict():
    flags = parse_flags("--attention_resolutions 32,16,8 --class_cond True --image_size 128 --use_fp16=False")
    assert flags == {"attention_resolutions": "32,16,8", "class_cond": True, "image_size": 128, "use_fp16": False}
    assert parse_flags({"--image_size": "64", "learn_sigma": "true"}) == {"image_size": 64, "learn_sigma": True}
    with pytest.raises(ValueError, match="unknown flag --imagesize"):
        parse_flags("--imagesize 64")
    with pytest.raises(ValueError, match="expects True or False"):
        parse_flags("--class_cond maybe")
    with pytest.raises(ValueError, match="has no value"):
        parse_flags("--image_size")


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown preset 'gd-1024'"):
        get_preset("gd-1024")
    assert {"gd-128-denoiser", "gd-128-classifier", "robust-128-classifier"} <= set(PRESETS)


@pytest.fixture(scope="module")
def cifar_classifier_file(tmp_path_factory):
    torch.manual_seed(0)
    net = create_classifier(PRESETS["robust-cifar10-classifier"].flags)
    path = tmp_path_factory.mktemp("ckpt") / "robust_cifar.pt"
    torch.save(net.state_dict(), path)
    return path, net


def test_published_checkpoint_loads_and_matches(cifar_classifier_file):
    path, net = cifar_classifier_file
    loaded = load_published("robust-cifar10-classifier", path)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([5, 500])
    torch.testing.assert_close(loaded(x, t), net.eval()(x, t))


def test_layout_mismatch_names_keys_and_suggests_preset(cifar_classifier_file):
    path, _ = cifar_classifier_file
    with pytest.raises(BundleError) as info:
        load_published("gd-64-classifier", path)
    text = str(info.value)
    assert "mis-shaped keys" in text and "missing keys" in text
    assert "fits preset(s): robust-cifar10-classifier" in text


def test_missing_truncated_and_unsafe_files(tmp_path, cifar_classifier_file):
    with pytest.raises(BundleError, match="does not exist"):
        read_weights(tmp_path / "nope.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(BundleError, match="empty"):
        read_weights(empty)
    path, _ = cifar_classifier_file
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BundleError, match="truncated"):
        read_weights(truncated)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(BundleError):
        read_weights(evil)


def test_bundle_manifest_errors(tmp_path, tiny_bundle_dir):
    with pytest.raises(BundleError, match="no bundle"):
        load_bundle(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bad)
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((tiny_bundle_dir / "bundle.json").read_text())
    (broken / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(broken)


def test_bundle_describe_and_class_index(tiny_bundle):
    info = tiny_bundle.describe()
    assert set(info["guides"]) == {"vanilla", "robust", "nonrobust"}
    assert info["guides"]["nonrobust"]["time_dependent"] is False
    assert tiny_bundle.class_index("7") == 7 and tiny_bundle.class_index(3) == 3
    with pytest.raises(ValueError, match="out of range"):
        tiny_bundle.class_index(12)
    with pytest.raises(ValueError, match="unknown class"):
        tiny_bundle.class_index("cat")


# --------------------------------------------------------------------------- hostile and broken model files
class _RunsShell:
    """Pickles into a call of os.system: loading it unsafely would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


class _SomeObject:
    pass


def _assert_refused_for_safety(text: str, offending: str) -> None:
    assert "refused for safety" in text and offending in text, text
    # never blame the download, never suggest the unsafe way round
    for wrong in ("truncated", "download it again", "weights_only=False", "weights_only` set to `False",
                  "add_safe_globals", "trust"):
        assert wrong not in text, (wrong, text)


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2"])
def test_a_pickle_that_would_run_code_is_refused_naming_the_global(tmp_path, writer):
    import os

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _RunsShell(marker)}, path)
    else:  # a legacy-format pickle; a pickled tensor would be refused first, under its own name
        path.write_bytes(pickle.dumps({"w": [0.0], "x": _RunsShell(marker)}, protocol=2))
    with pytest.raises(BundleError) as info:
        read_weights(path)
    text = str(info.value)
    _assert_refused_for_safety(text, f"{os.system.__module__}.system")
    assert "code" in text and str(path) in text
    assert not marker.exists()


@pytest.mark.parametrize("obj, name", [
    (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
    (_SomeObject(), f"{__name__}._SomeObject"),
])
def test_a_pickled_object_is_refused_naming_its_class(tmp_path, obj, name):
    path = tmp_path / "object.pt"
    torch.save({"model": obj}, path)
    with pytest.raises(BundleError) as info:
        read_weights(path)
    text = str(info.value)
    _assert_refused_for_safety(text, name)
    assert "state_dict()" in text  # says how to re-save it as tensors


def test_a_plain_pickle_or_foreign_file_is_not_blamed_on_the_download(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=5))  # pickle.dump, not torch.save
    with pytest.raises(BundleError) as info:
        read_weights(path)
    text = str(info.value)
    assert "not a PyTorch checkpoint" in text and "pickle instruction" in text
    assert "torch.save" in text and "weights_only=False" not in text


def _model_file_with(tmp_path, tiny_bundle_dir, change):
    data = torch.load(tiny_bundle_dir / "judge.pt", weights_only=True)
    change(data)
    path = tmp_path / "judge.pt"
    torch.save(data, path)
    return path


def test_a_state_dict_with_a_non_tensor_value_names_the_key(tmp_path, tiny_bundle_dir):
    from engine.checkpoints import load_model_file

    def change(data):
        data["state_dict"]["fc.weight"] = [1.0, 2.0]
        data["state_dict"]["extra"] = 3

    path = _model_file_with(tmp_path, tiny_bundle_dir, change)
    with pytest.raises(BundleError) as info:
        load_model_file(path)
    text = str(info.value)
    assert str(path) in text and "not tensors" in text
    assert "fc.weight (list)" in text and "extra (int)" in text


@pytest.mark.parametrize("key", ["architecture", "config", "state_dict"])
def test_a_model_file_missing_a_header_entry_says_which(tmp_path, tiny_bundle_dir, key):
    from engine.checkpoints import load_model_file

    path = _model_file_with(tmp_path, tiny_bundle_dir, lambda data: data.pop(key))
    with pytest.raises(BundleError) as info:
        load_model_file(path)
    text = str(info.value)
    assert str(path) in text and f"no {key!r} entry" in text and "python -m train" in text


def test_a_model_file_with_a_wrong_header_type_says_which(tmp_path, tiny_bundle_dir):
    from engine.checkpoints import load_model_file

    path = _model_file_with(tmp_path, tiny_bundle_dir, lambda data: data.update(config=[1, 2]))
    with pytest.raises(BundleError, match=r"'config' entry is a list, expected a dict"):
        load_model_file(path)


def test_the_lab_command_line_explains_a_broken_model_file(tmp_path, tiny_bundle_dir):
    import shutil

    from app.__main__ import main

    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, folder)
    data = torch.load(folder / "vanilla.pt", weights_only=True)
    data["state_dict"]["extra"] = "not a tensor"
    torch.save(data, folder / "vanilla.pt")
    with pytest.raises(SystemExit) as info:
        main(["--bundle", str(folder), "--port", "1", "--no-survey"])
    text = str(info.value)
    assert "Cannot load the models" in text and "vanilla.pt" in text and "extra (str)" in text


def test_bundle_dataset_comes_from_the_manifest_or_the_training_record(tiny_bundle):
    """The held-out split every command scores against follows the bundle's own data:
    the manifest's ``data`` first, else the split its denoiser (or judge) was trained on."""
    manifest = tiny_bundle.manifest
    saved = json.loads(json.dumps(manifest))
    try:
        manifest.clear()
        assert tiny_bundle.dataset is None
        manifest["judge"] = {"training": {"split": {"source": "fashion-mnist"}}}
        assert tiny_bundle.dataset == "fashion-mnist"
        manifest["denoiser"] = {"training": {"split": {"source": "mnist"}}}
        assert tiny_bundle.dataset == "mnist"
        manifest["data"] = "some/folder"
        assert tiny_bundle.dataset == "some/folder"
    finally:
        manifest.clear()
        manifest.update(saved)
