"""Reading what a user typed or uploaded into engine arguments, with clear messages.

Nothing here computes: it parses text, checks ranges, and hands images to the engine's
own loaders (``engine.data``). Every problem raises :class:`LabInputError` whose
message is shown to the user as is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from engine.bundles import Bundle
from engine.columns import STABILISERS, GuidanceConfig, GuidanceSpec, canonical_method, canonical_source
from engine.diffusion.schedules import respacing_for_steps

MAX_SEED = 2**63 - 1
MAX_UPLOAD_PIXELS = 40_000_000  # bigger uploads are refused before they are decoded
# The column table of the side-by-side and stability views.
COLUMN_HEADERS = ["run", "column", "method", "guide", "scale", "source", "stabiliser"]
TRUE_WORDS = {"true", "yes", "y", "1", "on", "x", "✓"}
FALSE_WORDS = {"false", "no", "n", "0", "off", ""}


class LabInputError(ValueError):
    """Bad user input; the message says what is wrong and what is accepted."""


# ------------------------------------------------------------------------------ numbers
def parse_int(value: Any, what: str, low: int, high: int) -> int:
    """An integer in ``[low, high]`` from a number box or text (``3.0`` is fine, ``3.5`` is not)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LabInputError(f"{what} is empty; give an integer from {low} to {high}")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise LabInputError(f"{what} must be an integer from {low} to {high}, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise LabInputError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    number = int(number)
    if not low <= number <= high:
        raise LabInputError(f"{what} must lie between {low} and {high}, got {number}")
    return number


def parse_float(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    """A finite float, optionally within bounds."""
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise LabInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise LabInputError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise LabInputError(f"{what} must lie between {low} and {high}, got {number:g}")
    return number


def parse_int_list(text: Any, what: str, low: int, high: int, max_count: int) -> list[int]:
    """``"0,1,2"``, ``"0-3"``, ``"0..3"`` or a mix (``"1, 5-7"``) -> distinct integers in order."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(int(text)) if float(text) == int(text) else str(text)
    if not isinstance(text, str) or not text.strip():
        raise LabInputError(f"{what}: give integers such as '0,1,2' or a range '0-3'")
    values: list[int] = []
    for part in re.split(r"[,\s;]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(-?\d+)\s*(?:-|\.\.|:)\s*(-?\d+)", part)
        if match:
            start, stop = int(match.group(1)), int(match.group(2))
            if stop < start:
                raise LabInputError(f"{what}: range {part!r} runs backwards; write low-high")
            if stop - start + 1 > max_count:
                raise LabInputError(f"{what}: range {part!r} has {stop - start + 1} values; at most {max_count}")
            values.extend(range(start, stop + 1))
        elif re.fullmatch(r"-?\d+", part):
            values.append(int(part))
        else:
            raise LabInputError(f"{what}: {part!r} is not an integer; write e.g. '0,1,2' or '0-3'")
    ordered = list(dict.fromkeys(values))
    if not ordered:
        raise LabInputError(f"{what}: give at least one integer")
    bad = [v for v in ordered if not low <= v <= high]
    if bad:
        raise LabInputError(f"{what}: {bad[:5]} outside {low}..{high}")
    if len(ordered) > max_count:
        raise LabInputError(f"{what}: {len(ordered)} values given; at most {max_count}")
    return ordered


def parse_seeds(text: Any, max_count: int) -> list[int]:
    """One seed per image: a comma list or a range, non-negative integers."""
    return parse_int_list(text, "seeds", 0, MAX_SEED, max_count)


def parse_timesteps(text: Any, num_steps: int, max_count: int) -> list[int]:
    """Timesteps of the original schedule (0 = clean image, num_steps-1 = pure noise)."""
    return parse_int_list(text, "timesteps", 0, num_steps - 1, max_count)


def parse_class(bundle: Bundle, value: Any) -> int:
    """A class id from its name (as listed) or its number, with the valid range in the message."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LabInputError(f"choose a class (0..{bundle.num_classes - 1})")
    if isinstance(value, float):
        if not value.is_integer():
            raise LabInputError(f"class must be a name or an integer, got {value!r}")
        value = int(value)
    if isinstance(value, str):
        value = value.strip()
        if ":" in value and value.split(":", 1)[0].strip().isdigit():  # "3: three" as shown in some lists
            value = value.split(":", 1)[0].strip()
    try:
        return bundle.class_index(value)
    except ValueError as exc:
        raise LabInputError(str(exc)) from None


def parse_steps(bundle: Bundle, steps: Any, respacing: Any, max_steps: int, sampler: str = "ddpm") -> str:
    """The respacing string of a run: ``respacing`` when given (e.g. ``ddim25`` or
    ``10,10,5``), else ``steps`` steps spaced for the sampler
    (``engine.diffusion.schedules.respacing_for_steps``: evenly for DDPM, DDIM's stride for
    DDIM). Checked against the process."""
    total = bundle.diffusion_config.steps
    text = str(respacing or "").strip()
    if text:
        try:
            diffusion = bundle.diffusion(text)
        except (ValueError, TypeError) as exc:
            raise LabInputError(f"respacing {text!r}: {exc}") from None
        if diffusion.num_timesteps > max_steps:
            raise LabInputError(f"respacing {text!r} gives {diffusion.num_timesteps} steps; this server allows at "
                                f"most {max_steps} (--max-steps)")
        return text
    limit = min(total, max_steps)
    why = f"the models' process has {total} steps" if total <= max_steps else \
        f"this server allows at most {max_steps}, --max-steps"
    try:
        n = parse_int(steps, "steps", 1, limit)
    except LabInputError as exc:
        raise LabInputError(f"{exc} ({why})") from None
    return respacing_for_steps(total, n, str(sampler or "ddpm").strip().lower())


# ------------------------------------------------------------------------------ columns
@dataclass
class ColumnRow:
    """One row of the column table, as the user left it."""

    run: bool
    column: str
    method: str
    guide: str
    scale: float
    source: str
    stabiliser: str
    spec: GuidanceSpec | None = None  # a whole column spec in the column cell (method and guide left empty)

    def as_list(self) -> list[Any]:
        return [self.run, self.column, self.method, self.guide, self.scale, self.source, self.stabiliser]

    def column_spec(self) -> GuidanceSpec:
        """The row as a column spec: its own spec, with the scale / source / stabiliser
        cells filling what the spec leaves out, or a spec made of its cells."""
        if self.spec is None:
            kind = self.guide if self.method == "classifier" else self.method
            return GuidanceSpec(self.column, kind, self.scale if self.method != "unguided" else None,
                                self.source or None, self.stabiliser if self.method == "classifier" else None)
        spec = self.spec
        if spec.scale is None and self.scale and spec.kind != "unguided":
            spec = replace(spec, scale=self.scale)
        if spec.kind not in ("unguided", "cfg"):
            spec = replace(spec, source=spec.source or self.source or None,
                           stabiliser=spec.stabiliser or (self.stabiliser if self.stabiliser != "none" else None))
        return spec


def _truthy(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return bool(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS or text == "nan":
        return False
    raise LabInputError(f"{where}: 'run' must be true or false, got {value!r}")


def table_rows(table: Any) -> list[list[Any]]:
    """Rows of a Dataframe value (pandas, ``{"headers", "data"}`` or a list of lists)."""
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):  # pandas
        headers = [str(c) for c in table.columns]
        rows = table.values.tolist()
    elif isinstance(table, dict):
        headers = [str(h) for h in table.get("headers", COLUMN_HEADERS)]
        rows = table.get("data", [])
    else:
        headers, rows = list(COLUMN_HEADERS), list(table)
    if headers[:len(COLUMN_HEADERS)] != COLUMN_HEADERS:
        index = {h.strip().lower(): i for i, h in enumerate(headers)}
        missing = [h for h in COLUMN_HEADERS if h not in index]
        if missing:
            raise LabInputError(f"the column table lacks {missing}; its headers must be {COLUMN_HEADERS}")
        rows = [[row[index[h]] for h in COLUMN_HEADERS] for row in rows]
    return [list(r) for r in rows]


def _cell(value: Any) -> str:
    return "" if value is None or str(value).strip().lower() == "nan" else str(value).strip()


def _row_source(value: Any, where: str) -> str:
    text = _cell(value)
    try:
        return canonical_source(text) if text else ""
    except ValueError as exc:
        raise LabInputError(f"{where}: {exc}") from None


def _row_stabiliser(value: Any, where: str) -> str:
    stabiliser = _cell(value).lower()
    if stabiliser and stabiliser not in STABILISERS:
        raise LabInputError(f"{where}: stabiliser {value!r} is not one of {', '.join(STABILISERS)}")
    return stabiliser or "none"


def read_columns(table: Any) -> list[ColumnRow]:
    """Every row of the column table, checked for shape and plain types."""
    rows = []
    for i, raw in enumerate(table_rows(table), start=1):
        if len(raw) < len(COLUMN_HEADERS):
            raise LabInputError(f"column table row {i} has {len(raw)} cells; expected {len(COLUMN_HEADERS)}")
        if all((c is None or str(c).strip() in ("", "nan")) for c in raw):
            continue  # an empty row the user added
        where = f"column table row {i}"
        run = _truthy(raw[0], where)
        name = _cell(raw[1])
        if name and not _cell(raw[2]) and not _cell(raw[3]):  # method and guide empty: the name is a column spec
            try:
                spec = GuidanceSpec.parse(name)
            except ValueError as exc:
                if run:
                    raise LabInputError(f"{where}: {exc}") from None
            else:
                method = spec.kind if spec.kind in ("unguided", "cfg") else "classifier"
                rows.append(ColumnRow(run, spec.name, method, "" if method != "classifier" else spec.kind,
                                      parse_float(raw[4] if _cell(raw[4]) else 0.0, f"{where}: scale"),
                                      _row_source(raw[5], where), _row_stabiliser(raw[6], where), spec))
                continue
        try:
            method = canonical_method(raw[2] or "classifier")
        except ValueError as exc:
            raise LabInputError(f"{where}: {exc}") from None
        source = _row_source(raw[5], where)
        guide = _cell(raw[3])
        scale = parse_float(raw[4] if raw[4] not in (None, "") else 0.0, f"{where}: scale")
        stabiliser = _row_stabiliser(raw[6], where)
        if run and not name:
            raise LabInputError(f"{where}: give the column a name")
        rows.append(ColumnRow(run, name, method, guide, scale, source, stabiliser))
    return rows


def configs_from_rows(bundle: Bundle, rows: Iterable[ColumnRow], unconditional: bool) -> list[GuidanceConfig]:
    """GuidanceConfigs of the rows marked to run. ``unconditional`` feeds the denoiser its
    null label in every column except classifier-free ones (which need both)."""
    configs = []
    names: set[str] = set()
    mode = "unconditional" if unconditional else "conditional"
    for row in rows:
        if not row.run:
            continue
        if row.column in names:
            raise LabInputError(f"two columns are named {row.column!r}; names must be unique")
        names.add(row.column)
        try:
            spec = row.column_spec()
            if spec.kind == "cfg" and bundle.null_label is None:
                raise LabInputError(f"column {row.column!r}: classifier-free guidance needs a denoiser trained "
                                    "with a null label; this bundle has none")
            if spec.kind not in ("unguided", "cfg") and spec.kind not in bundle.guides:
                raise LabInputError(f"column {row.column!r}: guide {spec.kind!r} is not loaded; guides: "
                                    f"{', '.join(sorted(bundle.guides)) or 'none'}")
            configs.append(spec.to_config(bundle.guide_info, denoiser_mode=mode))
        except LabInputError:
            raise
        except ValueError as exc:
            raise LabInputError(f"column {row.column!r}: {exc}") from None
    if not configs:
        raise LabInputError("no column is marked to run; tick 'run' in at least one row of the column table")
    if unconditional and bundle.null_label is None and getattr(bundle.denoiser, "num_classes", None) is not None:
        raise LabInputError("this class-conditional denoiser has no null label, so it has no unconditional mode; "
                            "untick 'unconditional denoiser'")
    return configs


def check_image_budget(seeds: Sequence[int], columns: int, max_images: int) -> None:
    """Refuse runs larger than the server's per-run image limit."""
    total = len(seeds) * columns
    if total > max_images:
        raise LabInputError(f"{len(seeds)} seeds x {columns} columns = {total} images; this server allows at most "
                            f"{max_images} per run (--max-images). Use fewer seeds or columns.")


# ------------------------------------------------------------------------------ uploads
def load_upload(path: str | Path | None, bundle: Bundle) -> tuple[torch.Tensor, str]:
    """An uploaded file as a (1, C, H, W) image in [-1, 1] for the bundle's models, plus
    a note of what was converted. Non-images are refused; other sizes and colour modes
    are converted the way ``engine.data`` loads folders (resize shorter side, centre crop)."""
    from PIL import Image, UnidentifiedImageError

    from engine.data import center_crop_resize, to_model_range

    if path is None:
        raise LabInputError("no file uploaded")
    path = Path(path)
    channels, height, width = bundle.image_shape
    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > MAX_UPLOAD_PIXELS:
                raise LabInputError(f"{path.name} is {img.size[0]}x{img.size[1]} pixels; upload an image of at most "
                                    f"{MAX_UPLOAD_PIXELS // 10**6} megapixels (it is resized to "
                                    f"{width}x{height} anyway)")
            img.load()
            original = f"{img.size[0]}x{img.size[1]} {img.mode}"
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (width, height):
                arr = center_crop_resize(img, height)
                if arr.shape[1] != width:
                    raise LabInputError(f"cannot fit the image to {width}x{height}")
            else:
                arr = np.asarray(img)
    except LabInputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise LabInputError(f"{path.name} is not a readable image ({exc.__class__.__name__}); upload a PNG or JPEG") \
            from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    tensor = to_model_range(torch.from_numpy(arr.transpose(2, 0, 1).copy()))[None]
    target = f"{width}x{height} {'greyscale' if channels == 1 else 'RGB'}"
    note = f"uploaded {original} image" + ("" if original.startswith(f"{width}x{height}") and
                                            ((channels == 1) == original.endswith(" L"))
                                            else f", converted to {target}")
    return tensor, note
