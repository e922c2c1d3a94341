"""A guidance column as plain values (:class:`GuidanceConfig`) and as one line of text
(the column-spec grammar). No torch here: front doors that only read specs stay light;
``engine.guidance`` computes what a column adds at a sampling step.

Column specs
------------
One line of text names a column on every command line, in JSON configs and in the lab
(:func:`parse_spec`, :func:`format_spec`; ``parse_spec(format_spec(c)) == c``)::

    [NAME=]KIND[@SOURCE][+STABILISER][:SCALE][*FACTOR][/KEY=VALUE]...

- KIND: ``unguided``, ``cfg`` (classifier-free; aliases ``classifier-free``,
  ``classifier_free``; ``none`` means unguided) or the name of a guide (classifier guidance).
- SOURCE: ``x_t`` (alias ``xt``), ``x0`` (= ``x0_through_denoiser``), ``x0_detached``.
- STABILISER: ``none``, ``ema``, ``adam``.
- SCALE: the guidance scale; FACTOR multiplies it (``nonrobust@x0+adam*0.05`` scales every
  swept scale by 0.05).
- KEY=VALUE: any other :class:`GuidanceConfig` field, e.g. ``/loss=logit``,
  ``/scale_schedule=cosine_decay`` (alias ``schedule``), ``/denoiser_mode=unconditional``
  (alias ``mode``), ``/normalize_gradient=true`` (alias ``normalize``), ``/ema_beta=0.99``,
  ``/classes=1+7`` (multi-class guidance).
- Left out: NAME is the spec's text before ``:``/``*``/``/`` (``robust@x0``); SOURCE and
  SCALE are the guide's defaults in the bundle (else ``x_t`` and the caller's default, else
  1); STABILISER ``none``.

Examples: ``robust``, ``vanilla:0.5``, ``strong=robust:2``, ``nonrobust@x0+adam:0.05``,
``cfg:1.5``, ``unguided/mode=unconditional``. Names cannot contain ``=`` or ``/``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

METHODS = ("unguided", "classifier", "cfg")
SOURCES = ("x_t", "x0_detached", "x0_through_denoiser")
LOSSES = ("log_softmax", "logit")
STABILISERS = ("none", "ema", "adam")
SCHEDULES = ("constant", "linear_decay", "linear_ramp", "cosine_decay")
DENOISER_MODES = ("conditional", "unconditional")


@dataclass(frozen=True)
class GuidanceConfig:
    """One column of a side-by-side run. Serialise with :meth:`to_dict`; every image the
    system writes stores this next to it so it can be regenerated.

    ``name`` labels the column; ``classifier`` names a guide of the bundle (``vanilla``,
    ``robust``, ``nonrobust`` in the demo bundle). ``classes`` switches to multi-class
    guidance: the objective sums over these classes instead of each sample's label.
    ``denoiser_mode='unconditional'`` feeds the denoiser its null label (GradCheck's
    setting: an unconditional model steered only by the classifier)."""

    name: str = "guided"
    method: str = "classifier"
    classifier: str | None = None
    scale: float = 1.0
    scale_schedule: str = "constant"
    gradient_source: str = "x_t"
    loss: str = "log_softmax"
    normalize_gradient: bool = False
    stabiliser: str = "none"
    ema_beta: float = 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-4
    adam_bias_correction: bool = False
    classes: tuple[int, ...] | None = None
    denoiser_mode: str = "conditional"

    def __post_init__(self) -> None:
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the allowed values."""
        def check(value: Any, allowed: Sequence[str], what: str) -> None:
            if value not in allowed:
                raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")

        check(self.method, METHODS, "method")
        check(self.gradient_source, SOURCES, "gradient_source")
        check(self.loss, LOSSES, "loss")
        check(self.stabiliser, STABILISERS, "stabiliser")
        check(self.scale_schedule, SCHEDULES, "scale_schedule")
        check(self.denoiser_mode, DENOISER_MODES, "denoiser_mode")
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        if self.method == "classifier" and not self.classifier:
            raise ValueError(f"config {self.name!r}: classifier guidance needs a classifier name")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"ema_beta must lie in [0, 1), got {self.ema_beta}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0 and self.adam_eps > 0):
            raise ValueError("Adam needs 0 <= beta1, beta2 < 1 and eps > 0")
        if self.classes is not None and len(self.classes) == 0:
            raise ValueError("classes, when given, must name at least one class")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if values["classes"] is not None:
            values["classes"] = list(values["classes"])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GuidanceConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown guidance settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    @property
    def uses_classifier(self) -> bool:
        return self.method == "classifier"


def unguided(name: str = "unguided", denoiser_mode: str = "conditional") -> GuidanceConfig:
    """The plain conditional (or unconditional) denoiser."""
    return GuidanceConfig(name=name, method="unguided", denoiser_mode=denoiser_mode)


def classifier_guided(classifier: str, scale: float, name: str | None = None, **options: Any) -> GuidanceConfig:
    """Classifier guidance by the bundle guide ``classifier`` with scale ``scale``."""
    return GuidanceConfig(name=name or classifier, method="classifier", classifier=classifier, scale=scale, **options)


