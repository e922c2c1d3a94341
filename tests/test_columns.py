"""The one column-spec grammar (engine.columns): parsing, the bundle's defaults, errors, and
the round trip with GuidanceConfig.to_dict()."""

from __future__ import annotations

import json

import pytest

from engine.bundles import GuideInfo
from engine.columns import GuidanceConfig, GuidanceSpec, canonical_method, canonical_source, format_spec, parse_spec

GUIDES = {"vanilla": GuideInfo("vanilla", True, 0.5, "x_t"), "robust": GuideInfo("robust", True, 2.0, "x_t"),
          "nonrobust": GuideInfo("nonrobust", False, 1.0, "x0_through_denoiser")}


def test_specs_name_the_configs_the_front_doors_built_by_hand():
    assert parse_spec("robust", GUIDES) == GuidanceConfig(name="robust", classifier="robust", scale=2.0)
    assert parse_spec("vanilla:0.75", GUIDES) == GuidanceConfig(name="vanilla", classifier="vanilla", scale=0.75)
    assert parse_spec("strong=robust:3", GUIDES).name == "strong"
    assert parse_spec("nonrobust", GUIDES).gradient_source == "x0_through_denoiser"  # the guide's default source
    adam = parse_spec("nonrobust@x0_detached+adam*0.05", GUIDES, scale=2.0)
    assert (adam.name, adam.gradient_source, adam.stabiliser) == ("nonrobust@x0_detached+adam", "x0_detached", "adam")
    assert adam.scale == pytest.approx(0.1)  # the caller's scale times the factor
    assert parse_spec("cfg:1.5", GUIDES, denoiser_mode="unconditional") == GuidanceConfig(
        name="cfg", method="cfg", scale=1.5)  # classifier-free always uses both denoiser modes
    assert parse_spec("none", denoiser_mode="unconditional") == GuidanceConfig(
        name="unguided", method="unguided", denoiser_mode="unconditional")
    assert parse_spec("unguided", scale=4.0).scale == 1.0  # a swept scale does not touch unguided
    full = parse_spec("m=vanilla@xt:1/classes=1+7/loss=logit/schedule=cosine_decay/normalize=true/mode=unconditional"
                      "/ema_beta=0.99")
    assert full == GuidanceConfig(name="m", classifier="vanilla", scale=1.0, classes=(1, 7), loss="logit",
                                  scale_schedule="cosine_decay", normalize_gradient=True,
                                  denoiser_mode="unconditional", ema_beta=0.99)
    # an explicit scale wins over the caller's default; the caller's name wins over the spec's
    assert parse_spec("robust:3", GUIDES, scale=0.5, name="col").scale == 3.0
    assert parse_spec("robust:3", GUIDES, name="col").name == "col"


@pytest.mark.parametrize("text, message", [
    ("robust:one", "scale 'one' is not a number"), ("", "cannot read"), ("=robust", "cannot read"),
    ("robust@x9", "source 'x9'"), ("robust+sgd", "stabiliser 'sgd'"), ("cfg@x0", "takes no @SOURCE"),
    ("robust/foo=1", "'foo=1' is not KEY=VALUE"), ("robust/scale=2", "is not KEY=VALUE"),
    ("robust/classes=a", "classes 'a'"), ("robust/normalize=maybe", "true or false"), ("robust*inf", "finite"),
])
def test_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        GuidanceSpec.parse(text)


def test_unknown_guides_are_refused_only_against_a_bundle():
    with pytest.raises(ValueError, match="unknown guide 'judge'"):
        parse_spec("judge:1", GUIDES)
    assert parse_spec("judge:1").classifier == "judge"


CONFIGS = [
    GuidanceConfig(name="robust", classifier="robust", scale=2.0),
    GuidanceConfig(name="nonrobust", classifier="nonrobust", gradient_source="x0_through_denoiser"),
    GuidanceConfig(name="a b", classifier="nonrobust", scale=0.123456789, gradient_source="x0_detached",
                   stabiliser="adam", adam_bias_correction=True, adam_eps=1e-8),
    GuidanceConfig(name="m", classifier="vanilla", classes=(3, 5), loss="logit", scale_schedule="linear_ramp",
                   normalize_gradient=True, denoiser_mode="unconditional", stabiliser="ema", ema_beta=0.99),
    GuidanceConfig(name="cfg", method="cfg", scale=1.5),
    GuidanceConfig(name="free", method="cfg", scale=0.0),
    GuidanceConfig(name="unguided", method="unguided"),
    GuidanceConfig(name="u", method="unguided", scale=0.3, denoiser_mode="unconditional"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_format_round_trips_with_to_dict(config):
    text = format_spec(config)
    again = parse_spec(text)
    assert again == config and again.to_dict() == config.to_dict()
    assert parse_spec(text, GUIDES) == config  # the bundle's defaults never change a formatted spec
    assert GuidanceConfig.from_dict(json.loads(json.dumps(again.to_dict()))) == config


def test_formatted_specs_are_short_where_they_can_be():
    assert format_spec(CONFIGS[0]) == "robust=robust@x_t:2"
    assert format_spec(CONFIGS[4]) == "cfg:1.5"
    assert format_spec(CONFIGS[6]) == "unguided"
    assert format_spec(CONFIGS[3]).startswith("m=vanilla@x_t+ema:1/")
    with pytest.raises(ValueError, match="cannot stand in a spec"):
        format_spec(GuidanceConfig(name="a=b", method="unguided"))


def test_alias_words():
    assert [canonical_method(m) for m in ("guided", "Classifier", "none", "classifier-free")] == \
        ["classifier", "classifier", "unguided", "cfg"]
    assert [canonical_source(s) for s in ("xt", "x0", "x0 detached", "X0 through denoiser")] == \
        ["x_t", "x0_through_denoiser", "x0_detached", "x0_through_denoiser"]
    with pytest.raises(ValueError, match="method 'magic'"):
        canonical_method("magic")


def test_every_front_door_reads_the_same_grammar(tiny_bundle, tmp_path):
    """train.sample (--guides, --configs), train.evaluate (--methods) and survey create
    (--methods) turn the same text into the same config."""
    import argparse

    from survey.create import MethodSpec, StudyError
    from train.evaluate import method_config
    from train.sample import configs_from_args

    text = "nonrobust@x0+adam:0.05"
    expected = parse_spec(text, tiny_bundle.guide_info)
    args = argparse.Namespace(configs=None, guides=f"unguided,robust:2,{text}", scale=None)
    configs = configs_from_args(args, tiny_bundle)
    assert [c.name for c in configs] == ["unguided", "robust", "nonrobust@x0+adam"] and configs[2] == expected
    assert configs[1].scale == 2.0
    path = tmp_path / "configs.json"
    path.write_text(json.dumps([text, expected.to_dict()]))
    assert configs_from_args(argparse.Namespace(configs=path, guides=None, scale=None), tiny_bundle) == [expected] * 2
    assert MethodSpec.parse(text).to_config(tiny_bundle.guide_info) == expected
    swept = method_config("nonrobust@x0+adam*0.5", 0.1, "conditional", tiny_bundle, "nonrobust@x0+adam")
    assert swept == expected
    with pytest.raises(SystemExit, match="--scales"):
        method_config(text, 0.1, "conditional", tiny_bundle, "x")
    with pytest.raises(StudyError, match="label=]guide"):
        MethodSpec.parse("robust@x9")
