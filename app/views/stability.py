"""Gradient stability (GradCheck, Vaeth et al. 2024): for every guide of a run, the
per-sample cosine similarity between consecutive guidance gradients and the gradient
norm over the steps (batch median and quartile band), and the judge's class accuracy of the
final images."""

from __future__ import annotations

from typing import Any

import gradio as gr

from engine.summaries import column_stability
from engine.sampler import SamplingCancelled

from .. import columns as cols
from .. import render
from ..errors import user_errors
from ..inputs import COLUMN_HEADERS, LabInputError, parse_class, parse_int
from ..state import LabState, RunRecord
from . import View, class_choices, session_of
from .sampling import default_steps, run_side_by_side, stop_message

HELP = ("A batch of images per column, labels cycling over the classes (or one class), all columns from the same "
        "seeds. **cos** near 1 means the guide keeps pushing in the same direction from step to step; GradCheck "
        "reports that gradients of classifiers not trained for noisy inputs jump around, and that guiding through "
        "the predicted x0 with Adam or EMA smooths them (compare the **applied** gradients: what a step actually "
        "adds). **late cos**: the second half of the steps (low noise). "
        "**judge accuracy**: how often the bundle's independent judge sees the requested class in the final "
        "images. Or analyse a run you made in the side-by-side tab.")
ALL_CLASSES = "all classes (cycled)"
DEFAULT_BATCH = 8
DEFAULT_STEPS = 25


def stability_run(state: LabState, session: str, names: list[str] | None, class_value: Any, batch: Any, steps: Any,
                  first_seed: Any, sampler: str, unconditional: bool, progress: Any = None) -> RunRecord:
    """Sample the chosen columns over a batch (one seed per image) and keep the run."""
    bundle = state.bundle
    if not names:
        raise LabInputError("tick at least one column")
    rows = cols.rows_named(bundle, list(names))
    n = parse_int(batch, "images per column", 1, state.limits.max_images)
    start = parse_int(first_seed if first_seed not in (None, "") else 0, "first seed", 0, 2**62)
    if class_value in (None, "", ALL_CLASSES):
        labels = [i % bundle.num_classes for i in range(n)]
    else:
        labels = [parse_class(bundle, class_value)] * n
    return run_side_by_side(state, session, None, f"{start}-{start + n - 1}", steps, "", sampler, 0.0,
                            {"headers": COLUMN_HEADERS, "data": rows}, unconditional, [], 2, progress,
                            kind="stability", labels=labels)


def analyse(record: RunRecord, gradient: str) -> tuple[Any, Any, str]:
    """The stability figure, table and a status line of a kept run."""
    gradient = gradient if gradient in ("raw", "applied") else "applied"
    rows = column_stability(record.result, record.bundle.judge, gradient)
    judged = "" if record.bundle.judge is not None else " (no judge in these models: accuracy left empty)"
    text = (f"**{record.id}** ({record.kind}): {len(record.result.seeds)} image(s) per column, "
            f"{record.result.settings.get('num_steps')} steps, {gradient} gradients{judged}")
    return render.stability_figure(record.result, gradient, rows), render.stability_table(rows), text