def classifier_free(scale: float, name: str = "cfg") -> GuidanceConfig:
    """Classifier-free guidance with strength ``scale`` (needs a null label)."""
    return GuidanceConfig(name=name, method="cfg", scale=scale)


# ------------------------------------------------------------------------------ column specs
METHOD_ALIASES = {"unguided": "unguided", "none": "unguided", "cfg": "cfg", "classifier-free": "cfg",
                  "classifier_free": "cfg", "classifier": "classifier", "guided": "classifier"}
SOURCE_ALIASES = {"x_t": "x_t", "xt": "x_t", "x0": "x0_through_denoiser", "x0_through_denoiser": "x0_through_denoiser",
                  "x0_detached": "x0_detached"}
SHORT_SOURCES = {"x_t": "x_t", "x0_through_denoiser": "x0", "x0_detached": "x0_detached"}
OPTION_ALIASES = {"mode": "denoiser_mode", "schedule": "scale_schedule", "normalize": "normalize_gradient"}
SPEC_GRAMMAR = "[NAME=]KIND[@SOURCE][+STABILISER][:SCALE][*FACTOR][/KEY=VALUE]..."
_HEAD = re.compile(r"(?P<kind>[^@+:*]+)(?:@(?P<source>[^+:*]*))?(?:\+(?P<stabiliser>[^:*]*))?"
                   r"(?::(?P<scale>[^*]*))?(?:\*(?P<factor>.*))?")
_FIELDS = {f.name: f for f in fields(GuidanceConfig)}
_HEAD_FIELDS = {"name", "method", "scale"}  # set by NAME=, KIND and :SCALE only
_BOOLS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}


def canonical_method(text: str) -> str:
    """``classifier``, ``unguided`` or ``cfg`` from a method word or one of its aliases."""
    key = str(text).strip().lower()
    if key not in METHOD_ALIASES:
        raise ValueError(f"method {text!r} is not one of classifier, unguided, cfg")
    return METHOD_ALIASES[key]


def canonical_source(text: str) -> str:
    """A :data:`SOURCES` value from a source word or alias (``x0``, ``xt``; spaces may stand for _)."""
    key = "_".join(str(text).strip().lower().split())
    if key not in SOURCE_ALIASES:
        raise ValueError(f"source {text!r} is not one of x_t, x0 (through the denoiser), x0_detached")
    return SOURCE_ALIASES[key]


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {text!r}")
    return value


def _option_value(key: str, text: str) -> Any:
    if key == "classes":
        try:
            return tuple(int(c) for c in text.split("+"))
        except ValueError:
            raise ValueError(f"classes {text!r}: write class ids joined by '+', e.g. classes=1+7") from None
    kind = _FIELDS[key].type
    if kind == "bool":
        if text.lower() not in _BOOLS:
            raise ValueError(f"{key} must be true or false, got {text!r}")
        return _BOOLS[text.lower()]
    if kind == "float":
        return _number(text, key)
    return None if kind.endswith("| None") and text.lower() == "none" else text


