"""The lab's pieces without a server: input parsing, the column table, the engine
reductions it shows (engine.summaries), rendering, downloads, the command line and
the survey mount's fallback."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from app import columns as cols
from app import render
from app.downloads import write_run_files
from app.inputs import (COLUMN_HEADERS, LabInputError, check_image_budget, configs_from_rows, load_upload,
                        parse_class, parse_int, parse_seeds, parse_steps, parse_timesteps, read_columns)
from engine.guidance import unguided
from engine.summaries import binomial_se, column_stability, evenly_spaced, perturbation, record_every_for
from engine.trace import TraceOptions


def table(*rows):
    return {"headers": COLUMN_HEADERS, "data": [list(r) for r in rows]}


@pytest.fixture(scope="module")
def traced_run(tiny_bundle):
    """Three columns (unguided, vanilla on x_t, non-robust through x0 with Adam), 2 seeds, 3 steps."""
    configs = [unguided(), tiny_bundle.default_config("vanilla"),
               tiny_bundle.default_config("nonrobust", name="nr adam", stabiliser="adam", scale=0.5)]
    return tiny_bundle.sample(configs, [3, 3], [0, 1], respacing="3",
                              trace=TraceOptions(record_every=1, monitors=("vanilla", "robust")))


# ------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("text, expected", [("0-3", [0, 1, 2, 3]), ("1, 5,9", [1, 5, 9]), ("2..4", [2, 3, 4]),
                                            ("7", [7]), (7, [7]), ("1,1,2", [1, 2]), ("0-1 5", [0, 1, 5])])
def test_seeds_accept_lists_and_ranges(text, expected):
    assert parse_seeds(text, 16) == expected


@pytest.mark.parametrize("text, message", [("a,b", "not an integer"), ("1.5", "not an integer"), ("", "give"),
                                           ("-3", "outside"), ("5-2", "backwards"), ("0-99", "at most 16"),
                                           (None, "give")])
def test_bad_seeds_say_why(text, message):
    with pytest.raises(LabInputError, match=message):
        parse_seeds(text, 16)


def test_numbers_and_timesteps():
    assert parse_int("3.0", "steps", 1, 10) == 3
    for bad in ("3.5", "x", None, float("nan"), 0, 11):
        with pytest.raises(LabInputError):
            parse_int(bad, "steps", 1, 10)
    assert parse_timesteps("0, 100, 999", 1000, 8) == [0, 100, 999]
    with pytest.raises(LabInputError, match="outside 0..999"):
        parse_timesteps("1000", 1000, 8)


def test_class_by_name_or_number_and_range(tiny_bundle):
    assert parse_class(tiny_bundle, "3") == 3
    assert parse_class(tiny_bundle, 7) == 7
    assert parse_class(tiny_bundle, "3: three") == 3
    with pytest.raises(LabInputError, match="out of range 0..9"):
        parse_class(tiny_bundle, "12")
    with pytest.raises(LabInputError):
        parse_class(tiny_bundle, "cat")


def test_steps_reject_absurd_counts_and_check_respacing(tiny_bundle):
    assert parse_steps(tiny_bundle, 5, "", 1000) == "5"
    assert parse_steps(tiny_bundle, 5, "ddim10", 1000) == "ddim10"
    for bad in (0, 100000, -1, "many"):
        with pytest.raises(LabInputError, match="steps"):
            parse_steps(tiny_bundle, bad, "", 1000)
    with pytest.raises(LabInputError, match="at most 50"):
        parse_steps(tiny_bundle, 60, "", 50)
    # one bound, the real one, whichever side is out of range
    for bad in (0, 100000):
        with pytest.raises(LabInputError) as info:
            parse_steps(tiny_bundle, bad, "", 1000)
        assert f"steps must lie between 1 and 1000, got {bad} (the models' process has 1000 steps)" == str(info.value)
    for bad in (0, 60):
        with pytest.raises(LabInputError) as info:
            parse_steps(tiny_bundle, bad, "", 50)
        assert str(info.value) == f"steps must lie between 1 and 50, got {bad} (this server allows at most 50, " \
                                  "--max-steps)"
    with pytest.raises(LabInputError, match="respacing"):
        parse_steps(tiny_bundle, 5, "ddimx", 1000)


def test_column_table_to_configs(tiny_bundle):
    rows = read_columns(table([True, "v", "classifier", "vanilla", 1.5, "x_t", "none"],
                              [True, "nr", "classifier", "nonrobust", 0.3, "x0", "ema"],
                              ["yes", "free", "classifier-free", "", 2, "", ""],
                              [False, "off", "unguided", "", 0, "", "none"]))
    configs = configs_from_rows(tiny_bundle, rows, unconditional=True)
    assert [c.name for c in configs] == ["v", "nr", "free"]
    assert configs[1].gradient_source == "x0_through_denoiser" and configs[1].stabiliser == "ema"
    assert configs[0].denoiser_mode == "unconditional" and configs[2].method == "cfg"
    assert configs[2].denoiser_mode == "conditional"  # classifier-free needs both modes


@pytest.mark.parametrize("row, message", [
    ([True, "a", "classifier", "nosuch", 1, "x_t", "none"], "guide 'nosuch' is not loaded"),
    ([True, "a", "classifier", "vanilla", 1, "x9", "none"], "source"),
    ([True, "a", "classifier", "vanilla", 1, "x_t", "sgd"], "stabiliser"),
    ([True, "a", "magic", "vanilla", 1, "x_t", "none"], "method"),
    ([True, "a", "classifier", "vanilla", "big", "x_t", "none"], "scale"),
    ([True, "", "classifier", "vanilla", 1, "x_t", "none"], "name"),
    ([False, "a", "classifier", "vanilla", 1, "x_t", "none"], "no column is marked"),
])
def test_bad_column_rows_say_why(tiny_bundle, row, message):
    with pytest.raises(LabInputError, match=message):
        configs_from_rows(tiny_bundle, read_columns(table(row)), False)


def test_duplicate_columns_and_image_budget(tiny_bundle):
    rows = read_columns(table([True, "a", "unguided", "", 0, "", "none"], [True, "a", "unguided", "", 0, "", "none"]))
    with pytest.raises(LabInputError, match="unique"):
        configs_from_rows(tiny_bundle, rows, False)
    with pytest.raises(LabInputError, match="at most 8"):
        check_image_budget(list(range(5)), 2, 8)


def test_upload_refuses_non_images_and_converts_sizes(tmp_path, tiny_bundle, monkeypatch):
    from PIL import Image

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(LabInputError, match="not a readable image"):
        load_upload(text, tiny_bundle)
    colour = tmp_path / "big.png"
    Image.new("RGB", (90, 60), (255, 255, 255)).save(colour)
    image, note = load_upload(colour, tiny_bundle)
    assert image.shape == (1, 1, 28, 28) and "converted to 28x28 greyscale" in note
    assert torch.allclose(image, torch.ones_like(image))
    import app.inputs

    monkeypatch.setattr(app.inputs, "MAX_UPLOAD_PIXELS", 80 * 60)
    with pytest.raises(LabInputError, match="90x60 pixels"):
        load_upload(colour, tiny_bundle)
    monkeypatch.undo()
    exact = tmp_path / "digit.png"
    Image.new("L", (28, 28), 0).save(exact)
    image, note = load_upload(exact, tiny_bundle)
    assert float(image.max()) == -1.0 and "converted" not in note


# ------------------------------------------------------------------------------------ columns
def test_default_columns_cover_every_guide_and_gradcheck_variants(tiny_bundle):
    names = [r[1] for r in cols.default_rows(tiny_bundle)]
    assert names == ["unguided", "vanilla", "robust", "nonrobust", "nonrobust x_t", "nonrobust x0+adam",
                     "nonrobust x0+ema", "classifier-free"]
    configs = configs_from_rows(tiny_bundle, read_columns(cols.default_table(tiny_bundle)), False)
    assert [c.name for c in configs] == ["vanilla", "robust", "nonrobust"]
    paper = cols.preset_table(tiny_bundle, "paper")
    assert list(paper[paper["run"]]["column"]) == ["vanilla", "robust"]
    gradcheck = cols.preset_table(tiny_bundle, "gradcheck")
    assert list(gradcheck[gradcheck["run"]]["column"]) == ["unguided", "vanilla", "robust", "nonrobust",
                                                           "nonrobust x0+adam", "nonrobust x0+ema"]
    choices, ticked = cols.stability_choices(tiny_bundle)
    assert "classifier-free" in choices and "classifier-free" not in ticked and "nonrobust x_t" not in ticked


def test_bundle_lab_section_supplies_columns(tiny_bundle, monkeypatch):
    custom = [{"run": True, "column": "robust s=4", "method": "classifier", "guide": "robust", "scale": 4.0,
               "source": "x_t", "stabiliser": "none"}]
    monkeypatch.setitem(tiny_bundle.manifest, "lab", {"columns": custom})
    assert cols.default_rows(tiny_bundle) == [[True, "robust s=4", "classifier", "robust", 4.0, "x_t", "none"]]
    monkeypatch.setitem(tiny_bundle.manifest, "lab", {"columns": [{"run": True, "column": "x", "method": "bad"}]})
    assert len(cols.default_rows(tiny_bundle)) == 8  # malformed: falls back to the generic rows


def test_a_whole_column_spec_in_the_column_cell(tiny_bundle):
    from engine.columns import parse_spec

    rows = read_columns(table([True, "strong=robust@x0+adam:2/loss=logit", "", "", None, "", ""],
                              [True, "nonrobust@x0_detached+ema", "", "", 0.5, "", ""],  # the scale cell fills in
                              [True, "vanilla", "", "", 3, "x0", "adam"],  # so do source and stabiliser cells
                              [True, "unguided/mode=unconditional", "", "", None, "", ""],
                              [True, "v2", "classifier", "vanilla", 1.0, "x_t", "none"]))  # the cells, as before
    configs = configs_from_rows(tiny_bundle, rows, False)
    assert [c.name for c in configs] == ["strong", "nonrobust@x0_detached+ema", "vanilla", "unguided", "v2"]
    assert configs[0] == parse_spec("strong=robust@x0+adam:2/loss=logit", tiny_bundle.guide_info)
    assert (configs[0].gradient_source, configs[0].stabiliser, configs[0].scale, configs[0].loss) == \
        ("x0_through_denoiser", "adam", 2.0, "logit")
    assert (configs[1].gradient_source, configs[1].stabiliser, configs[1].scale) == ("x0_detached", "ema", 0.5)
    assert (configs[2].gradient_source, configs[2].stabiliser, configs[2].scale) == ("x0_through_denoiser", "adam", 3)
    assert configs[3].method == "unguided" and configs[3].denoiser_mode == "unconditional"
    assert configs[4] == tiny_bundle.default_config("vanilla", name="v2", scale=1.0, gradient_source="x_t")
    for spec, message in (("robust@x9:1", "source"), ("nosuch:1", "guide 'nosuch' is not loaded"),
                          ("robust:1/temperature=3", "not KEY=VALUE")):
        with pytest.raises(LabInputError, match=message):
            configs_from_rows(tiny_bundle, read_columns(table([True, spec, "", "", None, "", ""])), False)


def test_default_config_is_the_guide_spec_against_the_bundle(tiny_bundle):
    from engine.columns import parse_spec

    for guide in tiny_bundle.guide_info:
        assert tiny_bundle.default_config(guide) == parse_spec(guide, tiny_bundle.guide_info)
    assert tiny_bundle.default_config("robust", name="r", scale=3.0).scale == 3.0
    with pytest.raises(ValueError, match="unknown guide 'unguided'"):
        tiny_bundle.default_config("unguided")


def test_bundle_lab_section_reads_spec_strings_and_objects(tiny_bundle, monkeypatch):
    monkeypatch.setitem(tiny_bundle.manifest, "lab", {"columns": [
        "strong=robust:4", "nonrobust@x0+adam:0.05",
        {"run": False, "column": "plain", "method": "unguided", "guide": "", "scale": 0, "source": "",
         "stabiliser": "none"}]})
    rows = cols.default_rows(tiny_bundle)
    assert rows[0] == [True, "strong=robust:4", "", "", None, "", ""] and rows[2][1] == "plain"
    configs = configs_from_rows(tiny_bundle, read_columns(cols.default_table(tiny_bundle)), False)
    assert [(c.name, c.classifier, c.scale, c.stabiliser) for c in configs] == \
        [("strong", "robust", 4.0, "none"), ("nonrobust@x0+adam", "nonrobust", 0.05, "adam")]
    gradcheck = cols.preset_table(tiny_bundle, "gradcheck")  # presets read the specs too
    assert list(gradcheck[gradcheck["run"]]["column"]) == ["nonrobust@x0+adam:0.05", "plain"]
    monkeypatch.setitem(tiny_bundle.manifest, "lab", {"columns": ["robust@nowhere:1"]})
    assert len(cols.default_rows(tiny_bundle)) == 8  # a spec that does not parse: the generic rows


# ------------------------------------------------------------------------------------ engine.summaries
def test_frame_helpers():
    assert record_every_for(100, 8) == 15 and record_every_for(5, 8) == 1 and record_every_for(10, 1) == 10
    assert evenly_spaced(10, 4) == [0, 3, 6, 9] and evenly_spaced(3, 8) == [0, 1, 2] and evenly_spaced(0, 3) == []
    with pytest.raises(ValueError):
        record_every_for(0, 3)


def test_column_stability_matches_the_trace(traced_run, tiny_bundle):
    rows = {r.column: r for r in column_stability(traced_run, tiny_bundle.judge)}
    assert set(rows) == {"unguided", "vanilla", "nr adam"}
    assert math.isnan(rows["unguided"].mean_cos) and math.isnan(rows["unguided"].mean_grad_norm)
    cos = traced_run.traces["vanilla"].series("cos_raw")[1:]  # step 0 has no predecessor
    assert rows["vanilla"].mean_cos == pytest.approx(float(cos.double().mean()), abs=1e-6)
    assert rows["vanilla"].late_cos == pytest.approx(float(traced_run.traces["vanilla"].series("cos_raw")[1:].double()
                                                           .mean()), abs=1e-6)
    norms = traced_run.traces["vanilla"].series("grad_norm")
    assert rows["vanilla"].mean_grad_norm == pytest.approx(float(norms.double().mean()), rel=1e-6)
    from engine.metrics import class_accuracy

    assert rows["vanilla"].judge_accuracy == class_accuracy(tiny_bundle.judge, traced_run.images["vanilla"], [3, 3])
    p = rows["vanilla"].judge_accuracy
    assert rows["vanilla"].judge_accuracy_se == pytest.approx(math.sqrt(p * (1 - p) / 2))
    assert binomial_se(0.25, 4) == pytest.approx(math.sqrt(0.25 * 0.75 / 4)) and math.isnan(binomial_se(math.nan, 4))
    assert rows["nr adam"].stabiliser == "adam" and rows["nr adam"].source == "x0_through_denoiser"
    applied = {r.column: r for r in column_stability(traced_run, None, "applied")}
    assert math.isnan(applied["vanilla"].judge_accuracy)
    assert applied["nr adam"].mean_grad_norm != pytest.approx(rows["nr adam"].mean_grad_norm)
    with pytest.raises(ValueError):
        column_stability(traced_run, None, "other")


def test_perturbation_norms():
    a, b = torch.zeros(1, 2, 2), torch.tensor([[[3.0, 0.0], [0.0, -4.0]]])
    delta, l2, linf = perturbation(a, b)
    assert torch.equal(delta, b) and l2 == pytest.approx(5.0) and linf == pytest.approx(4.0)


# ------------------------------------------------------------------------------------ render
def test_pictures_and_figures(traced_run, tiny_bundle):
    final = render.final_gallery(traced_run, {"vanilla": 0.5})
    assert [f[0].shape for f in final] == [(112 + 2 * 2, 2 * 112 + 3 * 2, 3)] * 3  # padded row of 2 seeds
    assert "judge accuracy 50%" in final[1][1] and "guide vanilla, x_t" in final[1][1]
    stack = render.labelled_stack(final)
    assert stack.dtype == np.uint8 and stack.shape[0] > 3 * 112 and stack.shape[2] == 3
    film = render.filmstrip_gallery(traced_run, "pred_x0", frames=2)
    assert len(film) == 3 and film[0][0].shape == (2 * 56 + 3 * 2, 2 * 56 + 3 * 2, 3)
    grads = render.filmstrip_gallery(traced_run, "gradient", frames=3, signed=True, gradient="applied")
    assert [g[1].split(":")[0] for g in grads] == ["vanilla", "nr adam"]  # unguided has no gradient
    for figure in (render.log_prob_figure(traced_run), render.stability_figure(traced_run, "raw")):
        assert figure.ndim == 3 and figure.shape[2] == 3 and figure.shape[1] > 400
        assert len(np.unique(figure.reshape(-1, 3), axis=0)) > 10  # something was drawn
    rows = column_stability(traced_run, tiny_bundle.judge)
    frame = render.stability_table(rows)
    assert list(frame["column"]) == ["unguided", "vanilla", "nr adam"] and frame["mean cos"].isna()[0]
    assert "± s.e." in frame.columns
    # the stability figure: cosine, norm and (given the rows) the judge's accuracy on one plot
    two = render.stability_figure(traced_run, "applied")
    three = render.stability_figure(traced_run, "applied", rows)
    assert three.shape[0] == two.shape[0] and three.shape[1] > two.shape[1] * 1.25
    no_judge = render.stability_figure(traced_run, "raw", column_stability(traced_run, None))
    assert no_judge.shape == three.shape


def test_inspector_and_attack_pictures(tiny_bundle):
    from engine.probes import inspect_gradients, targeted_attack

    image = torch.zeros(1, 1, 28, 28)
    records = inspect_gradients(tiny_bundle, image, 3, [0, 500], ["vanilla", "nonrobust"])
    picture, frame = render.inspector_outputs(records, tiny_bundle.class_names, signed=False)
    assert picture.shape[0] > 2 * 112 and picture.shape[1] > 3 * 112
    assert list(frame["guide"]) == ["vanilla", "nonrobust"] * 2 and list(frame["t"]) == [0, 0, 500, 500]
    attacks = targeted_attack(tiny_bundle, image, 7, eps=2.0, steps=2, guides=["vanilla"])
    picture, frame = render.attack_outputs(attacks, tiny_bundle.class_names, 7)
    assert picture.shape[1] > 3 * 112 and frame.loc[0, "‖δ‖₂"] <= 2.0 + 1e-3


def test_plots_draw_quartile_bands_that_stay_inside_the_data(traced_run):
    summary = traced_run.traces["vanilla"].summary()
    norms = traced_run.traces["vanilla"].series("grad_norm").double()
    for i in range(norms.shape[0]):
        q25, median, q75 = (summary["grad_norm"][k][i] for k in ("q25", "median", "q75"))
        assert float(norms[i].min()) <= q25 <= median <= q75 <= float(norms[i].max())
    # mean - std may fall below zero (on a log axis the band then fills down to the axis); quartiles cannot
    assert min(summary["grad_norm"]["q25"]) > 0


def test_accuracy_bars_keep_their_labels_clear_of_the_title_and_uncut(traced_run, tiny_bundle):
    import copy
    import dataclasses

    from matplotlib.figure import Figure

    run = copy.copy(traced_run)
    long_names = ["unguided", "vanilla", "nonrobust x0+adam"]
    run.configs = [dataclasses.replace(config, name=name) for config, name in zip(run.configs, long_names)]
    rows = column_stability(traced_run, tiny_bundle.judge)
    for row, name in zip(rows, long_names):
        row.column, row.judge_accuracy, row.judge_accuracy_se = name, 1.0, 0.0  # full bars reach the top
    fig = Figure(figsize=(4, 3.6), dpi=90, layout="constrained")
    ax = fig.subplots()
    render._accuracy_panel(ax, run, rows, render._colors(3))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels() if t.get_text()]
    assert set(long_names) <= set(labels)  # names in full, not cut with an ellipsis
    title = ax.title.get_window_extent(renderer)
    figure_box = fig.bbox
    values = [t for t in ax.texts if t.get_text().endswith("%")]
    assert len(values) == 3
    for text in [*values, *ax.get_yticklabels()]:
        box = text.get_window_extent(renderer)
        assert not box.overlaps(title), text.get_text()
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1, text.get_text()


def test_the_stability_table_is_narrow(traced_run, tiny_bundle):
    frame = render.stability_table(column_stability(traced_run, tiny_bundle.judge))
    assert len(frame.columns) <= 9
    assert list(frame["guidance"]) == ["unguided", "guide vanilla, x_t, s=1", "guide nonrobust, x0, adam, s=0.5"]


def test_gradient_problems_say_why_a_map_is_blank():
    from engine.summaries import gradient_problems

    grads = torch.randn(5, 1, 4, 4)
    grads[1] = 0.0
    grads[2] = 0.0
    grads[3, 0, 1, 1] = float("nan")
    grads[4] = 0.25
    x0 = torch.rand(5, 1, 4, 4) * 2 - 1
    x0[2] = torch.where(torch.randn(1, 4, 4) >= 0, 1.0, -1.0)  # every pixel at +-1: fully clipped
    assert gradient_problems(grads, x0) == ["", "zero", "zero, x0 clipped", "not finite", "constant"]
    assert gradient_problems(grads) == ["", "zero", "zero", "not finite", "constant"]


def test_blank_gradient_tiles_are_marked_and_explained(traced_run, tiny_bundle):
    import copy

    from engine.probes import GradientRecord

    # as on the bundled models at t = 999: the column guided through x0 has an exactly zero gradient at the
    # first step, because the predicted x0 is clipped to +-1 at every pixel (nothing flows back through the clip)
    first = traced_run.traces["nr adam"].snapshots[0]
    assert not first.grad_raw.any() and bool((first.pred_x0.abs() >= 1).all())
    items = render.filmstrip_gallery(traced_run, "gradient", frames=4)
    captions = {item[1].split(":")[0]: item[1] for item in items}
    assert f"'zero' tiles (seed 0 at t={first.timestep:g}, seed 1 at t={first.timestep:g}): the gradient is " \
           "exactly 0: every pixel of the predicted x0 is at the clip limit +-1" in captions["nr adam"]
    assert "\n" not in captions["vanilla"]  # nothing to explain there: one caption line
    zero_tile = items[1][0][:56, :56]  # first row (seed 0), first frame
    assert len(np.unique(zero_tile.reshape(-1, 3), axis=0)) > 2  # not a plain black square: the word is on it
    # a gradient that overflowed somewhere is marked too
    run = copy.deepcopy(traced_run)
    last = run.traces["vanilla"].snapshots[-1]
    last.grad_raw[0, 0, 0, 0] = float("nan")
    broken = {item[1].split(":")[0]: item[1] for item in render.filmstrip_gallery(run, "gradient", frames=4)}
    assert f"'NaN/inf' tiles (seed 0 at t={last.timestep:g}): the gradient has NaN" in broken["vanilla"]
    picture, caption = items[1]
    one_line = render.labelled_stack([(picture, caption.split("\n")[0])])
    noted = render.labelled_stack([(picture, caption)])
    assert noted.shape[0] > one_line.shape[0]  # the note is drawn, wrapped to the picture: no wider figure
    assert noted.shape[1] == one_line.shape[1]
    # the inspector marks and explains the same way
    record = GradientRecord("vanilla", 999, torch.zeros(1, 28, 28), torch.zeros(1, 28, 28), -0.1, 3, 0.9,
                            torch.full((10,), 0.1))
    _, frame = render.inspector_outputs([record], tiny_bundle.class_names, signed=False)
    assert frame.loc[0, "gradient map"].startswith("zero: the gradient is exactly 0")


def test_describe_markdown_names_every_guide(tiny_bundle):
    text = render.describe_markdown(tiny_bundle.describe())
    for name in ("vanilla", "robust", "nonrobust", "828,034", "null label 10"):
        assert name in text


# ------------------------------------------------------------------------------------ downloads
def test_run_files_regenerate_the_run(traced_run, tmp_path):
    paths = write_run_files(traced_run, tmp_path / "run", {"class_names": [str(i) for i in range(10)]})
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    assert "run_config.json" in names and "02-vanilla.npz" in names and "03-nr_adam.trace.pt" in names
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert config["seeds"] == [0, 1] and [c["name"] for c in config["configs"]] == ["unguided", "vanilla", "nr adam"]
    with np.load(tmp_path / "run" / "02-vanilla.npz") as data:
        assert data["arr_0"].shape == (2, 28, 28, 1) and list(data["arr_1"]) == [3, 3]
    trace = torch.load(tmp_path / "run" / "02-vanilla.trace.pt", weights_only=True)
    assert trace["cos_raw"].shape == (3, 2)


# ------------------------------------------------------------------------------------ CLI and server pieces
def test_help_documents_the_flags(capsys):
    from app.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--host", "--port", "--bundle", "--denoiser", "--guide", "--preset-set", "--device",
                 "--survey-db", "--admin-password", "RCG_ADMIN_PASSWORD", "--concurrency", "--max-images",
                 "--lab-password", "RCG_LAB_PASSWORD", "--public-lab", "GRADIO_ANALYTICS_ENABLED=False",
                 "no share link"):
        assert flag in text, flag


def test_analytics_are_off_whatever_the_environment(monkeypatch):
    import importlib

    from gradio import analytics

    import app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    importlib.reload(app)
    assert not analytics.analytics_enabled()


@pytest.mark.parametrize("host, survey, password, public, refused", [
    ("0.0.0.0", True, None, False, True),       # raters could open the lab
    ("192.168.1.5", True, None, False, True),
    ("0.0.0.0", False, None, False, True),      # no survey: still the whole network
    ("::", False, None, False, True),
    ("127.example.com", True, None, False, True),  # a name that merely starts with 127.
    ("127.0.0.1.nip.io.invalid", False, None, False, True),
    ("::ffff:192.168.1.5", False, None, False, True),
    ("0.0.0.0", True, "pw", False, False),      # lab behind its password
    ("0.0.0.0", False, "pw", False, False),
    ("0.0.0.0", True, None, True, False),       # explicitly public
    ("0.0.0.0", False, None, True, False),
    ("127.0.0.1", True, None, False, False),    # only this machine reaches it
    ("127.1.2.3", False, None, False, False),
    ("::1", True, None, False, False),
    ("[::1]", True, None, False, False),
    ("::ffff:127.0.0.1", True, None, False, False),
    ("localhost", True, None, False, False),    # a name: decided by what it resolves to
])
def test_the_lab_is_never_open_to_the_network_without_a_password(host, survey, password, public, refused):
    from app.__main__ import check_lab_exposure

    if refused:
        with pytest.raises(SystemExit, match="--lab-password") as info:
            check_lab_exposure(host, survey, password, public)
        assert "--public-lab" in str(info.value) and "127.0.0.1" in str(info.value)
    else:
        check_lab_exposure(host, survey, password, public)


def test_main_refuses_a_public_lab_before_loading_models(monkeypatch):
    from app.__main__ import LAB_PASSWORD_ENV, main

    monkeypatch.delenv(LAB_PASSWORD_ENV, raising=False)

    with pytest.raises(SystemExit, match="Refusing to serve the lab"):
        main(["--host", "0.0.0.0", "--bundle", "/nonexistent"])
    with pytest.raises(SystemExit, match="Refusing to serve the lab"):
        main(["--host", "0.0.0.0", "--no-survey", "--bundle", "/nonexistent"])


def test_no_models_message_says_how_to_point_at_a_bundle(tmp_path, monkeypatch):
    import engine.bundles
    from app.__main__ import main

    monkeypatch.setattr(engine.bundles, "DEFAULT_BUNDLE_DIR", tmp_path / "models")
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "1"])
    text = str(exit_info.value)
    assert "No models to load" in text and "--bundle" in text and "--preset-set" in text
    with pytest.raises(SystemExit, match="Cannot load the models"):
        main(["--bundle", str(tmp_path / "nothing"), "--port", "1"])


def test_survey_fallbacks(monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from app.server import SurveyOptions, survey_app

    app, note = survey_app(SurveyOptions(enabled=False))
    assert note.startswith("off")
    assert TestClient(app).get("/anything").status_code == 503
    monkeypatch.setitem(sys.modules, "survey.web", None)  # import fails as if the package were missing
    app, note = survey_app(SurveyOptions(str(tmp_path / "s.db")))
    response = TestClient(app).get("/")
    assert response.status_code == 503 and "unavailable" in response.text and note.startswith("unavailable")


def test_database_passwords_are_never_shown(monkeypatch):
    from fastapi.testclient import TestClient

    from app.server import SurveyOptions, scrub, shown_url, survey_app, survey_status

    url = "postgresql://rater:s3cret@db.example/survey"
    assert "s3cret" not in shown_url(url) and "db.example" in shown_url(url)
    assert shown_url("survey.db") == "survey.db"
    assert scrub(f"cannot connect to {url} with s3cret", url).count("s3cret") == 0

    import survey.web

    def failing(*args, **kwargs):
        raise RuntimeError(f"could not connect to {url}")

    monkeypatch.setattr(survey.web, "create_survey_app", failing)
    app, note = survey_app(SurveyOptions(url, media_dir="/tmp/media"))
    page = TestClient(app).get("/r/x")
    assert page.status_code == 503 and "s3cret" not in page.text and "db.example" not in page.text
    assert note.startswith("unavailable") and "s3cret" not in note and survey_status(note) == "unavailable"
    assert survey_status("at /survey (survey.db; ...)") == "on" and survey_status("off (--no-survey)") == "off"


def test_stop_requests_reach_only_the_running_session(tiny_bundle, tmp_path):
    from app.state import LabState

    state = LabState(tiny_bundle, run_dir=tmp_path)
    assert state.request_stop("a") is False  # nothing to stop
    should_stop = state.start_run("a")
    assert state.request_stop("b") is False and not should_stop()
    assert state.request_stop("a") is True and should_stop()
    state.finish_run("a")
    state.arm("a")  # a new run, clicked after that Stop: not stopped
    assert not state.start_run("a")()
    state.finish_run("a")
    state.arm("a")  # Stop while the run still waits in the queue: stopped at its first step
    assert state.request_stop("a") is True
    assert state.start_run("a")()
    state.finish_run("a")
    state.arm("a")
    state.disarm("a")  # refused input: nothing armed is left behind
    assert state.request_stop("a") is False and not state._stops and not state._running


def test_lab_password_guards_the_lab_but_not_the_survey(tiny_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from app.server import SurveyOptions, create_server
    from app.state import LabState

    state = LabState(tiny_bundle, run_dir=tmp_path / "runs")
    app = create_server(state, survey=SurveyOptions(enabled=False), lab_password="hunter2")
    with TestClient(app) as http:
        assert http.get("/healthz").json()["models"] == "tiny-random"
        assert http.get("/config").status_code == 401
        assert http.get("/survey/").status_code == 503  # the survey answers for itself, no lab login
        assert http.post("/login", data={"username": "x", "password": "wrong"}).status_code == 400
        assert http.post("/login", data={"username": "x", "password": "hunter2"}).status_code == 200
        assert http.get("/config").status_code == 200


def test_a_bundle_without_guides_still_samples_and_says_what_is_missing(tiny_bundle, tmp_path):
    import dataclasses

    from app.state import LabState
    from app.views.attack import attack
    from app.views.inspector import inspect

    bare = dataclasses.replace(tiny_bundle, guides={}, guide_info={})
    configs = configs_from_rows(bare, read_columns(cols.default_table(bare)), False)
    assert [c.name for c in configs] == ["unguided"]
    state = LabState(bare, run_dir=tmp_path)
    chosen = {"image": torch.zeros(1, 1, 28, 28), "label": None, "source": "test"}
    with pytest.raises(LabInputError, match="no guide"):
        inspect(state, chosen, "3", "0", [], 0, False)
    with pytest.raises(LabInputError, match="no guide"):
        attack(state, chosen, "3", "L2", 1.0, 2, 0, [])


# ------------------------------------------------------------------------------------ the bundled models
def test_three_way_comparison_runs_in_the_lab_on_the_bundled_models(tmp_path):
    """Issue 7's 'done when': the lab's own presets run vanilla, robust and the non-robust
    guide (with and without Adam / EMA) on the shipped bundle, in both denoiser modes.
    Skipped while the bundle is still being assembled (tests/test_bundled_models.py
    fails on an incomplete bundle)."""
    from app.state import LabState
    from app.views.sampling import render_record, run_side_by_side
    from app.views.stability import ALL_CLASSES, stability_run
    from engine.bundle_index import models_root
    from engine.bundles import load_bundle

    folder = models_root() / "mnist"
    manifest = folder / "bundle.json"
    guides = set(json.loads(manifest.read_text()).get("guides", {})) if manifest.is_file() else set()
    missing = sorted({"vanilla", "robust", "nonrobust"} - guides)
    if missing:
        pytest.skip(f"the bundled models in {folder} lack the guides {missing}")
    bundle = load_bundle(folder)
    state = LabState(bundle, run_dir=tmp_path)
    record = run_side_by_side(state, "test", "3", "0-1", 4, "", "DDPM", 0.0, cols.preset_table(bundle, "gradcheck"),
                              False, ["vanilla", "robust"], 2)
    names = [c.name for c in record.result.configs]
    assert {"unguided", "vanilla", "robust", "nonrobust"} <= set(names)
    assert any("adam" in n for n in names) and any("ema" in n for n in names)
    table = render_record(record, 2, False, "applied")["table"]
    assert table["judge accuracy"].notna().all()
    assert table[table["guidance"].str.startswith("guide ")]["mean cos"].notna().all()
    _, ticked = cols.stability_choices(bundle)
    unconditional = stability_run(state, "test", ticked, ALL_CLASSES, 2, 3, 0, "DDPM", True)
    assert {c.denoiser_mode for c in unconditional.result.configs} == {"unconditional"}


def test_difference_panel_opens_on_robust_minus_vanilla(tiny_bundle):
    """The column difference opens on robust - vanilla whenever a run has both guides,
    whatever their column names and order; otherwise on the second minus the first column."""
    from types import SimpleNamespace

    from app.views.compare import default_pair
    from engine.columns import GuidanceSpec

    def record(*specs):
        configs = [GuidanceSpec.parse(s).to_config(tiny_bundle.guide_info) for s in specs]
        return SimpleNamespace(result=SimpleNamespace(configs=configs))

    assert default_pair(record("unguided", "v=vanilla:16", "r=robust:16")) == ("r", "v")
    assert default_pair(record("r=robust:2", "unguided", "vanilla:1")) == ("r", "vanilla")
    assert default_pair(record("unguided", "nonrobust:1")) == ("nonrobust", "unguided")
    assert default_pair(record("unguided")) == ("unguided", None)