def build(state: LabState, concurrency: int) -> View:
    bundle = state.bundle
    names, ticked = cols.stability_choices(bundle)
    with gr.Tab("Stability", id="stability"):
        gr.Markdown(HELP)
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                columns = gr.CheckboxGroup(names, value=ticked, label="Columns",
                                           info="every guide at its defaults, plus the stabilised variants")
                class_dd = gr.Dropdown([ALL_CLASSES, *class_choices(bundle.class_names)], value=ALL_CLASSES,
                                       label="Class", allow_custom_value=True)
                with gr.Row():
                    batch = gr.Number(DEFAULT_BATCH, precision=0, label="Images per column",
                                      info="the batch the spread is taken over")
                    steps = gr.Number(min(DEFAULT_STEPS, default_steps(state)), precision=0,
                                      label="Steps", info="more steps = finer curves, longer runs",
                                      elem_id="stability-steps")
                with gr.Row():
                    first_seed = gr.Number(0, precision=0, label="First seed")
                    sampler = gr.Radio(["DDPM", "DDIM"], value="DDPM", label="Sampler")
                unconditional = gr.Checkbox(False, label="Unconditional denoiser (null label)",
                                            info="GradCheck's setting: only the classifier knows the class")
                gradient = gr.Radio(["applied", "raw"], value="applied", label="Gradient",
                                    info="applied: the direction each step moves, after Adam / EMA (the same "
                                         "cosine as raw for unstabilised columns); raw: as the classifier gives it")
                with gr.Row():
                    run_btn = gr.Button("Run stability comparison", variant="primary", elem_id="stability-run")
                    stop_btn = gr.Button("Stop", variant="stop")
                with gr.Accordion("…or analyse a kept run", open=False):
                    run_list = gr.Dropdown(state.run_labels(), label="Kept runs", allow_custom_value=True,
                                           info="side-by-side and stability runs of this server, newest first")
                    with gr.Row():
                        list_btn = gr.Button("Refresh list", size="sm")
                        analyse_btn = gr.Button("Analyse", size="sm")
                status = gr.Markdown("", elem_id="stability-status")
            with gr.Column(scale=2):
                plot = gr.Image(label="Per column: cosine of consecutive gradients and gradient norm (batch median, "
                                      "band: middle half of the batch), judge accuracy of the final images (± s.e.)",
                                format="png", interactive=False, elem_id="stability-plot")
                table = gr.Dataframe(label="Per column", interactive=False, elem_id="stability-table", wrap=True,
                                     column_widths=render.STABILITY_COLUMN_WIDTHS)
        run_id = gr.State(None)

    def arm(request: gr.Request) -> None:
        state.arm(session_of(request))

    @user_errors
    def on_run(names_value, class_value, batch_value, steps_value, seed_value, sampler_value, unconditional_value,
               gradient_value, request: gr.Request, progress=gr.Progress()):
        def report(done: int, total: int) -> None:
            progress((done, total), desc="sampling", unit="steps")

        try:
            record = stability_run(state, session_of(request), names_value, class_value, batch_value, steps_value,
                                   seed_value, sampler_value, unconditional_value, report)
        except SamplingCancelled as exc:
            gr.Warning(f"Stopped: {exc}")
            return gr.skip(), gr.skip(), f"Stopped: {exc}.", gr.skip()
        finally:
            state.disarm(session_of(request))
        figure, frame, text = analyse(record, gradient_value)
        return figure, frame, text + f" — sampled in {record.seconds:.1f} s", record.id

    @user_errors
    def on_analyse(label, gradient_value):
        record = state.get_run(label)
        figure, frame, text = analyse(record, gradient_value)
        return figure, frame, text, record.id

    @user_errors
    def on_gradient(run, gradient_value):
        if not run:
            return gr.skip(), gr.skip(), gr.skip()
        return analyse(state.get_run(run), gradient_value)

    def stop(request: gr.Request) -> str:
        return stop_message(state.request_stop(session_of(request)))

    outputs = [plot, table, status, run_id]
    run_btn.click(arm, None, None, api_visibility="private", queue=False).then(
        on_run, [columns, class_dd, batch, steps, first_seed, sampler, unconditional, gradient], outputs,
        api_name="stability", concurrency_id="heavy", concurrency_limit=concurrency)
    stop_btn.click(stop, None, status, api_visibility="private", queue=False)
    analyse_btn.click(on_analyse, [run_list, gradient], outputs, api_name="analyse_run", concurrency_id="light",
                      concurrency_limit=4)
    gradient.input(on_gradient, [run_id, gradient], outputs[:3], api_visibility="private", concurrency_id="light",
                   concurrency_limit=4)
    list_btn.click(lambda: gr.update(choices=state.run_labels(), value=(state.run_labels() or [None])[0]), None,
                   run_list, api_name="list_runs", concurrency_limit=None)

    def refresh() -> list[Any]:
        b = state.bundle
        choice_names, ticked_names = cols.stability_choices(b)
        return [gr.update(choices=choice_names, value=ticked_names),
                gr.update(choices=[ALL_CLASSES, *class_choices(b.class_names)], value=ALL_CLASSES),
                gr.update(choices=state.run_labels(), value=None)]

    return View([columns, class_dd, run_list], refresh)