def _fmt_number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True)
class GuidanceSpec:
    """A parsed column spec (see the module docstring), before the bundle's defaults.

    ``kind`` is ``unguided``, ``cfg`` or a guide name; ``source``, ``stabiliser`` and
    ``scale`` are None when the spec leaves them out; ``options`` holds the ``/KEY=VALUE``
    settings as (field, value) pairs."""

    name: str
    kind: str
    scale: float | None = None
    source: str | None = None
    stabiliser: str | None = None
    factor: float = 1.0
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "GuidanceSpec":
        """Read ``[NAME=]KIND[@SOURCE][+STABILISER][:SCALE][*FACTOR][/KEY=VALUE]...``."""
        head, *option_texts = str(text).strip().split("/")
        name, eq, core = head.partition("=")
        if not eq:
            name, core = "", head
        match = _HEAD.fullmatch(core.strip())
        if not match or not match["kind"].strip() or (eq and not name.strip()):
            raise ValueError(f"cannot read column spec {text!r}; write {SPEC_GRAMMAR}, e.g. robust:1 or "
                             "nonrobust@x0+adam:0.05")
        kind = match["kind"].strip()
        method = METHOD_ALIASES.get(kind.lower())
        kind = {"unguided": "unguided", "cfg": "cfg"}.get(method or "", kind)
        source = canonical_source(match["source"]) if match["source"] is not None else None
        stabiliser = match["stabiliser"].strip().lower() if match["stabiliser"] is not None else None
        if stabiliser is not None and stabiliser not in STABILISERS:
            raise ValueError(f"column spec {text!r}: stabiliser {stabiliser!r} is not one of {', '.join(STABILISERS)}")
        if kind in ("unguided", "cfg") and (source or stabiliser):
            raise ValueError(f"column spec {text!r}: {kind} takes no @SOURCE or +STABILISER")
        scale = _number(match["scale"], f"column spec {text!r}: scale") if match["scale"] is not None else None
        factor = _number(match["factor"], f"column spec {text!r}: factor") if match["factor"] is not None else 1.0
        options = []
        for option in option_texts:
            key, eq, value = option.partition("=")
            key = OPTION_ALIASES.get(key.strip(), key.strip())
            if not eq or key not in _FIELDS or key in _HEAD_FIELDS:
                raise ValueError(f"column spec {text!r}: {option!r} is not KEY=VALUE with KEY a guidance setting "
                                 f"({', '.join(sorted(set(_FIELDS) - _HEAD_FIELDS))})")
            options.append((key, _option_value(key, value.strip())))
        default_name = kind + core.strip()[len(match["kind"].strip()):].split(":")[0].split("*")[0].rstrip()
        return cls(name.strip() or default_name, kind, scale, source, stabiliser, factor, tuple(options))

    def to_config(self, guides: Mapping[str, Any] | None = None, *, scale: float | None = None,
                  denoiser_mode: str | None = None, name: str | None = None) -> GuidanceConfig:
        """The :class:`GuidanceConfig` this spec names.

        ``guides`` (a bundle's ``guide_info``: name -> object with ``default_scale`` and
        ``default_source``) checks the guide and supplies its defaults; ``scale`` is the
        caller's default scale (e.g. the sweep's), used when the spec gives none;
        ``denoiser_mode`` the caller's default mode (classifier-free columns always use
        both); ``name`` replaces the spec's name. A FACTOR multiplies the scale."""
        values: dict[str, Any] = {"name": name or self.name}
        info = None
        if self.kind in ("unguided", "cfg"):
            values["method"] = self.kind
        else:
            if guides is not None and self.kind not in guides:
                raise ValueError(f"unknown guide {self.kind!r}; this bundle has {sorted(guides)}")
            info = guides[self.kind] if guides is not None else None
            values.update(method="classifier", classifier=self.kind,
                          gradient_source=self.source or (info.default_source if info else "x_t"))
            if self.stabiliser is not None:
                values["stabiliser"] = self.stabiliser
        if denoiser_mode is not None and self.kind != "cfg":
            values["denoiser_mode"] = denoiser_mode
        chosen = self.scale
        if chosen is None and self.kind != "unguided":
            chosen = scale if scale is not None else (info.default_scale if info else None)
        if chosen is not None:
            values["scale"] = chosen * self.factor if self.factor != 1.0 else chosen
        values.update(self.options)
        return GuidanceConfig(**values)

    def __str__(self) -> str:
        core = self.kind + (f"@{SHORT_SOURCES[self.source]}" if self.source else "") + \
            (f"+{self.stabiliser}" if self.stabiliser else "")
        text = ("" if self.name == core else f"{self.name}=") + core
        text += f":{_fmt_number(self.scale)}" if self.scale is not None else ""
        text += f"*{_fmt_number(self.factor)}" if self.factor != 1.0 else ""
        for key, value in self.options:
            shown = "+".join(str(c) for c in value) if key == "classes" and value is not None else value
            text += f"/{key}={str(shown).lower() if isinstance(value, bool) else shown}"
        return text

    @classmethod
    def from_config(cls, config: GuidanceConfig) -> "GuidanceSpec":
        """The spec that names ``config`` exactly, whatever the bundle's defaults."""
        if "=" in config.name or "/" in config.name or config.name != config.name.strip() or not config.name:
            raise ValueError(f"column name {config.name!r} cannot stand in a spec (no '=', '/', or outer spaces)")
        default = GuidanceConfig(name=config.name, method=config.method,
                                 classifier=config.classifier if config.uses_classifier else None)
        source = stabiliser = scale = None
        covered = {"name", "method", "scale"}
        if config.uses_classifier:
            kind, source = config.classifier, config.gradient_source
            stabiliser = config.stabiliser if config.stabiliser != "none" else None
            covered |= {"classifier", "gradient_source", "stabiliser"}
            scale = config.scale
        else:
            kind = config.method
            scale = config.scale if config.method == "cfg" or config.scale != default.scale else None
        options = tuple((f.name, getattr(config, f.name)) for f in fields(GuidanceConfig)
                        if f.name not in covered and getattr(config, f.name) != getattr(default, f.name))
        return cls(config.name, kind, scale, source, stabiliser, 1.0, options)


def parse_spec(text: str, guides: Mapping[str, Any] | None = None, **defaults: Any) -> GuidanceConfig:
    """The :class:`GuidanceConfig` of a column spec (grammar in the module docstring);
    ``defaults`` are :meth:`GuidanceSpec.to_config`'s ``scale``, ``denoiser_mode`` and ``name``.
    Raises ValueError naming what is wrong."""
    return GuidanceSpec.parse(text).to_config(guides, **defaults)


def format_spec(config: GuidanceConfig) -> str:
    """The spec text of ``config``: ``parse_spec(format_spec(c)) == c`` with or without a
    bundle (the source and scale of a guided column are always written)."""
    return str(GuidanceSpec.from_config(config))


__all__ = [
    "DENOISER_MODES", "LOSSES", "METHODS", "SCHEDULES", "SOURCES", "STABILISERS", "GuidanceConfig", "GuidanceSpec",
    "canonical_method", "canonical_source", "classifier_free", "classifier_guided", "format_spec", "parse_spec",
    "unguided",
]
