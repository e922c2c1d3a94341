"""engine/comparisons.py (the judge's verdict per image, the difference of two columns),
the shared-scale signed colour map, and engine.probes.transfer_batch (the lab's batch
attack) against the instrument it wraps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import viz
from engine.alignment import AlignmentSettings, measure_alignment
from engine.comparisons import column_difference, judge_probabilities, judge_verdicts
from engine.guidance import GuidanceConfig, unguided
from engine.probes import transfer_batch


@pytest.fixture(scope="module")
def run(tiny_bundle):
    configs = [GuidanceConfig(name="vanilla", classifier="vanilla", scale=4.0), unguided(),
               GuidanceConfig(name="robust", classifier="robust", scale=4.0)]
    return tiny_bundle.sample(configs, [3, 3, 7], [0, 1, 2], respacing="3")


def test_verdicts_are_the_judges_argmax_and_its_probability(tiny_bundle, run):
    verdicts = judge_verdicts(tiny_bundle.judge, run)
    assert [(v.column, v.seed, v.requested) for v in verdicts] == [(c, s, y) for c in ("vanilla", "unguided", "robust")
                                                                  for s, y in ((0, 3), (1, 3), (2, 7))]
    for column in ("vanilla", "unguided", "robust"):
        with torch.no_grad():
            probs = torch.softmax(tiny_bundle.judge(run.images[column]).float(), -1)
        mine = [v for v in verdicts if v.column == column]
        assert [v.predicted for v in mine] == probs.argmax(-1).tolist()
        assert [v.probability for v in mine] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-6)
        assert [v.requested_probability for v in mine] == pytest.approx([float(probs[i, y]) for i, y in
                                                                        enumerate((3, 3, 7))], abs=1e-6)
        assert [v.agrees for v in mine] == [int(probs[i].argmax()) == y for i, y in enumerate((3, 3, 7))]
    assert judge_probabilities(tiny_bundle.judge, run.images["robust"], batch_size=2).sum(-1).tolist() == \
        pytest.approx([1.0] * 3)
    with pytest.raises(KeyError, match="no column 'nobody'"):
        judge_verdicts(tiny_bundle.judge, run, ["nobody"])


def test_difference_of_two_columns_is_their_pixelwise_difference(run):
    diff = column_difference(run, "robust", "vanilla")
    expected = run.images["robust"] - run.images["vanilla"]
    assert torch.equal(diff.delta, expected) and diff.seeds == [0, 1, 2]
    assert diff.l2 == pytest.approx(expected.flatten(1).norm(dim=1).tolist())
    assert diff.linf == pytest.approx(expected.flatten(1).abs().max(1).values.tolist())
    assert diff.scale == pytest.approx(float(expected.abs().max())) and diff.scale > 0
    same = column_difference(run, "unguided", "unguided")
    assert same.scale == 0 and not same.delta.any()
    with pytest.raises(KeyError):
        column_difference(run, "robust", "nobody")


def test_signed_colours_share_one_scale():
    values = torch.tensor([0.0, 0.5, 1.0, -1.0, 3.0]).reshape(1, 1, 1, 5)
    rgb = viz.signed_colours(values, scale=1.0)[0, 0]
    assert rgb[0].tolist() == [255, 255, 255]  # 0 is white
    assert rgb[2].tolist() == [255, 0, 0] and rgb[3].tolist() == [0, 0, 255]  # +scale red, -scale blue
    assert rgb[1].tolist() == [255, 128, 128] and rgb[4].tolist() == [255, 0, 0]  # halfway; clipped beyond
    two = torch.stack([values[0], values[0] / 2])
    pictures = viz.signed_colours(two, scale=1.0)
    assert not np.array_equal(pictures[0], pictures[1])  # not normalised per image


def test_transfer_batch_is_measure_alignment_with_the_bundles_models(tiny_bundle):
    images = torch.rand(5, 1, 28, 28) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 4])
    settings = AlignmentSettings(timesteps=(0, 40), radii=(3.0,), steps=2, seed=5)
    mine = transfer_batch(tiny_bundle, images, labels, settings, ["vanilla", "robust"], keep_examples=5)
    direct = measure_alignment({g: tiny_bundle.guides[g] for g in ("vanilla", "robust")}, tiny_bundle.judge, images,
                               labels, settings, diffusion=tiny_bundle.diffusion(""), denoiser=tiny_bundle.denoiser,
                               null_label=tiny_bundle.null_label, num_classes=tiny_bundle.num_classes)
    assert torch.equal(mine.targets, direct.targets) and len(mine.cells) == len(direct.cells) == 4
    for a, b in zip(mine.cells, direct.cells):
        assert (a.guide, a.t, a.eps) == (b.guide, b.t, b.eps)
        assert torch.equal(a.success, b.success) and torch.equal(a.transfer, b.transfer) and torch.equal(a.kept, b.kept)
    assert len(mine.examples[("robust", 40, 3.0)]) == 5
    with pytest.raises(ValueError, match="unknown guide"):
        transfer_batch(tiny_bundle, images, labels, settings, ["nobody"])


def test_batch_attack_defaults_follow_the_measured_contrast():
    """The Targeted PGD batch mode opens at the (t, eps) where the bundle's stored
    alignment figures show the largest robust - vanilla transfer difference, unless
    bundle.json's lab.alignment names its own."""
    from types import SimpleNamespace

    from app.views.attack import batch_defaults

    paired = [{"a": "robust", "b": "vanilla", "t": t, "eps": e, "mean_diff": d, "se_diff": 0.03}
              for t, e, d in ((0, 4.0, -0.01), (300, 8.0, 0.16), (600, 8.0, 0.09))]
    manifest = {"guides": {"robust": {"figures": {"alignment": {"settings": {"steps": 7}, "paired": paired}}}}}
    bundle = SimpleNamespace(manifest=manifest, image_shape=(1, 28, 28), diffusion_config=SimpleNamespace(steps=1000))
    state = SimpleNamespace(bundle=bundle)
    assert batch_defaults(state) == {"n": 20, "seed": 0, "steps": 7, "t": 300, "eps": 8.0}
    manifest["lab"] = {"alignment": {"t": 600, "n": 50}}
    assert batch_defaults(state) == {"n": 50, "seed": 0, "steps": 7, "t": 600, "eps": 8.0}
    bundle.manifest = {}  # nothing measured: t = 300 and the paper's radius scaled to 28x28
    assert batch_defaults(state) == {"n": 20, "seed": 0, "steps": 10, "t": 300, "eps": 12.6}
