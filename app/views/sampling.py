"""Side-by-side sampling (Kawar et al. Figures 2 and 5; GradCheck's three-way setting):
every column from the same seeds, so each column sees the same x_T and step noise."""

from __future__ import annotations

import time
from typing import Any, Callable

import gradio as gr

from engine.summaries import column_stability, record_every_for
from engine.sampler import SamplingCancelled
from engine.trace import TraceOptions

from .. import columns as cols
from .. import render
from ..downloads import write_run_files
from ..errors import user_errors
from ..inputs import (COLUMN_HEADERS, LabInputError, check_image_budget, configs_from_rows, parse_class, parse_float,
                      parse_seeds, parse_steps, read_columns)
from ..state import LabState, RunRecord
from . import View, class_choices, compare, session_of, study_from_run

COLUMNS_HELP = (
    "Tick **run** for each column to sample. **method**: `classifier`, `unguided` or `cfg` (classifier-free, "
    "scale = guidance weight w). **guide**: a loaded classifier. **source**: `x_t` (the noisy image, Dhariwal & "
    "Nichol), `x0` (through the denoiser's predicted x0, GradCheck) or `x0_detached`. **stabiliser**: `none`, "
    "`adam` or `ema` (GradCheck; Adam's output is of order 1 per pixel whatever the gradient's size, so it "
    "needs its own, usually smaller, scale). "
    "Rename a row to run the same guide twice with other settings. Or leave **method** and **guide** empty and "
    "write a whole column spec in **column**: `[NAME=]KIND[@SOURCE][+STABILISER][:SCALE][/KEY=VALUE]`, e.g. "
    "`strong=robust@x0+adam:2/loss=logit` (README, 'Column specs').")
DEFAULT_SEEDS = "0-3"
DEFAULT_FRAMES = 8


def lab_defaults(state: LabState) -> dict[str, Any]:
    """The bundle's ``lab`` section of bundle.json (an empty dict when absent)."""
    return state.bundle.section("lab")


def default_steps(state: LabState) -> int:
    """The lab's default step count: ``lab.steps`` of bundle.json, else the bundle's
    default respacing capped at 50 (a few seconds on a CPU for the demo models)."""
    lab = lab_defaults(state)
    if isinstance(lab.get("steps"), int):
        return int(lab["steps"])
    text = str(state.bundle.default_respacing or "").strip()
    return min(int(text), 50) if text.isdigit() else 50


def default_unconditional(state: LabState) -> bool:
    """``lab.unconditional`` of bundle.json: open the side by side with the denoiser's null
    label ticked (where the bundle's vanilla-vs-robust contrast was measured)."""
    return bool(lab_defaults(state).get("unconditional", False)) and state.bundle.null_label is not None


def default_sampler(state: LabState) -> str:
    """``lab.sampler`` of bundle.json (``ddpm`` or ``ddim``) as the Sampler radio spells it,
    else DDPM."""
    return "DDIM" if str(lab_defaults(state).get("sampler", "ddpm")).strip().lower() == "ddim" else "DDPM"


def default_seeds(state: LabState) -> str:
    """``lab.seeds`` of bundle.json, else 0-3."""
    seeds = lab_defaults(state).get("seeds")
    return str(seeds) if isinstance(seeds, str) and seeds.strip() else DEFAULT_SEEDS


SETTINGS_HELP = ("**Settings.** *Few-step DDIM*: 10 deterministic DDIM steps (DDIM's stride, `ddim10`), where "
                 "the vanilla guide's gradients visibly spoil digits and the robust guide's still help (MNIST, "
                 "unconditional, s = 16: FID 11.1 vs 5.8, judge accuracy 0.68 vs 0.87; README, *DDIM with few "
                 "steps*). *Bundle defaults*: back to the bundle's measured setting.")
FEW_STEP_DDIM_STEPS = 10


def few_step_settings() -> tuple[int, str, str]:
    """Steps, sampler and respacing of the few-step DDIM setting (the Steps box spaces them
    with DDIM's stride, so the respacing box is cleared)."""
    return FEW_STEP_DDIM_STEPS, "DDIM", ""


