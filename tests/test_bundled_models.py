"""The shipped MNIST bundle (``models/mnist/``): it loads through the engine, its manifest carries the
figures the README quotes, and the three guides work (including guidance through the
predicted x0 for the non-robust guide)."""

from __future__ import annotations

import json

import pytest
import torch

from engine.bundle_index import models_root
from engine.bundles import load_bundle

MNIST_DIR = models_root() / "mnist"  # the MNIST bundle, whichever bundle is the default
from engine.guidance import unguided
from engine.trace import TraceOptions


@pytest.fixture(scope="module")
def bundle():
    return load_bundle("mnist")


def test_bundle_is_small_and_complete():
    files = [p for p in models_root().rglob("*") if p.is_file()]  # every shipped bundle together
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
    manifest = json.loads((MNIST_DIR / "bundle.json").read_text())
    assert set(manifest["guides"]) >= {"vanilla", "robust", "nonrobust"}
    for entry in [manifest["denoiser"], manifest["judge"], *manifest["guides"].values()]:
        training = entry["training"]
        assert training["command"].startswith("python -m train.") and "seed" in training and "split" in training
        assert training["train_seconds"] > 0
    assert manifest["guides"]["nonrobust"]["time_dependent"] is False
    assert "ablation" in manifest["guides"]["robust"]


def test_manifest_figures_show_the_paper_point():
    manifest = json.loads((MNIST_DIR / "bundle.json").read_text())
    vanilla = manifest["guides"]["vanilla"]["figures"]["held_out_accuracy_l2_pgd"]
    robust = manifest["guides"]["robust"]["figures"]["held_out_accuracy_l2_pgd"]
    # robust beats vanilla under attack by a wide margin (10 points = 5 standard errors at
    # n = 1000) from clean to moderately noisy inputs
    for t in ("t=0", "t=200", "t=400"):
        assert robust[t]["eps=4"] > vanilla[t]["eps=4"] + 0.10, t
    assert manifest["judge"]["figures"]["heldout_accuracy"] > 0.95
    assert manifest["denoiser"]["figures"]["judge_accuracy_on_conditional_samples"] > 0.8


def test_three_guides_and_x0_guidance_on_bundle(bundle):
    configs = [
        unguided(),
        bundle.default_config("vanilla"),
        bundle.default_config("robust"),
        bundle.default_config("nonrobust"),  # default source: through the predicted x0
        bundle.default_config("nonrobust", name="nonrobust-adam", stabiliser="adam"),
        unguided("uncond", denoiser_mode="unconditional"),
    ]
    assert bundle.guide_info["nonrobust"].default_source == "x0_through_denoiser"
    res = bundle.sample(configs, [3, 8], [0, 1], respacing="8", trace=TraceOptions(record_every=4))
    for name, images in res.images.items():
        assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all(), name
        assert images.min() >= -1.5 and images.max() <= 1.5
    trace = res.traces["nonrobust"]
    assert torch.isfinite(trace.series("grad_norm")).all() and (trace.series("grad_norm") > 0).all()
    assert not torch.equal(res.images["nonrobust"], res.images["unguided"])


def test_guided_samples_show_the_class(bundle):
    """Conditional samples of the bundle are recognised by the independent judge."""
    labels = list(range(10))
    res = bundle.sample([bundle.default_config("robust")], labels, list(range(10)), respacing="25")
    with torch.no_grad():
        pred = bundle.judge(res.images["robust"]).argmax(-1)
    assert (pred == torch.tensor(labels)).float().mean() >= 0.7


def test_shipped_lab_defaults_are_valid_columns(bundle):
    """bundle.json's lab section (the sweep-chosen defaults) is what the lab's column table
    starts from, every row parses, and Adam keeps its own smaller scale."""
    from app.columns import default_rows
    from app.inputs import COLUMN_HEADERS, read_columns

    rows = default_rows(bundle)
    shipped = bundle.manifest["lab"]["columns"]
    assert rows == [[entry[h] for h in COLUMN_HEADERS] for entry in shipped]
    read_columns({"headers": COLUMN_HEADERS, "data": rows})
    ticked = {row[1] for row in rows if row[0]}
    assert {"vanilla", "robust"} <= ticked
    adam = [row for row in rows if row[6] == "adam"]
    assert adam and all(row[4] < 1.0 for row in adam)


