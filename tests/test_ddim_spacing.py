"""Guided DDIM and the spacing of its steps: a plain step count for DDIM becomes DDIM's own
stride (``ddimN``), guided DDIM from the last timestep warns, and on the shipped models the
difference is the one between usable and saturated samples (README, "DDIM with few steps")."""

from __future__ import annotations

import warnings

import pytest
import torch

from app.inputs import parse_steps
from engine.diffusion.schedules import respacing_for_steps, space_timesteps
from engine.sampler import GuidedDDIMWarning


def test_a_step_count_is_spaced_for_the_sampler():
    assert respacing_for_steps(1000, 25, "ddpm") == "25"
    assert respacing_for_steps(1000, 25, "ddim") == "ddim25"
    assert max(space_timesteps(1000, "ddim25")) == 960 and max(space_timesteps(1000, "25")) == 999
    assert respacing_for_steps(1000, 600, "ddim") == "ddim500"  # no stride gives 600: the nearest count one gives
    assert respacing_for_steps(1000, 333, "ddim") == "ddim250"  # ddim334 is stride 3, which ends at t = 999
    assert respacing_for_steps(1000, 1000, "ddim") == "ddim500"  # stride 1 would start at t = 999
    for n in (1, 7, 25, 333, 600, 1000):  # every DDIM spacing starts below the last timestep
        assert max(space_timesteps(1000, respacing_for_steps(1000, n, "ddim"))) < 999
    with pytest.raises(ValueError):
        respacing_for_steps(1000, 0, "ddim")


def test_the_lab_spaces_its_steps_for_ddim(tiny_bundle):
    assert parse_steps(tiny_bundle, 10, "", 1000, "ddim") == "ddim10"
    assert parse_steps(tiny_bundle, 10, "", 1000, "ddpm") == "10"
    assert parse_steps(tiny_bundle, 10, "7", 1000, "ddim") == "7"  # an explicit respacing is taken as written


def _sample(bundle, respacing, columns, sampler="ddim"):
    return bundle.sample(columns, [1, 2], [0, 1], respacing=respacing, sampler=sampler)


def test_guided_ddim_from_the_last_timestep_warns_and_ddim_spacing_does_not(tiny_bundle):
    guided = [tiny_bundle.default_config("robust", name="robust")]
    with pytest.warns(GuidedDDIMWarning, match="'ddim4' for 4 steps"):
        _sample(tiny_bundle, "4", guided)
    with pytest.warns(GuidedDDIMWarning, match="'ddim500' for 500 steps"):  # advice that exists: not ddim1000
        tiny_bundle.sample(guided, [1], [0], respacing="", sampler="ddim")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuidedDDIMWarning)
        _sample(tiny_bundle, "ddim4", guided)                      # DDIM's stride: starts at t = 750
        _sample(tiny_bundle, "4", guided, sampler="ddpm")          # DDPM adds noise: no problem
        from engine.guidance import unguided
        _sample(tiny_bundle, "4", [unguided(name="plain")])       # nothing to magnify


def test_on_the_shipped_models_ddim_spacing_keeps_guided_samples_usable():
    """Few-step guided DDIM on the MNIST bundle: from t = 999 nearly every pixel saturates;
    DDIM's own stride gives images whose pixels mostly stay inside (-1, 1)."""
    from engine.bundles import load_bundle

    bundle = load_bundle("mnist")
    columns = [bundle.default_config("robust", name="robust", scale=16.0, denoiser_mode="unconditional")]
    labels, seeds = [i % 10 for i in range(10)], list(range(10))
    saturated = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuidedDDIMWarning)
        for respacing in ("10", respacing_for_steps(1000, 10, "ddim")):
            x = bundle.sample(columns, labels, seeds, respacing=respacing, sampler="ddim").images["robust"]
            saturated[respacing] = float((x.abs() > 0.99).float().mean())
    assert saturated["10"] > 0.9 and saturated["ddim10"] < 0.3, saturated


def test_the_bundles_default_steps_are_spaced_for_the_sampler(tiny_bundle):
    default = tiny_bundle.default_respacing
    assert default.isdigit()
    assert tiny_bundle.default_respacing_for("ddpm") == default
    assert tiny_bundle.default_respacing_for("ddim") == f"ddim{default}"
    guided = [tiny_bundle.default_config("robust", name="robust")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GuidedDDIMWarning)  # the default DDIM run does not start at t = T - 1
        result = tiny_bundle.sample(guided, [0], [0], sampler="ddim")
    assert result.settings["respacing"] == f"ddim{default}"


def test_survey_create_spaces_the_bundles_steps_for_ddim(tmp_path, tiny_bundle_dir):
    from sqlalchemy import select

    from survey.cli import main
    from survey.db import open_db
    from survey.models import Image

    db_path = tmp_path / "s.db"
    assert main(["create", "--db", str(db_path), "--name", "d", "--from-bundle", str(tiny_bundle_dir), "--pairs", "2",
                 "--sampler", "ddim", "--methods", "vanilla:0.5", "robust:1", "--workers", "1"]) == 0
    db = open_db(db_path)
    try:
        with db.session() as session:
            runs = {img.config["run"]["respacing"] for img in session.scalars(select(Image)) if img.config}
    finally:
        db.dispose()
    assert runs and all(r.startswith("ddim") for r in runs), runs