def default_settings(state: LabState) -> tuple[Any, ...]:
    """The side by side's opening settings for the loaded bundle: steps, sampler, respacing,
    unconditional switch, seeds and column table."""
    return (default_steps(state), default_sampler(state), "", default_unconditional(state), default_seeds(state),
            cols.default_table(state.bundle))


def run_side_by_side(state: LabState, session: str, class_value: Any, seeds_text: Any, steps: Any, respacing: Any,
                     sampler: str, eta: Any, table: Any, unconditional: bool, monitors: list[str] | None,
                     frames: Any, progress: Callable[[int, int], None] | None = None, kind: str = "side-by-side",
                     labels: list[int] | None = None) -> RunRecord:
    """Sample every ticked column of ``table`` from the same seeds; trace it; keep it."""
    bundle = state.bundle
    limits = state.limits
    seeds = parse_seeds(seeds_text, limits.max_images)
    if labels is None:
        labels = [parse_class(bundle, class_value)] * len(seeds)
    sampler_name = str(sampler or "ddpm").strip().lower()
    if sampler_name not in ("ddpm", "ddim"):
        raise LabInputError(f"sampler must be DDPM or DDIM, got {sampler!r}")
    respacing_text = parse_steps(bundle, steps, respacing, limits.max_steps, sampler_name)
    eta_value = parse_float(eta if eta not in (None, "") else 0.0, "eta", 0.0, 1.0)
    configs = configs_from_rows(bundle, read_columns(table), bool(unconditional))
    check_image_budget(seeds, len(configs), limits.max_images)
    num_steps = bundle.diffusion(respacing_text).num_timesteps
    frame_count = int(parse_float(frames if frames not in (None, "") else DEFAULT_FRAMES, "frames", 1, 32))
    trace = TraceOptions(record_every=record_every_for(num_steps, frame_count),
                         monitors=tuple(m for m in (monitors or []) if m in bundle.guides))
    should_stop = state.start_run(session)
    started = time.perf_counter()
    try:
        result = bundle.sample(configs, labels, seeds, respacing=respacing_text, sampler=sampler_name, eta=eta_value,
                               trace=trace, progress=progress, should_stop=should_stop)
    finally:
        state.finish_run(session)
    seconds = time.perf_counter() - started
    run_id, folder = state.new_run_folder()
    files = write_run_files(result, folder, {"class_names": bundle.class_names, "models": bundle.describe(),
                                             "seconds": round(seconds, 2)})
    record = RunRecord(run_id, kind, result, bundle, list(bundle.class_names), folder, seconds=seconds, files=files)
    return state.add_run(record)


def render_record(record: RunRecord, frames: Any, signed: bool, gradient: str) -> dict[str, Any]:
    """Every output of the view for a kept run."""
    gradient = gradient if gradient in ("raw", "applied") else "raw"
    frame_count = int(parse_float(frames if frames not in (None, "") else DEFAULT_FRAMES, "frames", 1, 32))
    rows = column_stability(record.result, record.bundle.judge, gradient)
    accuracies = {r.column: r.judge_accuracy for r in rows}
    verdicts = compare.verdicts_of(record)
    return {
        "final": render.labelled_stack(render.verdict_gallery(record.result, verdicts, record.class_names, accuracies)),
        "verdicts": verdicts,
        "x0": render.labelled_stack(render.filmstrip_gallery(record.result, "pred_x0", frame_count)),
        "grad": render.labelled_stack(render.filmstrip_gallery(record.result, "gradient", frame_count, bool(signed),
                                                               gradient)),
        "logp": render.log_prob_figure(record.result),
        "stability": render.stability_figure(record.result, gradient, rows),
        "table": render.stability_table(rows),
        "files": record.files,
    }


def status_line(record: RunRecord) -> str:
    r = record.result
    label = record.class_names[r.labels[0]] if r.labels and len(set(r.labels)) == 1 else "several classes"
    return (f"**{record.id}**: class {label}, {len(r.seeds)} seed(s) x {len(r.configs)} column(s), "
            f"{r.settings.get('num_steps')} {str(r.settings.get('sampler', '')).upper()} steps in "
            f"{record.seconds:.1f} s.")


