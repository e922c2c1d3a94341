"""The column table: which guidance columns a side-by-side run has, built from the
loaded bundle (any number of named guides), plus the one-click presets.

A bundle may carry tuned defaults in ``bundle.json`` under ``"lab": {"columns": [...]}``,
each entry a column spec string (``"strong=robust@x0+adam:2"``, the grammar of
:mod:`engine.columns`; the column runs) or an object with the keys of
:data:`app.inputs.COLUMN_HEADERS`; they replace the rows made here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from engine.bundles import Bundle
from engine.columns import SHORT_SOURCES

from .inputs import COLUMN_HEADERS, LabInputError, read_columns

PRESETS = {
    "paper": "Paper: time-dependent guides only (vanilla vs robust, Figure 2)",
    "gradcheck": "GradCheck: unguided, every guide, non-robust with Adam / EMA",
    "all": "Everything in the table",
}


def default_rows(bundle: Bundle) -> list[list[Any]]:
    """Rows for every guide at its default scale and source; for guides without a time
    input also on x_t and through x0 with Adam and EMA; unguided and classifier-free
    rows (off). Bundle-supplied rows (``lab.columns``) win."""
    custom = bundle.section("lab").get("columns")
    if custom:
        try:
            rows = [spec_row(entry) if isinstance(entry, str) else [entry.get(h) for h in COLUMN_HEADERS]
                    for entry in custom]
            read_columns({"headers": COLUMN_HEADERS, "data": rows})
            return rows
        except (AttributeError, LabInputError):
            pass  # a malformed lab section falls back to the generic rows
    rows: list[list[Any]] = [[False, "unguided", "unguided", "", 0.0, "", "none"]]
    extras: list[list[Any]] = []
    for name, info in bundle.guide_info.items():
        source = SHORT_SOURCES.get(info.default_source, info.default_source)
        rows.append([True, name, "classifier", name, info.default_scale, source, "none"])
        if not info.time_dependent:
            extras.append([False, f"{name} x_t", "classifier", name, info.default_scale, "x_t", "none"])
            for stab in ("adam", "ema"):
                extras.append([False, f"{name} {source}+{stab}", "classifier", name, info.default_scale, source, stab])
    rows.extend(extras)
    if bundle.null_label is not None:
        rows.append([False, "classifier-free", "cfg", "", 1.0, "", "none"])
    if not bundle.guide_info:
        rows[0][0] = True  # no guide loaded: at least the plain denoiser runs
    return rows


def spec_row(spec: str, run: bool = True) -> list[Any]:
    """A table row holding a whole column spec in its column cell (method and guide empty)."""
    return [run, spec.strip(), "", "", None, "", ""]


def described(bundle: Bundle, row: list[Any]) -> tuple[str, str, str, str]:
    """(method, guide, short source, stabiliser) of a row, whether its cells or a column
    spec in its column cell say them; the guide's default source when neither does."""
    read = read_columns({"headers": COLUMN_HEADERS, "data": [[False, *row[1:]]]})
    if not read:
        return "", "", "", "none"
    spec = read[0].column_spec()
    if spec.kind in ("unguided", "cfg"):
        return spec.kind, "", "", "none"
    info = bundle.guide_info.get(spec.kind)
    source = spec.source or (info.default_source if info else "x_t")
    return "classifier", spec.kind, SHORT_SOURCES.get(source, source), spec.stabiliser or "none"


def default_table(bundle: Bundle) -> pd.DataFrame:
    return pd.DataFrame(default_rows(bundle), columns=COLUMN_HEADERS)


def preset_table(bundle: Bundle, preset: str) -> pd.DataFrame:
    """The default rows with ``run`` set by a preset (see :data:`PRESETS`)."""
    if preset not in PRESETS:
        raise LabInputError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    rows = default_rows(bundle)
    for row in rows:
        method, guide, source, stabiliser = described(bundle, row)
        if preset == "all":
            row[0] = True
        elif preset == "paper":
            row[0] = method == "classifier" and guide in bundle.guide_info and \
                bundle.guide_info[guide].time_dependent and stabiliser == "none"
        else:  # gradcheck
            row[0] = method == "unguided" or (method == "classifier" and source != "x_t") or \
                (method == "classifier" and stabiliser == "none" and row[1] == guide)
    return pd.DataFrame(rows, columns=COLUMN_HEADERS)


def stability_choices(bundle: Bundle) -> tuple[list[str], list[str]]:
    """Column names offered by the stability view and those ticked by default (every
    guide, the stabilised variants and unguided; not classifier-free)."""
    rows = default_rows(bundle)
    names = [r[1] for r in rows]
    ticked = []
    for row in rows:
        method, guide, source, _ = described(bundle, row)
        if method != "cfg" and not (method == "classifier" and source == "x_t" and row[1] != guide):
            ticked.append(row[1])
    return names, ticked


def rows_named(bundle: Bundle, names: list[str]) -> list[list[Any]]:
    """The default rows whose column names are in ``names``, marked to run."""
    rows = default_rows(bundle)
    known = {r[1] for r in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LabInputError(f"unknown column(s) {unknown}; available: {sorted(known)}")
    return [[True, *r[1:]] for r in rows if r[1] in names]
