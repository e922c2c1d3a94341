"""Loading checkpoints and bundles: safe, and every failure explains itself."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from engine.bundles import BundleError, load_bundle, load_published, read_weights
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