def stop_message(active: bool) -> str:
    return "Stopping after the current step…" if active else "No run of yours is in progress."


def build(state: LabState, concurrency: int) -> View:
    """Lay out the side-by-side tab."""
    bundle = state.bundle
    with gr.Tab("Side by side", id="sampling"):
        run_id = gr.State(None)
        gr.Markdown("Sample several guidance columns **from the same seeds**: every column starts from the same "
                    "x_T and draws the same noise at every step, so differences come from the guidance alone "
                    "(the paper's 'same class and same random seed').")
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                class_dd = gr.Dropdown(class_choices(bundle.class_names), value=bundle.class_names[0], label="Class",
                                       allow_custom_value=True, info="the class y every column is guided towards")
                seeds = gr.Textbox(default_seeds(state), label="Seeds",
                                   info="one image per seed: '0-3', '1,5,9'; same seed = same noise in every column")
                with gr.Row():
                    steps = gr.Number(default_steps(state), label="Steps", precision=0,
                                      info="respaced sampling steps (fewer = faster)", elem_id="sample-steps")
                    sampler = gr.Radio(["DDPM", "DDIM"], value=default_sampler(state), label="Sampler")
                eta = gr.Slider(0.0, 1.0, value=0.0, step=0.1, label="DDIM eta",
                                info="DDIM only: 0 = deterministic, 1 = DDPM-like noise")
                unconditional = gr.Checkbox(default_unconditional(state), label="Unconditional denoiser (null label)",
                                            info="GradCheck's setting: the denoiser ignores the class and only the "
                                                 "classifier steers (classifier-free columns stay conditional)")
                gr.Markdown(SETTINGS_HELP)
                with gr.Row():
                    few_step_btn = gr.Button("Few-step DDIM", size="sm", elem_id="sample-few-step")
                    defaults_btn = gr.Button("Bundle defaults", size="sm", elem_id="sample-defaults")
                with gr.Accordion("Columns", open=True):
                    gr.Markdown(COLUMNS_HELP)
                    with gr.Row():
                        preset_buttons = {key: gr.Button(key, size="sm") for key in cols.PRESETS}
                    table = gr.Dataframe(cols.default_table(bundle), headers=COLUMN_HEADERS,
                                         datatype=["bool", "str", "str", "str", "number", "str", "str"],
                                         interactive=True, label="Columns", elem_id="columns-table")
                with gr.Accordion("Trace and display", open=False):
                    monitors = gr.CheckboxGroup(list(bundle.guides), value=list(bundle.guides),
                                                label="log p monitors",
                                                info="classifiers whose log p(y | x_t) is plotted for every column "
                                                     "(one extra forward pass each per step)")
                    frames = gr.Slider(2, 16, value=DEFAULT_FRAMES, step=1, label="Filmstrip frames",
                                       info="evenly spaced steps shown in the filmstrips")
                    gradient = gr.Radio(["raw", "applied"], value="raw", label="Gradient",
                                        info="raw: as the classifier gives it; applied: after stabiliser and scale")
                    signed = gr.Checkbox(False, label="Signed gradient colours",
                                         info="blue = negative, white = 0, red = positive; off: min-max per image")
                    respacing = gr.Textbox("", label="Respacing (advanced)",
                                           placeholder="e.g. ddim25 or 10,10,5 — overrides Steps")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="sample-run")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="sample-stop")
                status = gr.Markdown("", elem_id="sample-status")
            with gr.Column(scale=2):
                final = gr.Image(label="Final images: one row per column, one image per seed", format="png",
                                 interactive=False, elem_id="sample-final")
                verdicts = compare.build_verdicts()
                difference = compare.build(state, run_id, verdicts)
                x0strip = gr.Image(label="Predicted x0 over the steps (Figure 5): rows = seeds, left to right = "
                                         "noise to image", format="png", interactive=False, elem_id="sample-x0")
                gradstrip = gr.Image(label="Guidance gradient over the steps", format="png", interactive=False,
                                     elem_id="sample-grad")
                logp_plot = gr.Image(label="log p(y | x_t) per classifier", format="png", elem_id="sample-logp",
                                     interactive=False)
                stability_plot = gr.Image(label="Gradient stability: cosine of consecutive gradients, norm; judge "
                                                "accuracy of the final images",
                                          format="png", elem_id="sample-stability", interactive=False)
                summary = gr.Dataframe(label="Per column (judge accuracy of the final images; cosine and norm "
                                             "averaged over steps and images)", interactive=False,
                                       elem_id="sample-table", wrap=True,
                                       column_widths=render.STABILITY_COLUMN_WIDTHS)
                files = gr.File(label="Downloads: run config, images (.npz, .png), traces (.pt)",
                                file_count="multiple", interactive=False)
        study_from_run.build(state, run_id)  # the kept run -> a survey study (admin)

    outputs = [final, x0strip, gradstrip, logp_plot, stability_plot, summary, files, status, run_id]

    def arm(request: gr.Request) -> None:
        state.arm(session_of(request))

    @user_errors
    def sample(class_value, seeds_text, steps_value, respacing_text, sampler_name, eta_value, table_value,
               unconditional_value, monitor_names, frame_count, signed_value, gradient_kind, request: gr.Request,
               progress=gr.Progress()):
        def report(done: int, total: int) -> None:
            progress((done, total), desc="sampling", unit="steps")

        try:
            record = run_side_by_side(state, session_of(request), class_value, seeds_text, steps_value, respacing_text,
                                      sampler_name, eta_value, table_value, unconditional_value, monitor_names,
                                      frame_count, report)
        except SamplingCancelled as exc:
            gr.Warning(f"Stopped: {exc}")
            return [gr.skip()] * 7 + [f"Stopped: {exc}.", gr.skip()] + [gr.skip()] * len(difference.run_outputs)
        finally:
            state.disarm(session_of(request))
        out = render_record(record, frame_count, signed_value, gradient_kind)
        return [out["final"], out["x0"], out["grad"], out["logp"], out["stability"], out["table"], out["files"],
                status_line(record), record.id, *compare.run_values(record, out["verdicts"])]

    @user_errors
    def rerender(run, frame_count, signed_value, gradient_kind):
        if not run:
            return [gr.skip()] * 6
        out = render_record(state.get_run(run), frame_count, signed_value, gradient_kind)
        return [out["final"], out["x0"], out["grad"], out["logp"], out["stability"], out["table"]]

    def stop(request: gr.Request) -> str:
        return stop_message(state.request_stop(session_of(request)))

    inputs = [class_dd, seeds, steps, respacing, sampler, eta, table, unconditional, monitors, frames, signed, gradient]
    run_btn.click(arm, None, None, api_visibility="private", queue=False).then(
        sample, inputs, outputs + difference.run_outputs, api_name="sample", concurrency_id="heavy",
        concurrency_limit=concurrency)
    stop_btn.click(stop, None, status, api_name="stop", concurrency_limit=None, queue=False)
    for i, control in enumerate((frames, signed, gradient)):
        control.input(rerender, [run_id, frames, signed, gradient], outputs[:6],
                      api_name="rerender_sampling" if i == 0 else None,
                      api_visibility="public" if i == 0 else "private", concurrency_id="light", concurrency_limit=4)
    few_step_btn.click(lambda: few_step_settings(), None, [steps, sampler, respacing], api_name="settings_few_step_ddim",
                       concurrency_limit=None)
    defaults_btn.click(lambda: default_settings(state), None, [steps, sampler, respacing, unconditional, seeds, table],
                       api_name="settings_defaults", concurrency_limit=None)
    for key, button in preset_buttons.items():
        button.click(user_errors(lambda key=key: cols.preset_table(state.bundle, key)), None, table,
                     api_name=f"columns_{key}", concurrency_limit=None)

    def refresh() -> list[Any]:
        b = state.bundle
        return [gr.update(choices=class_choices(b.class_names), value=b.class_names[0]), cols.default_table(b),
                gr.update(choices=list(b.guides), value=list(b.guides)), default_steps(state),
                default_unconditional(state), default_seeds(state), default_sampler(state)]

    return View([class_dd, table, monitors, steps, unconditional, seeds, sampler], refresh)
