"""Engine results -> values the UI shows: uint8 pictures with captions, matplotlib
figures as RGB arrays, and tables. Formatting only; the numbers come from the engine
(``engine.viz``, ``engine.trace``, ``engine.summaries``, ``engine.comparisons``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from engine import viz
from engine.alignment import AlignmentResult
from engine.comparisons import ColumnDifference, JudgeVerdict
from engine.probes import AttackRecord, GradientRecord
from engine.summaries import GRADIENT_PROBLEMS, StabilityRow, evenly_spaced, gradient_problems, perturbation
from engine.sampler import SampleResult

DISPLAY_PIXELS = 112  # small images are upscaled (nearest) to about this size
MAX_FILMSTRIP_ROWS = 4
LABEL_MARGIN = 28  # blank band on top of composed pictures: the UI's image label floats there
SHOWN_WIDTH = 780  # about the width of the lab's result column on a laptop screen
Caption = tuple[np.ndarray, str]


# ------------------------------------------------------------------------------ pictures
def upscale_factor(height: int, pixels: int = DISPLAY_PIXELS) -> int:
    """Integer nearest-neighbour factor that shows an image of ``height`` at about ``pixels``."""
    return max(1, pixels // max(1, height))


def show(images: torch.Tensor, pixels: int = DISPLAY_PIXELS) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] -> (N, H', W', 3) uint8, upscaled when small."""
    arr = viz.to_rgb(viz.images_to_uint8(images))
    return viz.upscale(arr, upscale_factor(arr.shape[1], pixels))


def show_gradients(grads: torch.Tensor, signed: bool, pixels: int = DISPLAY_PIXELS) -> np.ndarray:
    """(N, C, H, W) gradients -> (N, H', W', 3) maps (min-max per image, or signed)."""
    arr = viz.gradient_maps(grads, signed=signed)
    return viz.upscale(arr, upscale_factor(arr.shape[1], pixels))


def show_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, H', W', 3) uint8, upscaled when small."""
    arr = viz.to_rgb(images.permute(0, 2, 3, 1).numpy())
    return viz.upscale(arr, upscale_factor(arr.shape[1]))


STAMPS = {"not finite": "NaN/inf", "zero, x0 clipped": "zero", "zero": "zero", "constant": "flat"}


def stamp(picture: np.ndarray, problem: str) -> np.ndarray:
    """A gradient tile with the word of its ``problem`` (see
    :func:`engine.summaries.gradient_problems`) written across it, so a black or grey
    tile is never left unexplained."""
    if not problem:
        return picture
    from PIL import Image, ImageDraw, ImageFont

    tile = Image.fromarray(np.ascontiguousarray(picture))
    draw = ImageDraw.Draw(tile)
    size = max(9, min(14, tile.width // 5))
    font = ImageFont.load_default(size=size)
    text = STAMPS.get(problem, problem)
    width = int(font.getlength(text))
    x, y = max(1, (tile.width - width) // 2), max(1, (tile.height - size) // 2)
    draw.rectangle((x - 3, y - 2, x + width + 3, y + size + 3), fill=(255, 236, 179))
    draw.text((x, y), text, fill=(170, 40, 0), font=font)
    return np.asarray(tile)


def problem_notes(found: Mapping[str, list[str]]) -> list[str]:
    """One line per problem seen: its stamp, why, and where (e.g. 'seed 2 at t=999')."""
    lines = []
    for problem, where in found.items():
        shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
        lines.append(f"'{STAMPS[problem]}' tiles ({shown}): {GRADIENT_PROBLEMS[problem]}")
    return lines


def row(images: np.ndarray) -> np.ndarray:
    """Tile (N, H, W, 3) pictures in one row."""
    return viz.grid(images, ncols=len(images), padding=2)


def labelled_stack(items: Sequence[Caption], padding: int = 6) -> np.ndarray:
    """Stack pictures vertically, each under its caption (one line, or several separated
    by newlines; lines after the first are notes, drawn in a warning colour), on white:
    one figure that reads like the paper's (rows = methods)."""
    from PIL import Image, ImageDraw, ImageFont

    if not items:
        return np.full((24, 240, 3), 255, np.uint8)
    font = ImageFont.load_default(size=13)
    band = 20
    widest = max(max(p.shape[1] for p, _ in items), 360)

    def lines_of(caption: str) -> list[tuple[str, bool]]:
        """The title line as it is; note lines wrapped to the pictures' width."""
        title, *notes = caption.split("\n")
        out = [(title, False)]
        for note in notes:
            line = ""
            for word in note.split(" "):
                if line and font.getlength(f"{line} {word}") > widest:
                    out.append((line, True))
                    line = word
                else:
                    line = f"{line} {word}" if line else word
            out.append((line, True))
        return out

    laid_out = [(picture, lines_of(caption)) for picture, caption in items]
    text_widths = [int(font.getlength(text)) for _, lines in laid_out for text, _ in lines]
    width = max(widest, max(text_widths)) + 2 * padding
    height = sum(p.shape[0] + band * len(lines) + padding for p, lines in laid_out) + padding + LABEL_MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = padding + LABEL_MARGIN
    for picture, lines in laid_out:
        for text, is_note in lines:
            draw.text((padding, y + 3), text, fill=(170, 40, 0) if is_note else (20, 20, 20), font=font)
            y += band
        canvas.paste(Image.fromarray(np.ascontiguousarray(picture)), (padding, y))
        y += picture.shape[0] + padding
    return np.asarray(canvas)


