"""The perceptual-alignment instrument (engine/alignment.py, python -m train.alignment).

Pins what makes it an instrument: a guide that *is* the judge transfers exactly when its
own attack succeeds; a random-weight guide transfers at about chance while a trained
guide of the shipped bundle transfers far more; targets are never the true class and are
fixed by the seed; paired differences are per-image means with their standard error; at
t > 0 the judge reads the denoiser's x0 prediction of the attacked x_t."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_CLASSIFIER_FLAGS
from engine.alignment import (AlignmentSettings, measure_alignment, paired_difference, random_targets,
                              stratified_subset)
from engine.bundles import load_bundle
from engine.data import load_split
from engine.guidance import Guide
from engine.nets import EncoderUNetModel
from engine.nets.flags import classifier_kwargs


@pytest.fixture(scope="module")
def shipped():
    return load_bundle("mnist")  # the MNIST held-out digits below fit it


@pytest.fixture(scope="module")
def heldout():
    data = load_split("mnist", "heldout")
    images, labels = data.tensors()
    pick = stratified_subset(labels, 40)
    return images[pick], labels[pick]


def test_targets_are_other_classes_fixed_by_seed_and_uniform():
    labels = torch.arange(10).repeat(500)
    a = random_targets(labels, 10, seed=3)
    assert torch.equal(a, random_targets(labels, 10, seed=3))
    assert not torch.equal(a, random_targets(labels, 10, seed=4))
    assert bool((a != labels).all())
    offsets = (a - labels) % 10
    counts = torch.bincount(offsets, minlength=10)
    assert counts[0] == 0
    # 5,000 draws over 9 offsets: each about 556, a 5-sigma band is about +-115
    assert int(counts[1:].min()) > 440 and int(counts[1:].max()) < 670
    with pytest.raises(ValueError):
        random_targets(labels[:3], 1, seed=0)


def test_paired_difference_is_the_mean_and_standard_error_of_per_image_differences():
    a = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    b = torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool)
    d = torch.tensor([1.0, 0, 0, 1, -1, 1])
    out = paired_difference(a, b)
    assert out["mean"] == pytest.approx(float(d.mean()))
    mean = float(d.mean())
    sd = math.sqrt(sum((v - mean) ** 2 for v in d.tolist()) / (len(d) - 1))
    assert out["se"] == pytest.approx(sd / math.sqrt(len(d)))
    assert (out["wins"], out["losses"]) == (3, 1)


def test_stratified_subset_is_balanced():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    pick = stratified_subset(labels, 30)
    assert torch.bincount(labels[pick]).tolist() == [10, 10, 10]
    assert len(set(pick.tolist())) == 30


def test_the_judge_as_guide_transfers_exactly_when_it_succeeds(shipped, heldout):
    images, labels = heldout
    guides = {"judge": Guide(shipped.judge.eval(), time_dependent=False)}
    result = measure_alignment(guides, shipped.judge, images, labels,
                               AlignmentSettings(timesteps=(0,), radii=(2.0, 6.0), steps=5), num_classes=10)
    for eps in (2.0, 6.0):
        cell = result.cell("judge", 0, eps)
        assert torch.equal(cell.transfer, cell.success)
        assert not bool((cell.transfer & cell.kept).any())
    # and the attack does something at the larger radius
    assert float(result.cell("judge", 0, 6.0).success.float().mean()) > 0.5


def test_random_guide_transfers_at_chance_a_trained_guide_far_more(shipped, heldout):
    images, labels = heldout
    torch.manual_seed(0)
    flags = {**TINY_CLASSIFIER_FLAGS, "classifier_num_classes": 10}
    random_net = EncoderUNetModel(**classifier_kwargs(flags)).eval()
    guides = {"random": Guide(random_net), "robust": shipped.guides["robust"]}
    result = measure_alignment(guides, shipped.judge, images, labels,
                               AlignmentSettings(timesteps=(0,), radii=(8.0,), steps=10), num_classes=10)
    random_transfer = float(result.cell("random", 0, 8.0).transfer.float().mean())
    trained_transfer = float(result.cell("robust", 0, 8.0).transfer.float().mean())
    chance = 1 / 9  # a judge that had lost the digit and guessed among the other classes
    assert random_transfer <= chance
    assert trained_transfer >= random_transfer + 0.1
    rows = result.paired("robust", "random")
    assert rows[0]["mean_diff"] == pytest.approx(trained_transfer - random_transfer)


def test_at_t_above_zero_the_judge_reads_the_denoisers_x0(shipped, heldout):
    images, labels = heldout
    images, labels = images[:20], labels[:20]
    settings = AlignmentSettings(timesteps=(300,), radii=(0.5,), steps=2)
    kwargs = dict(diffusion=shipped.diffusion(""), denoiser=shipped.denoiser, null_label=shipped.null_label,
                  num_classes=10)
    result = measure_alignment({"vanilla": shipped.guides["vanilla"]}, shipped.judge, images, labels, settings,
                               **kwargs)
    # x0 predictions of lightly noised digits are digits again: the judge reads them ...
    assert result.clean_judge_accuracy >= 0.9
    originals = result.originals[300]
    assert float(originals.min()) >= -1 and float(originals.max()) <= 1
    # ... while the judge reads the raw x_t far worse (it was trained on clean digits)
    diffusion = shipped.diffusion("")
    x_t = diffusion.q_sample(images, torch.full((20,), 300), torch.randn(images.shape))
    with torch.no_grad():
        raw = float((shipped.judge(x_t).argmax(-1) == labels).float().mean())
    assert raw < result.clean_judge_accuracy
    with pytest.raises(ValueError, match="denoiser"):
        measure_alignment({"vanilla": shipped.guides["vanilla"]}, shipped.judge, images, labels, settings,
                          num_classes=10)
    with pytest.raises(ValueError, match="outside"):
        measure_alignment({"vanilla": shipped.guides["vanilla"]}, shipped.judge, images, labels,
                          AlignmentSettings(timesteps=(5000,)), **kwargs)


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "train.alignment", *args, "--no-progress", "--threads", "1"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_json_outputs_and_store_in_a_bundle_copy(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "models" / "mnist", bundle)
    shipped_manifest = (ROOT / "models" / "mnist" / "bundle.json").read_text()
    out = tmp_path / "out"
    proc = _cli("--bundle", str(bundle), "--guides", "vanilla,robust", "--n", "20", "--timesteps", "0,200",
                "--radii", "6", "--steps", "3", "--json", "--out", str(out), "--store")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["n"] == 20 and payload["settings"]["radii"] == [6.0]
    assert {(c["guide"], c["t"]) for c in payload["cells"]} == {(g, t) for g in ("vanilla", "robust") for t in (0, 200)}
    assert [(p["a"], p["b"]) for p in payload["paired"]] == [("robust", "vanilla")] * 2
    for name in ("results.md", "results.json", "examples.png"):
        assert (out / name).is_file()
    manifest = json.loads((bundle / "bundle.json").read_text())
    stored = manifest["guides"]["robust"]["figures"]["alignment"]
    assert stored["cells"] == [c for c in payload["cells"] if c["guide"] == "robust"]
    # a guide that was not measured keeps what it had
    assert manifest["guides"]["nonrobust"] == json.loads(shipped_manifest)["guides"]["nonrobust"]
    assert (ROOT / "models" / "mnist" / "bundle.json").read_text() == shipped_manifest  # only the copy changed


@pytest.mark.parametrize("args, message", [
    (["--paired", "robust"], "A:B"),
    (["--paired", "robust:nobody"], "not measured"),
    (["--guides", "nobody"], "unknown guide"),
    (["--radii", "0"], "positive"),
    (["--guide", "x=/nonexistent/model.pt"], "nonexistent"),
])
def test_cli_bad_input_is_a_clear_error(args, message):
    proc = _cli("--n", "2", "--timesteps", "0", *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