def test_manifest_alignment_figures_show_the_mechanism_where_guidance_acts():
    """python -m train.alignment --store wrote these (README, Perceptual alignment): on
    noisy x_t the robust guide's targeted attacks transfer to the judge far more often
    than the vanilla guide's."""
    manifest = json.loads((MNIST_DIR / "bundle.json").read_text())
    stored = manifest["guides"]["robust"]["figures"]["alignment"]
    assert stored["n"] >= 200 and stored["command"].startswith("python -m train.alignment")
    row = next(p for p in stored["paired"] if p["b"] == "vanilla" and p["t"] == 300 and p["eps"] == 8.0)
    assert row["mean_diff"] > 0.10 and row["mean_diff"] > 2 * row["se_diff"]
    vanilla = {(c["t"], c["eps"]): c for c in manifest["guides"]["vanilla"]["figures"]["alignment"]["cells"]}
    assert vanilla[(300, 8.0)]["transfer"] + row["mean_diff"] == pytest.approx(
        next(c["transfer"] for c in stored["cells"] if c["t"] == 300 and c["eps"] == 8.0))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_lab_and_survey_defaults_sit_where_the_contrast_was_measured(name):
    """The lab opens, and `survey create --from-bundle` generates, in the setting whose
    stored sample figures (``lab.measured`` names them) show the robust guide beating the
    vanilla one (README, 'What you should see'): unconditional denoiser, both guides at the
    same scale, the measured sampler and steps; there the paired robust - vanilla difference
    favours the robust guide in every seed set on FID, precision or judge accuracy."""
    from types import SimpleNamespace

    from app.columns import default_rows
    from app.inputs import parse_steps
    from app.views.sampling import default_sampler, default_seeds, default_steps, default_unconditional
    from survey.cli import bundle_survey_defaults
    from survey.create import MethodSpec

    bundle = load_bundle(name)
    state = SimpleNamespace(bundle=bundle)
    sampler = default_sampler(state).lower()
    respacing = parse_steps(bundle, default_steps(state), "", 1000, sampler)
    assert default_unconditional(state) is True and default_seeds(state) == "0-7"
    ticked = {row[3]: row[4] for row in default_rows(bundle) if row[0] and row[2] == "classifier"}
    assert set(ticked) == {"vanilla", "robust"} and ticked["vanilla"] == ticked["robust"]
    scale = ticked["robust"]
    figures = bundle.manifest["figures"][bundle.section("lab")["measured"]]
    paired = figures["robust_minus_vanilla"][f"s={scale:g}"]
    assert paired["replicates"] == 3
    assert any(paired[f"{m}_wins"] == 3 and (paired[m] < 0 if m == "fid" else paired[m] > 0)
               for m in ("fid", "precision", "accuracy"))
    assert f"--respacing {respacing} " in figures["command"] and "--modes unconditional" in figures["command"]
    assert ("--sampler ddim" in figures["command"]) == (sampler == "ddim")

    survey = bundle_survey_defaults(bundle)
    configs = [MethodSpec.parse(m).to_config(bundle.guide_info) for m in survey["methods"]]
    assert {c.classifier: c.scale for c in configs} == {"vanilla": scale, "robust": scale}
    assert {c.denoiser_mode for c in configs} == {"unconditional"} and survey["respacing"] == respacing
    assert survey.get("sampler", "ddpm") == sampler


def test_fashion_mnist_bundle_is_shipped_with_its_measured_figures():
    """The second shipped bundle: trained on Fashion-MNIST (its own held-out split), every
    model with its training command, the judge recognising most conditional samples, and the
    alignment figures showing the robust guide's transfer gain where guidance acts."""
    from engine.bundle_index import default_bundle_name, shipped_bundles

    assert [b.name for b in shipped_bundles()][:2] == ["mnist", "fashion-mnist"] and default_bundle_name() == "mnist"
    manifest = json.loads((models_root() / "fashion-mnist" / "bundle.json").read_text())
    assert manifest["data"] == "fashion-mnist" and manifest["class_names"][0] == "T-shirt/top"
    assert set(manifest["guides"]) == {"vanilla", "robust", "nonrobust"}
    for entry in [manifest["denoiser"], manifest["judge"], *manifest["guides"].values()]:
        assert "--data fashion-mnist" in entry["training"]["command"]
    assert manifest["denoiser"]["figures"]["judge_accuracy_on_conditional_samples"] >= 0.8
    stored = manifest["guides"]["robust"]["figures"]["alignment"]
    row = next(p for p in stored["paired"] if p["b"] == "vanilla" and p["t"] == 300 and p["eps"] == 8.0)
    assert row["mean_diff"] > 0.10 and row["mean_diff"] > 2 * row["se_diff"]