def labelled_grid(cells: Sequence[Sequence[np.ndarray]], col_labels: Sequence[str], row_labels: Sequence[str],
                  cell_labels: Sequence[Sequence[str]] | None = None, padding: int = 4) -> np.ndarray:
    """A table of equally sized pictures: column headers on top, row labels on the left,
    an optional caption under each cell (ASCII text: it is drawn into the picture)."""
    from PIL import Image, ImageDraw, ImageFont

    if not cells or not cells[0]:
        return np.full((24, 240, 3), 255, np.uint8)
    font = ImageFont.load_default(size=13)
    h, w = cells[0][0].shape[:2]
    left = max(int(font.getlength(t)) for t in row_labels) + 2 * padding if row_labels else padding
    col_width = max(w, *(int(font.getlength(t)) for t in col_labels)) + padding
    cap_h = 17 if cell_labels else 0
    if cell_labels:
        col_width = max(col_width, *(int(font.getlength(t)) + padding for r in cell_labels for t in r))
    top = LABEL_MARGIN + 20
    row_height = h + cap_h + padding
    ncols = max(len(r) for r in cells)
    canvas = Image.new("RGB", (left + ncols * col_width + padding, top + len(cells) * row_height + padding), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels):
        draw.text((left + c * col_width, LABEL_MARGIN + 3), label, fill=(20, 20, 20), font=font)
    for r, row_cells in enumerate(cells):
        y = top + r * row_height
        if r < len(row_labels):
            draw.text((padding, y + h // 2 - 7), row_labels[r], fill=(20, 20, 20), font=font)
        for c, picture in enumerate(row_cells):
            x = left + c * col_width
            canvas.paste(Image.fromarray(np.ascontiguousarray(picture)), (x, y))
            if cell_labels and c < len(cell_labels[r]):
                draw.text((x, y + h + 1), cell_labels[r][c], fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def column_caption(config: Any, accuracy: float | None = None) -> str:
    """"robust | guide robust, x_t | s=2" (+ judge accuracy) for a GuidanceConfig (ASCII:
    it is drawn into the picture)."""
    parts = [config.name]
    if config.method == "classifier":
        parts.append(f"guide {config.classifier}, {config.gradient_source}")
        if config.stabiliser != "none":
            parts.append(config.stabiliser)
        parts.append(f"s={config.scale:g}")
    elif config.method == "cfg":
        parts.append(f"classifier-free, w={config.scale:g}")
    else:
        parts.append("unguided")
    if config.denoiser_mode == "unconditional":
        parts.append("unconditional denoiser")
    text = " | ".join(parts)
    if accuracy is not None and not math.isnan(accuracy):
        text += f" | judge accuracy {accuracy:.0%}"
    return text


def final_gallery(result: SampleResult, accuracies: Mapping[str, float] | None = None) -> list[Caption]:
    """One item per column: its final images in a row, one per seed (Figure 2 layout;
    :func:`labelled_stack` makes them one picture)."""
    accuracies = accuracies or {}
    items = []
    for config in result.configs:
        items.append((row(show(result.images[config.name])), column_caption(config, accuracies.get(config.name))))
    return items


def filmstrip_gallery(result: SampleResult, kind: str, frames: int, signed: bool = False,
                      gradient: str = "raw") -> list[Caption]:
    """Per column a grid: rows = the first seeds, columns = evenly spaced recorded steps.

    ``kind`` is ``pred_x0`` (the denoiser's predicted x0, Figure 5) or ``gradient``
    (the guidance gradient: ``raw`` as computed or ``applied`` after stabiliser and
    scale). Columns without a gradient are left out of the gradient strip."""
    items = []
    for config in result.configs:
        trace = result.traces.get(config.name)
        if trace is None or not trace.snapshots:
            continue
        picked = [trace.snapshots[i] for i in evenly_spaced(len(trace.snapshots), frames)]
        if kind == "pred_x0":
            tensors = [s.pred_x0 for s in picked]
        else:
            tensors = [s.grad_raw if gradient == "raw" else s.grad_applied for s in picked]
            if any(t is None for t in tensors):
                continue
        rows = min(MAX_FILMSTRIP_ROWS, tensors[0].shape[0])
        stacked = torch.stack([t[:rows].float() for t in tensors], dim=1)  # (rows, frames, C, H, W)
        flat = stacked.flatten(0, 1)
        small = DISPLAY_PIXELS // 2
        pictures = show(flat, small) if kind == "pred_x0" else show_gradients(flat, signed, small)
        notes: list[str] = []
        if kind != "pred_x0":
            through_x0 = config.method == "classifier" and config.gradient_source.startswith("x0")
            x0 = torch.stack([s.pred_x0[:rows].float() for s in picked], dim=1).flatten(0, 1) if through_x0 else None
            problems = gradient_problems(flat, x0)
            found: dict[str, list[str]] = {}
            for i, problem in enumerate(problems):
                if problem:
                    pictures[i] = stamp(pictures[i], problem)
                    r, f = divmod(i, len(picked))
                    found.setdefault(problem, []).append(f"seed {result.seeds[r]} at t={picked[f].timestep:g}")
            notes = problem_notes(found)
        picture = viz.grid(pictures, ncols=len(picked), padding=2)
        steps = ", ".join(f"{s.timestep:g}" for s in picked)
        what = "predicted x0" if kind == "pred_x0" else f"{gradient} gradient ({'signed' if signed else 'min-max'})"
        seeds = ", ".join(str(s) for s in result.seeds[:rows])
        items.append((picture, "\n".join([f"{config.name}: {what} at t = {steps} (rows: seeds {seeds})", *notes])))
    return items


# ------------------------------------------------------------------------------ figures
def figure_array(fig: Any) -> np.ndarray:
    """Render a matplotlib Figure to an (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _new_figure(panels: int, width: float = 5.0, height: float = 3.2,
                ratios: Sequence[float] | None = None) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    ratios = list(ratios) if ratios else [1.0] * panels
    dpi = 90
    fig = Figure(figsize=(width * sum(ratios), height), dpi=dpi, layout="constrained")
    # leave the top band free: the UI's image label floats over it, and a wide figure is
    # shown shrunk to the column (about SHOWN_WIDTH pixels), its band with it
    band = LABEL_MARGIN * max(1.0, width * sum(ratios) * dpi / SHOWN_WIDTH)
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - band / (height * dpi)))
    axes = fig.subplots(1, panels, squeeze=False, width_ratios=ratios)[0]
    return fig, list(axes)


def _figure_legend(fig: Any, axes: Sequence[Any], handles: Sequence[Any] | None = None) -> None:
    """One legend for all panels, below them (``handles``: one per column, else the
    first panel's lines)."""
    if handles:
        fig.legend(handles=list(handles), loc="outside lower center", ncols=min(len(handles), 5), fontsize=8,
                   frameon=False)
        return
    for ax in axes:
        found, labels = ax.get_legend_handles_labels()
        if found:
            fig.legend(found, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8,
                       frameon=False)
            return


SPREAD = "median, band: middle half of the batch"


def _band(ax: Any, x: Sequence[float], stats: Mapping[str, list[float]], label: str, color: Any,
          log: bool = False) -> bool:
    """The batch median over the steps, and the band between its quartiles (inside the
    data's range, so on a log axis it never fills down to the axis as mean - std can).
    ``log``: leave out non-positive values (a zero norm has no place on a log axis)."""
    middle = np.asarray(stats["median"], dtype=float)
    low, high = np.asarray(stats["q25"], dtype=float), np.asarray(stats["q75"], dtype=float)
    if log:
        middle, low, high = (np.where(v > 0, v, np.nan) for v in (middle, low, high))
    if not np.isfinite(middle).any():
        return False
    x = np.asarray(x, dtype=float)
    ax.plot(x, middle, label=label, color=color, lw=1.6, marker="o" if len(x) <= 12 else None, ms=3)
    ax.fill_between(x, low, high, where=np.isfinite(low) & np.isfinite(high), color=color, alpha=0.18, lw=0)
    return True


def _time_axis(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("timestep t (noise → image)")
    ax.set_ylabel(ylabel)
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.grid(alpha=0.3)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def log_prob_figure(result: SampleResult) -> np.ndarray:
    """log p(target | x_t) over the timesteps, one panel per monitored classifier, one
    line (batch median, quartile band) per column. Without monitors: each column's own guide."""
    summaries = {c.name: result.traces[c.name].summary() for c in result.configs if c.name in result.traces}
    monitors = list(dict.fromkeys(k.split(":", 1)[1] for s in summaries.values() for k in s
                                  if k.startswith("monitor:")))
    keys = [f"monitor:{m}" for m in monitors] or ["log_prob"]
    fig, axes = _new_figure(len(keys), height=3.6)
    colors = _colors(len(result.configs))
    for ax, key in zip(axes, keys):
        drawn = False
        for color, config in zip(colors, result.configs):
            s = summaries.get(config.name)
            if s is not None and key in s:
                drawn |= _band(ax, s["timestep"], s[key], config.name, color)
        title = (f"log p(y | x_t) by {key.split(':', 1)[1]}" if key != "log_prob"
                 else "log p(y | guide input), own guide")
        _time_axis(ax, title, f"log p(y | x_t) ({SPREAD.split(',')[0]})")
        if not drawn:
            ax.text(0.5, 0.5, "no classifier in this run", ha="center", va="center", transform=ax.transAxes)
    _figure_legend(fig, axes)
    return figure_array(fig)


def stability_figure(result: SampleResult, gradient: str = "raw",
                     rows: Sequence[StabilityRow] | None = None) -> np.ndarray:
    """GradCheck's view on one figure: per column, the cosine similarity between
    consecutive guidance gradients and the gradient norm over the timesteps (batch
    median, band between the quartiles; the norm on a log axis), and, given ``rows`` (:func:`engine.summaries.column_stability`),
    the judge's class accuracy of the final images (± its binomial standard error)."""
    cos_key, norm_key = ("cos_raw", "grad_norm") if gradient == "raw" else ("cos_applied", "applied_norm")
    with_accuracy = rows is not None
    fig, axes = _new_figure(3 if with_accuracy else 2, height=3.6, ratios=[1, 1, 0.8] if with_accuracy else None)
    ax_cos, ax_norm = axes[0], axes[1]
    colors = _colors(len(result.configs))
    drawn = False
    for color, config in zip(colors, result.configs):
        trace = result.traces.get(config.name)
        if trace is None:
            continue
        s = trace.summary()
        drawn |= _band(ax_cos, s["timestep"], s[cos_key], config.name, color)
        _band(ax_norm, s["timestep"], s[norm_key], config.name, color, log=True)
    _time_axis(ax_cos, f"cos(g_t, g_t+1), {gradient} gradient", "cosine similarity (median)")
    _time_axis(ax_norm, f"‖g‖, {gradient} gradient", "L2 norm (median)")
    if drawn:
        ax_norm.set_yscale("log")
    else:
        for ax in (ax_cos, ax_norm):
            ax.text(0.5, 0.5, "no guidance gradient in this run", ha="center", va="center", transform=ax.transAxes)
    if with_accuracy:
        _accuracy_panel(axes[2], result, rows, colors)
    if drawn or with_accuracy:
        _figure_legend(fig, axes, [_patch(color, c.name) for color, c in zip(colors, result.configs)])
    return figure_array(fig)


def _patch(color: Any, label: str) -> Any:
    """A legend entry of one column's colour."""
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _accuracy_panel(ax: Any, result: SampleResult, rows: Sequence[StabilityRow], colors: Sequence[Any]) -> None:
    """Horizontal bars of the judge's class accuracy per column, with ± one standard
    error: the column names read in full beside their bars, the values at the bars'
    ends, nothing over the title."""
    by_name = {r.column: r for r in rows}
    names = [c.name for c in result.configs]
    values = [by_name[n].judge_accuracy if n in by_name else math.nan for n in names]
    errors = [by_name[n].judge_accuracy_se if n in by_name else math.nan for n in names]
    positions = np.arange(len(names))[::-1]  # the first column on top, as in the legend and the table
    ax.set_title("judge accuracy, final images", fontsize=10)
    ax.set_xlim(0, 1.32)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "", "0.5", "", "1"])
    ax.set_xlabel("accuracy (± s.e.)")
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.grid(alpha=0.3, axis="x")
    ax.set_yticks(positions, names, fontsize=8)
    if not any(math.isfinite(v) for v in values):
        ax.text(0.5, 0.5, "no judge in these models", ha="center", va="center", transform=ax.transAxes)
        return
    widths = [v if math.isfinite(v) else 0.0 for v in values]
    spread = [e if math.isfinite(e) else 0.0 for e in errors]
    ax.barh(positions, widths, color=colors[:len(names)], xerr=spread, capsize=3, alpha=0.85, height=0.7)
    for y, v, e in zip(positions, values, spread):
        if math.isfinite(v):
            ax.text(v + e + 0.03, y, f"{v:.0%}", ha="left", va="center", fontsize=8)


# ------------------------------------------------------------------------------ tables
def _round(value: float, digits: int = 3) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


def guidance_summary(config: Any) -> str:
    """A column's guidance in a few words ("guide robust, x_t, s=2"), for narrow tables."""
    if config.method == "classifier":
        source = {"x0_through_denoiser": "x0", "x0_detached": "x0 detached"}.get(config.gradient_source,
                                                                                    config.gradient_source)
        parts = [f"guide {config.classifier}", source]
        if config.stabiliser != "none":
            parts.append(config.stabiliser)
        parts.append(f"s={config.scale:g}")
    elif config.method == "cfg":
        parts = [f"classifier-free, w={config.scale:g}"]
    else:
        parts = ["unguided"]
    if config.denoiser_mode == "unconditional":
        parts.append("uncond. denoiser")
    return ", ".join(parts)


# widths of the stability table's columns (column, guidance, images, judge accuracy, ± s.e., mean cos,
# late cos, mean ‖g‖, final log p): together they fit the result column, no horizontal scrolling
STABILITY_COLUMN_WIDTHS = ["14%", "22%", "8%", "10%", "8%", "8%", "8%", "10%", "12%"]


def stability_table(rows: Sequence[StabilityRow]) -> pd.DataFrame:
    """The stability rows as a table narrow enough for the result column (the column's
    settings in one cell; NaN shown empty)."""
    from types import SimpleNamespace

    def settings(r: StabilityRow) -> str:
        return guidance_summary(SimpleNamespace(method=r.method, classifier=r.guide, gradient_source=r.source,
                                                stabiliser=r.stabiliser or "none", scale=r.scale or 0.0,
                                                denoiser_mode=r.denoiser_mode))

    return pd.DataFrame([{
        "column": r.column, "guidance": settings(r), "images": r.images,
        "judge accuracy": _round(r.judge_accuracy), "± s.e.": _round(r.judge_accuracy_se),
        "mean cos": _round(r.mean_cos), "late cos": _round(r.late_cos), "mean ‖g‖": _round(r.mean_grad_norm, 4),
        "final log p": _round(r.final_log_prob),
    } for r in rows])


def inspector_outputs(records: Sequence[GradientRecord], class_names: Sequence[str],
                      signed: bool) -> tuple[np.ndarray, pd.DataFrame]:
    """One picture (rows = timesteps; columns = x_t, then each guide's gradient, with its
    prediction under it) and the table of predictions."""
    guides = list(dict.fromkeys(r.guide for r in records))
    cells, row_labels, cell_labels, table = [], [], [], []
    for t in dict.fromkeys(r.t for r in records):
        at_t = {r.guide: r for r in records if r.t == t}
        first = next(iter(at_t.values()))
        row = [show(first.x_t[None])[0]]
        captions = [""]
        for g in guides:
            r = at_t[g]
            pred = class_names[r.prediction] if r.prediction < len(class_names) else str(r.prediction)
            problem = gradient_problems(r.grad[None])[0]
            row.append(stamp(show_gradients(r.grad[None], signed)[0], problem))
            captions.append(f"-> {pred} ({r.confidence:.0%})")
            table.append({"t": t, "guide": g, "prediction": pred, "confidence": round(r.confidence, 4),
                          "log p(class)": round(r.log_prob, 4),
                          "gradient map": f"{STAMPS[problem]}: {GRADIENT_PROBLEMS[problem]}" if problem else "shown"})
        cells.append(row)
        row_labels.append(f"t={t}")
        cell_labels.append(captions)
    picture = labelled_grid(cells, ["x_t", *guides], row_labels, cell_labels)
    return picture, pd.DataFrame(table)


def attack_outputs(records: Sequence[AttackRecord], class_names: Sequence[str], target: int,
                   signed: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """One picture (per guide: the start, the attacked image, what changed) and the table
    of target probabilities before / after."""
    if not records:
        return labelled_grid([], [], []), pd.DataFrame()
    name = class_names[target] if target < len(class_names) else str(target)
    start = show(records[0].x_start[None])[0]
    cells, row_labels, cell_labels, table = [], [], [], []
    for r in records:
        delta, l2, linf = perturbation(r.x_start, r.x_adv)
        pred = class_names[r.prediction_after] if r.prediction_after < len(class_names) else str(r.prediction_after)
        cells.append([start, show(r.x_adv[None])[0], show_gradients(delta[None], signed)[0]])
        row_labels.append(r.guide)
        cell_labels.append([f"p({name}) {r.target_prob_before:.2f}", f"p({name}) {r.target_prob_after:.2f} -> {pred}",
                            f"L2 {l2:.2f}"])
        table.append({"guide": r.guide, "p(target) before": round(r.target_prob_before, 4),
                      "p(target) after": round(r.target_prob_after, 4), "prediction after": pred,
                      "steps": r.steps_used, "‖δ‖₂": round(l2, 3), "‖δ‖∞": round(linf, 3)})
    picture = labelled_grid(cells, [f"start (t={records[0].t})", "attacked", "change (signed)"], row_labels,
                            cell_labels)
    return picture, pd.DataFrame(table)


def thumbnails(images: torch.Tensor, labels: Sequence[int], class_names: Sequence[str]) -> list[Caption]:
    """Gallery thumbnails of uint8 (N, C, H, W) images with their class as caption."""
    if len(images) == 0:
        return []
    pics = show_uint8(images)
    return [(pics[i], class_names[labels[i]] if labels[i] < len(class_names) else str(labels[i]))
            for i in range(len(pics))]


def describe_markdown(info: Mapping[str, Any]) -> str:
    """``Bundle.describe()`` as a short Markdown summary."""
    diffusion = info["diffusion"]
    null = info.get("null_label")
    modes = (f", null label {null} (unconditional mode available)" if null is not None
             else ", no null label (no unconditional mode, no classifier-free guidance)")
    lines = [f"**{info['name']}** from `{info['source']}` on **{info['device']}**",
             f"- images {'x'.join(str(v) for v in info['image_shape'])}, {len(info['classes'])} classes{modes}",
             f"- diffusion: {diffusion.get('steps')} steps, {diffusion.get('noise_schedule')} schedule; "
             f"default respacing {info['default_respacing'] or 'none'}",
             f"- denoiser: {info['denoiser_parameters']:,} parameters"]
    for name, g in info["guides"].items():
        time_input = "time-dependent" if g["time_dependent"] else "no time input"
        note = f" — {g['description']}" if g.get("description") else ""
        lines.append(f"- guide **{name}**: {g['parameters']:,} parameters, {time_input}, default scale "
                     f"{g['default_scale']:g}, source {g['default_source']}{note}")
    judge = info.get("judge_parameters")
    lines.append(f"- judge: {judge:,} parameters" if judge else "- judge: none (no accuracy column)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ comparisons
AGREE_COLOUR, DISAGREE_COLOUR = (20, 110, 40), (200, 30, 20)


def verdict_caption(verdict: JudgeVerdict, class_names: Sequence[str]) -> str:
    """'judge: 3 (97%)' or, when the judge reads another class than the one asked for,
    'judge: 5 (81%) != 3' (ASCII: it is drawn into the picture)."""
    def name(k: int) -> str:
        return class_names[k] if k < len(class_names) else str(k)

    text = f"judge: {name(verdict.predicted)} ({verdict.probability:.0%})"
    return text if verdict.agrees else f"{text} != {name(verdict.requested)}"


def captioned_row(pictures: np.ndarray, captions: Sequence[str], flagged: Sequence[bool],
                  padding: int = 4) -> np.ndarray:
    """(N, H, W, 3) pictures in one row, a caption under each; a flagged picture gets a
    red frame and a red caption, the others a green caption."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    n, h, w = pictures.shape[:3]
    cell = max(w, *(int(font.getlength(c)) for c in captions)) + padding if n else w
    canvas = Image.new("RGB", (n * cell + padding, h + 18 + 2 * padding), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x = padding + i * cell
        canvas.paste(Image.fromarray(np.ascontiguousarray(pictures[i])), (x, padding))
        if flagged[i]:
            draw.rectangle((x - 2, padding - 2, x + w + 1, padding + h + 1), outline=DISAGREE_COLOUR, width=2)
        draw.text((x, padding + h + 3), captions[i], fill=DISAGREE_COLOUR if flagged[i] else AGREE_COLOUR, font=font)
    return np.asarray(canvas)


def verdict_gallery(result: SampleResult, verdicts: Sequence[JudgeVerdict], class_names: Sequence[str],
                    accuracies: Mapping[str, float] | None = None) -> list[Caption]:
    """:func:`final_gallery` with the judge's verdict under every image (red frame and
    caption where it reads another class than the one asked for)."""
    accuracies = accuracies or {}
    by_column: dict[str, list[JudgeVerdict]] = {}
    for v in verdicts:
        by_column.setdefault(v.column, []).append(v)
    items = []
    for config in result.configs:
        pictures = show(result.images[config.name])
        found = by_column.get(config.name)
        if not found:
            items.append((row(pictures), column_caption(config, accuracies.get(config.name))))
            continue
        captions = [verdict_caption(v, class_names) for v in found]
        picture = captioned_row(pictures, captions, [not v.agrees for v in found])
        items.append((picture, column_caption(config, accuracies.get(config.name))))
    return items


def verdict_table(verdicts: Sequence[JudgeVerdict], class_names: Sequence[str]) -> pd.DataFrame:
    """One row per image: column, seed, the class asked for, the judge's reading and its
    probability, the judge's probability of the class asked for."""
    def name(k: int) -> str:
        return class_names[k] if k < len(class_names) else str(k)

    return pd.DataFrame([{"column": v.column, "seed": v.seed, "asked for": name(v.requested),
                          "judge reads": name(v.predicted), "p(reading)": round(v.probability, 4),
                          "p(asked for)": round(v.requested_probability, 4),
                          "agrees": "yes" if v.agrees else "NO"} for v in verdicts],
                        columns=["column", "seed", "asked for", "judge reads", "p(reading)", "p(asked for)", "agrees"])


def colour_legend(scale: float, left: str, right: str, width: int = 320) -> np.ndarray:
    """A blue-white-red bar from -scale to +scale with its ticks and what each end means."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    bar = viz.signed_colours(torch.linspace(-1, 1, width).reshape(1, 1, 1, width).expand(1, 1, 14, width), 1.0)[0]
    canvas = Image.new("RGB", (width + 80, 14 + 34), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (40, 2))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((39, 1, 40 + width, 16), outline=(120, 120, 120))
    for x, text in ((40, f"-{scale:.2f}"), (40 + width // 2, "0"), (40 + width, f"+{scale:.2f}")):
        draw.line((x, 16, x, 20), fill=(80, 80, 80))
        draw.text((x - int(font.getlength(text)) // 2, 20), text, fill=(20, 20, 20), font=font)
    draw.text((2, 34), left, fill=(40, 60, 200), font=font)
    draw.text((width + 78 - int(font.getlength(right)), 34), right, fill=(200, 30, 20), font=font)
    return np.asarray(canvas)


def difference_outputs(diff: ColumnDifference) -> tuple[np.ndarray, pd.DataFrame]:
    """The picture (rows: column A, column B, A - B on one signed colour scale shared by
    every seed, and its legend) and a table of ||A - B|| per seed."""
    a_pics, b_pics = show(diff.images_a), show(diff.images_b)
    scale = diff.scale if diff.scale > 0 else 1.0
    d_pics = viz.upscale(viz.signed_colours(diff.delta, scale), upscale_factor(diff.delta.shape[-2]))
    seeds = ", ".join(str(s) for s in diff.seeds)
    items = [(row(a_pics), f"A = {diff.a} (seeds {seeds})"), (row(b_pics), f"B = {diff.b}"),
             (row(d_pics), f"A - B, same seed and noise: what guidance alone changed"
                           + ("" if diff.scale > 0 else " (identical images)")),
             (colour_legend(diff.scale, f"B brighter ({diff.b})", f"A brighter ({diff.a})"),
              "colour scale (pixel values span -1..1)")]
    table = pd.DataFrame([{"seed": s, "‖A − B‖₂": round(l2, 4), "max |A − B|": round(li, 4)}
                          for s, l2, li in zip(diff.seeds, diff.l2, diff.linf)])
    return labelled_stack(items), table


# ------------------------------------------------------------------------------ batch attack (transfer)
def transfer_figure(result: AlignmentResult) -> np.ndarray:
    """Per guide: attack success on itself and transfer to the judge (the perceptual-
    alignment score), bars with ± one binomial standard error."""
    rows = result.summaries()
    s = result.settings
    fig, (ax,) = _new_figure(1, width=max(4.0, 1.3 * len(rows) + 2.0), height=3.4)
    x = np.arange(len(rows))
    colors = _colors(2)
    for k, (key, label) in enumerate((("success", "success on the attacked guide"),
                                      ("transfer", "transfer: the judge reads the target"))):
        values = [100 * r[key] for r in rows]
        errors = [100 * r[f"{key}_se"] for r in rows]
        bars = ax.bar(x + (k - 0.5) * 0.38, values, 0.36, yerr=errors, capsize=4, color=colors[k], label=label,
                      alpha=0.55 if key == "success" else 0.95)
        if key == "transfer":
            for bar, v, e in zip(bars, values, errors):
                ax.annotate(f"{v:.0f} ± {e:.0f}", (bar.get_x() + bar.get_width() / 2, min(v + e, 100)),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [r["guide"] for r in rows])
    ax.set_ylim(0, 112)
    ax.set_ylabel("% of images (± s.e.)")
    ax.set_title(f"targeted {s.norm.upper()} PGD-{s.steps}, eps {s.radii[0]:g}, t = {s.timesteps[0]}, "
                 f"n = {len(result.labels)}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _figure_legend(fig, [ax])
    return figure_array(fig)


def transfer_table(result: AlignmentResult, pairs: Sequence[tuple[str, str]] = ()) -> pd.DataFrame:
    """Per guide the rates (%, ± standard error); then each pair's paired transfer
    difference (points ± standard error, images where only A / only B transfers)."""
    out = []
    for r in result.summaries():
        out.append({"guide": r["guide"], "transfer %": _round(100 * r["transfer"], 1),
                    "± s.e.": _round(100 * r["transfer_se"], 1), "success %": _round(100 * r["success"], 1),
                    "transfer among successes %": _round(100 * r["transfer_among_successes"], 1),
                    "judge still reads the original %": _round(100 * r["kept"], 1), "images": r["n"]})
    for a, b in pairs:
        for p in result.paired(a, b):
            out.append({"guide": f"{a} − {b} (paired)", "transfer %": _round(100 * p["mean_diff"], 1),
                        "± s.e.": _round(100 * p["se_diff"], 1), "success %": None,
                        "transfer among successes %": None, "judge still reads the original %": None,
                        "images": f"{p['wins_diff']} / {p['losses_diff']}"})
    return pd.DataFrame(out)


def transfer_grid(result: AlignmentResult, class_names: Sequence[str]) -> np.ndarray:
    """Rows = the first images: the graded original (x at t = 0, the denoiser's x0 of x_t
    at t > 0), then per guide the graded attacked image (caption: what the judge reads)
    and the change attacked − original on one signed colour scale shared by the grid."""
    t, eps = result.settings.timesteps[0], result.settings.radii[0]
    guides = list(dict.fromkeys(c.guide for c in result.cells))
    originals = result.originals[t]
    k = len(originals)
    if k == 0:
        return labelled_grid([], [], [])
    changes = {g: result.examples[(g, t, eps)][:k] - originals for g in guides}
    scale = max([float(d.abs().max()) for d in changes.values()] + [1e-6])

    def name(i: int) -> str:
        return class_names[i] if i < len(class_names) else str(i)

    factor = upscale_factor(originals.shape[-2], DISPLAY_PIXELS * 2 // 3)
    cells, row_labels, captions = [], [], []
    orig_pics = viz.upscale(viz.to_rgb(viz.images_to_uint8(originals)), factor)
    for i in range(k):
        y, target = int(result.labels[i]), int(result.targets[i])
        row_cells, row_caps = [orig_pics[i]], [f"class {name(y)}"]
        for g in guides:
            cell = result.cell(g, t, eps)
            attacked = viz.upscale(viz.to_rgb(viz.images_to_uint8(result.examples[(g, t, eps)][i:i + 1])), factor)[0]
            change = viz.upscale(viz.signed_colours(changes[g][i:i + 1], scale), factor)[0]
            reads = "-> target" if bool(cell.transfer[i]) else ("stays" if bool(cell.kept[i]) else "other")
            row_cells += [attacked, change]
            row_caps += [f"judge: {reads}", ""]
        cells.append(row_cells)
        row_labels.append(f"{name(y)} -> {name(target)}")
        captions.append(row_caps)
    what = "x" if t == 0 else "x0 of x_t"
    header = [f"original ({what})"] + [h for g in guides for h in (f"{g}: attacked", f"{g}: change")]
    grid = labelled_grid(cells, header, row_labels, captions)
    legend = colour_legend(scale, "darker after the attack", "brighter after the attack")
    return labelled_stack([(grid, f"first {k} of {len(result.labels)} images; rows: class -> target (t = {t}, "
                                  f"eps {eps:g})"), (legend, "change: attacked - original (shared colour scale)")])
