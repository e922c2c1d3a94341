"""The side-by-side tab's comparison panel: the judge's verdict on every final image,
and the difference image of two chosen columns of a kept run (same seed and noise, so
the difference is guidance alone). Widgets and wiring only: the verdicts and the
difference come from :mod:`engine.comparisons`, the pictures from :mod:`app.render`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from engine.comparisons import column_difference, judge_verdicts

from .. import render
from ..errors import user_errors
from ..inputs import LabInputError
from ..state import LabState, RunRecord

HELP = ("Pick two columns of the last run: the picture shows A, B and A − B per seed on one blue-white-red scale "
        "(legend below it). Every column starts from the same x_T and draws the same noise, so A − B is what "
        "guidance alone changed.")


@dataclass
class ComparePanel:
    """The components of the panel."""

    verdicts: gr.Dataframe
    column_a: gr.Dropdown
    column_b: gr.Dropdown
    picture: gr.Image
    table: gr.Dataframe

    @property
    def run_outputs(self) -> list[Any]:
        """What a new run updates (see :func:`run_values`)."""
        return [self.verdicts, self.column_a, self.column_b, self.picture, self.table]


def verdicts_of(record: RunRecord) -> list:
    """The judge's verdict per (column, seed) of a kept run; [] without a judge."""
    if record.bundle.judge is None:
        return []
    return judge_verdicts(record.bundle.judge, record.result)


def verdict_frame(record: RunRecord, verdicts: list | None = None) -> pd.DataFrame:
    verdicts = verdicts_of(record) if verdicts is None else verdicts
    return render.verdict_table(verdicts, record.class_names)


def default_pair(record: RunRecord) -> tuple[str | None, str | None]:
    """The pair the panel opens on: 'robust - vanilla' when the run has columns of both
    guides (the comparison the lab exists for), else the first two columns (A = the second,
    B = the first)."""
    configs = record.result.configs
    names = [c.name for c in configs]
    if len(names) < 2:
        return (names[0] if names else None), None
    by_guide = {}
    for c in configs:
        if c.method == "classifier":
            by_guide.setdefault(c.classifier, c.name)
    if "robust" in by_guide and "vanilla" in by_guide:
        return by_guide["robust"], by_guide["vanilla"]
    return names[1], names[0]


def difference(record: RunRecord, a: str | None, b: str | None) -> tuple[np.ndarray, pd.DataFrame]:
    """The difference picture and table of columns ``a`` and ``b`` of ``record``."""
    names = [c.name for c in record.result.configs]
    if not a or not b:
        raise LabInputError("pick two columns (A and B) of the run")
    unknown = [n for n in (a, b) if n not in names]
    if unknown:
        raise LabInputError(f"no column {unknown[0]!r} in {record.id}; its columns: {', '.join(names)}")
    return render.difference_outputs(column_difference(record.result, a, b))


def run_values(record: RunRecord, verdicts: list | None = None) -> list[Any]:
    """Fresh values of the panel after a run: verdicts, the column choices, the default
    pair's difference."""
    names = [c.name for c in record.result.configs]
    a, b = default_pair(record)
    if a and b:
        picture, table = difference(record, a, b)
    else:
        picture, table = None, pd.DataFrame()
    return [verdict_frame(record, verdicts), gr.update(choices=names, value=a), gr.update(choices=names, value=b),
            picture, table]


def build_verdicts() -> gr.Dataframe:
    """The verdict table (laid out where it is called: under the final images)."""
    with gr.Accordion("The judge's verdict per image", open=False):
        return gr.Dataframe(label="The bundle's judge never guides; 'agrees' = it reads the class the column was "
                                  "guided towards (also written under every final image)", interactive=False,
                            elem_id="sample-verdicts", wrap=True)


def build(state: LabState, run_id: gr.State, verdicts: gr.Dataframe) -> ComparePanel:
    """Lay out the difference panel (inside the side-by-side tab's result column) and
    wire the column pickers to the kept run; ``verdicts`` is :func:`build_verdicts`'s table."""
    with gr.Accordion("Difference of two columns", open=True):
        gr.Markdown(HELP)
        with gr.Row():
            column_a = gr.Dropdown([], label="Column A", elem_id="diff-a")
            column_b = gr.Dropdown([], label="Column B", elem_id="diff-b")
        picture = gr.Image(label="A, B and A − B per seed (signed colour scale shared by all seeds)", format="png",
                           interactive=False, elem_id="sample-diff")
        table = gr.Dataframe(label="Size of A − B per seed", interactive=False, elem_id="sample-diff-table")

    @user_errors
    def on_pick(run, a, b):
        if not run:
            return [gr.skip(), gr.skip()]
        return list(difference(state.get_run(run), a, b))

    for i, dropdown in enumerate((column_a, column_b)):
        dropdown.input(on_pick, [run_id, column_a, column_b], [picture, table],
                       api_name="difference" if i == 0 else None,
                       api_visibility="public" if i == 0 else "private", concurrency_id="light", concurrency_limit=4)
    return ComparePanel(verdicts, column_a, column_b, picture, table)
