"""Bundles: one denoiser, any number of named guides (classifiers), an optional judge,
the diffusion process they were trained with, and class names.

Two ways in:

- :func:`load_bundle` reads a bundle folder (``bundle.json`` + model files), such as the
  project's own MNIST bundle in ``models/`` (the default);
- :func:`bundle_from_presets` builds one from published checkpoints, naming each
  network's preset and file, e.g. ``bundle_from_presets("gd-128-denoiser", "128x128_diffusion.pt",
  {"vanilla": ("gd-128-classifier", "128x128_classifier.pt"), "robust": ("robust-128-classifier", "robust.pt")})``.

Loading is safe: ``torch.load(weights_only=True)`` or safetensors, never arbitrary
pickles. A file that does not fit the requested architecture produces an error naming
the missing, unexpected and mis-shaped keys and the presets whose layout does fit.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .diffusion import DiffusionConfig, GaussianDiffusion, create_diffusion
from .guidance import Guide, GuidanceConfig
from .nets import EncoderUNetModel, UNetModel
from .nets.flags import classifier_kwargs, denoiser_kwargs, diffusion_kwargs
from .nets.plain import CleanClassifier, JudgeNet
from .precision import check_precision
from .presets import PRESET_SETS, PRESETS, get_preset
from .sampler import SampleResult, sample
from .trace import TraceOptions

MODEL_FORMAT = "rcg-model-v1"
BUNDLE_FORMAT = "rcg-bundle-v1"


def bundled_models_dir() -> Path:
    """The bundled MNIST models: ``models/`` of the checkout this code runs from, else the
    copy ``pip install`` put beside the packages (the data package ``rcg_models``), so
    the default works from any folder. When neither holds a bundle.json, the checkout
    path (where ``python -m train.bundle`` writes one)."""
    checkout = Path(__file__).resolve().parent.parent / "models"
    if (checkout / "bundle.json").is_file():
        return checkout
    import importlib.util

    spec = importlib.util.find_spec("rcg_models")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "bundle.json").is_file():
            return Path(location).resolve()
    return checkout


DEFAULT_BUNDLE_DIR = bundled_models_dir()
ARCHITECTURES = {"UNetModel": UNetModel, "EncoderUNetModel": EncoderUNetModel, "JudgeNet": JudgeNet}


class BundleError(ValueError):
    """A model file or bundle cannot be used; the message says why and what to do."""


# --------------------------------------------------------------------------- reading files
def read_weights(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely: safetensors, or torch.load(weights_only=True)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BundleError(f"checkpoint {path} does not exist; check the path (nothing is downloaded automatically)")
    if path.is_dir():
        raise BundleError(f"{path} is a folder; give the checkpoint file itself")
    if path.stat().st_size == 0:
        raise BundleError(f"checkpoint {path} is empty (0 bytes); download it again")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise BundleError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise BundleError(f"cannot read {path} as safetensors ({exc}); the file may be truncated") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's safe unpickler refused an instruction; its own text suggests loading unsafely, which we never do
        text = str(exc)
        resave = ("If you made the file, save only tensors: torch.save(model.state_dict(), path), or safetensors. "
                  "Otherwise ask its author for such a file.")
        blocked = re.search(r"GLOBAL (\S+) whose module (\S+) is blocked", text)
        unknown = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        operand = re.search(r"Unsupported operand (\d+)", text)
        if blocked:
            raise BundleError(
                f"{path} is refused for safety: it contains code, a call of {blocked.group(1)} (module "
                f"{blocked.group(2)}), that would run while loading. Nothing in it was run. Do not use this file. "
                + resave) from None
        if unknown:
            raise BundleError(
                f"{path} is refused for safety: it contains a pickled Python object, {unknown.group(1)}, and "
                "loading objects can run arbitrary code; only tensors and plain values are read. " + resave) from None
        if operand:
            raise BundleError(
                f"{path} is not a PyTorch checkpoint the safe loader can read: it uses pickle instruction "
                f"{operand.group(1)}, which torch.save never writes. It may be a plain pickle (pickle.dump), a file "
                "of another format, or damaged. " + resave) from None
        if "Weights only load failed" in text:
            named = re.search(r"(?:got|function) (<class '[^']+'>|\S+)", text)
            what = f" ({named.group(1).strip('<>')})" if named else ""
            raise BundleError(f"{path} is refused for safety: it contains objects beyond tensors and plain "
                              f"values{what}, and loading objects can run arbitrary code. " + resave) from None
        raise BundleError(f"cannot read {path} (not a PyTorch checkpoint: {text[:200]}); the file is probably "
                          "truncated or of another format; download it again") from None
    except Exception as exc:
        text = str(exc)
        raise BundleError(f"cannot read {path} ({exc.__class__.__name__}: {text[:200]}); the file is probably "
                          "truncated or not a PyTorch checkpoint; download it again") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} holds a {type(data).__name__}, not a state_dict")
    return data


def extract_state_dict(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint: our model files keep it under ``state_dict``;
    published checkpoints are the state_dict itself."""
    for key in ("state_dict", "ema", "model"):
        inner = data.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BundleError("the checkpoint holds no tensors")
    return tensors


def _strip_ddp_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def layout_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Missing, unexpected and mis-shaped keys of ``state`` for ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    return {
        "missing": sorted(set(expected) - set(given)),
        "unexpected": sorted(set(given) - set(expected)),
        "mis_shaped": sorted((k, expected[k], given[k]) for k in set(expected) & set(given) if expected[k] != given[k]),
    }


def presets_matching(state: Mapping[str, torch.Tensor], kind: str | None = None) -> list[str]:
    """Presets whose network has exactly the keys and shapes of ``state``."""
    given = {k: tuple(v.shape) for k, v in state.items()}
    matches = []
    for name, preset in PRESETS.items():
        if kind and preset.kind != kind:
            continue
        with torch.device("meta"):
            net = UNetModel(**denoiser_kwargs(preset.flags)) if preset.kind == "denoiser" else \
                EncoderUNetModel(**classifier_kwargs(preset.flags))
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == given:
            matches.append(name)
    return matches


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, kind: str | None = None) -> nn.Module:
    """load_state_dict(strict=True) with an explanation when the layout does not fit."""
    state = _strip_ddp_prefix(dict(state))
    problems = layout_mismatch(model, state)
    if any(problems.values()):
        lines = [f"{source} does not fit the requested {type(model).__name__}:"]
        for what, items in problems.items():
            if items:
                shown = ", ".join(str(i) for i in items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {what.replace('_', '-')} keys: {shown}")
        fitting = presets_matching(state, kind)
        if fitting:
            lines.append(f"  the file fits preset(s): {', '.join(fitting)}")
        else:
            lines.append("  no preset fits it; check the flags (e.g. --image_size, --num_channels, --class_cond, "
                         "--learn_sigma) against the checkpoint's README")
        raise BundleError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- model files
def save_model_file(path: str | Path, net: nn.Module, *, kind: str, config: Mapping[str, Any],
                    meta: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write one of the project's model files: tensors and plain values only."""
    architecture = type(net).__name__
    if isinstance(net, CleanClassifier):
        architecture, net = "EncoderUNetModel", net.net
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in net.state_dict().items()}
    torch.save({"format": MODEL_FORMAT, "kind": kind, "architecture": architecture, "config": dict(config),
                "meta": dict(meta or {}), "state_dict": state}, Path(path))


def build_network(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise BundleError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[architecture](**config)
    except TypeError as exc:
        raise BundleError(f"bad {architecture} config {dict(config)}: {exc}") from exc


def load_model_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A network from one of the project's model files, in float32 eval mode, plus its
    header (kind, architecture, config, meta)."""
    data = read_weights(path)
    if data.get("format") != MODEL_FORMAT:
        raise BundleError(f"{path} is not a {MODEL_FORMAT} model file; for published checkpoints use a preset")
    remake = ("write it again with the python -m train command that made it (or engine.bundles.save_model_file); "
              "a published checkpoint loads through a preset instead")
    for key, kind in (("architecture", str), ("config", dict), ("state_dict", dict), ("meta", dict)):
        if key not in data:
            if key == "meta":
                continue
            raise BundleError(f"{path} is a broken {MODEL_FORMAT} model file: it has no {key!r} entry; {remake}")
        if not isinstance(data[key], kind):
            raise BundleError(f"{path} is a broken {MODEL_FORMAT} model file: its {key!r} entry is a "
                              f"{type(data[key]).__name__}, expected a {kind.__name__}; {remake}")
    data.setdefault("meta", {})
    odd = [f"{k} ({type(v).__name__})" for k, v in data["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if odd:
        shown = ", ".join(odd[:8]) + (f" ... ({len(odd)} in all)" if len(odd) > 8 else "")
        raise BundleError(f"{path} is a broken {MODEL_FORMAT} model file: these state_dict values are not tensors: "
                          f"{shown}; {remake}")
    net = build_network(data["architecture"], data["config"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()}
    load_into(net, state, str(path))
    header = {k: v for k, v in data.items() if k != "state_dict"}
    return net.eval(), header


def load_published(preset: str, path: str | Path, flags: str | None = None) -> nn.Module:
    """A published network: build it from its preset's flags (or explicit ``flags``) and
    load the checkpoint at ``path`` into it."""
    p = get_preset(preset)
    weights = read_weights(path)  # fail fast on a bad path, before building a large network
    build = UNetModel if p.kind == "denoiser" else EncoderUNetModel
    kwargs = denoiser_kwargs(flags or p.flags) if p.kind == "denoiser" else classifier_kwargs(flags or p.flags)
    kwargs["use_fp16"] = False  # weights load in fp32; precision is chosen at run time
    net = build(**kwargs)
    state = extract_state_dict(weights)
    load_into(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
              f"{path} (preset {preset})", p.kind)
    return net.eval()


# --------------------------------------------------------------------------- bundles
@dataclass
class GuideInfo:
    """A guide's metadata: defaults the UI and CLIs start from."""

    name: str
    time_dependent: bool = True
    default_scale: float = 1.0
    default_source: str = "x_t"
    description: str = ""
    file: str = ""


@dataclass
class Bundle:
    """Networks and settings that sample together."""

    denoiser: UNetModel
    diffusion_config: DiffusionConfig
    guides: dict[str, Guide]
    guide_info: dict[str, GuideInfo]
    class_names: list[str]
    judge: JudgeNet | None = None
    null_label: int | None = None
    default_respacing: str = ""
    name: str = "bundle"
    source: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.denoiser.in_channels, self.denoiser.image_size, self.denoiser.image_size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def diffusion(self, respacing: str | None = None) -> GaussianDiffusion:
        """The process at ``respacing`` (the bundle's default when None)."""
        return create_diffusion(self.diffusion_config.respaced(respacing if respacing is not None
                                                               else self.default_respacing))

    def to(self, device: str | torch.device, precision: str = "fp32") -> "Bundle":
        """Move every network; ``precision`` bf16 / fp16 runs the denoiser under autocast
        (``engine.precision``; on CUDA its torso convolutions are cast too); classifier
        gradients stay float32. An unknown precision, or one the device cannot run, is a
        :class:`engine.precision.PrecisionError` naming the allowed values."""
        device = torch.device(device)
        self.precision = check_precision(precision, device)
        self.device = device
        self.denoiser.to(self.device)
        if self.device.type == "cuda" and precision == "fp16":
            self.denoiser.convert_to_fp16()
        elif self.device.type == "cuda" and precision == "bf16":
            self.denoiser.convert_to_bf16()
        elif getattr(self.denoiser, "dtype", torch.float32) != torch.float32:
            self.denoiser.convert_to_fp32()
        for guide in self.guides.values():
            guide.net.to(self.device)
        if self.judge is not None:
            self.judge.to(self.device)
        return self

    def class_index(self, name_or_index: str | int) -> int:
        """A class id from its name or number, with a clear error."""
        if isinstance(name_or_index, int) or (isinstance(name_or_index, str) and name_or_index.strip().isdigit()
                                              and name_or_index.strip() not in self.class_names):
            idx = int(name_or_index)
        elif name_or_index in self.class_names:
            idx = self.class_names.index(name_or_index)
        else:
            raise ValueError(f"unknown class {name_or_index!r}; classes are 0..{self.num_classes - 1}")
        if not 0 <= idx < self.num_classes:
            raise ValueError(f"class {idx} is out of range 0..{self.num_classes - 1}")
        return idx

    def default_config(self, guide: str, **overrides: Any) -> GuidanceConfig:
        """Classifier guidance by ``guide`` with its default scale and gradient source."""
        if guide not in self.guide_info:
            raise ValueError(f"unknown guide {guide!r}; this bundle has {sorted(self.guide_info)}")
        info = self.guide_info[guide]
        values = {"name": guide, "method": "classifier", "classifier": guide, "scale": info.default_scale,
                  "gradient_source": info.default_source, **overrides}
        return GuidanceConfig(**values)

    def sample(self, configs: Sequence[GuidanceConfig], labels: Sequence[int], seeds: Sequence[int], *,
               respacing: str | None = None, sampler: str = "ddpm", eta: float = 0.0,
               trace: TraceOptions | None = None, **kwargs: Any) -> SampleResult:
        """Side-by-side sampling with this bundle's networks (see :func:`engine.sampler.sample`)."""
        result = sample(self.denoiser, self.diffusion(respacing), configs, labels, seeds=seeds,
                        guides=self.guides, sampler=sampler, eta=eta, null_label=self.null_label,
                        trace=trace, device=self.device, **{"precision": self.precision, **kwargs})
        result.settings["respacing"] = respacing if respacing is not None else self.default_respacing
        result.settings["bundle"] = self.name
        return result

    def describe(self) -> dict[str, Any]:
        """What is loaded, for the UI and logs."""
        def count(net: nn.Module) -> int:
            return sum(p.numel() for p in net.parameters())

        return {
            "name": self.name,
            "source": self.source,
            "device": str(self.device),
            "image_shape": list(self.image_shape),
            "classes": self.class_names,
            "null_label": self.null_label,
            "diffusion": self.diffusion_config.to_dict(),
            "default_respacing": self.default_respacing,
            "denoiser_parameters": count(self.denoiser),
            "guides": {name: {"parameters": count(g.net), "time_dependent": g.time_dependent,
                              "default_scale": self.guide_info[name].default_scale,
                              "default_source": self.guide_info[name].default_source,
                              "description": self.guide_info[name].description}
                       for name, g in self.guides.items()},
            "judge_parameters": count(self.judge) if self.judge is not None else None,
        }


def load_bundle(path: str | Path | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Read a bundle folder (``bundle.json`` beside its model files); the default is the
    project's MNIST bundle in ``models/``."""
    root = Path(path).expanduser() if path is not None else DEFAULT_BUNDLE_DIR
    manifest_path = root / "bundle.json" if root.is_dir() else root
    if not manifest_path.is_file():
        raise BundleError(f"no bundle at {root}: expected a folder with bundle.json (see README, 'Model bundle')")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path} is not a {BUNDLE_FORMAT} manifest")
    base = manifest_path.parent
    denoiser_entry = manifest.get("denoiser")
    if not denoiser_entry:
        raise BundleError(f"{manifest_path} names no denoiser")
    denoiser, header = load_model_file(base / denoiser_entry["file"])
    guides: dict[str, Guide] = {}
    infos: dict[str, GuideInfo] = {}
    for name, entry in manifest.get("guides", {}).items():
        net, _ = load_model_file(base / entry["file"])
        time_dependent = bool(entry.get("time_dependent", True))
        if not time_dependent:
            net = CleanClassifier(net).eval()
        guides[name] = Guide(net, time_dependent=time_dependent, description=entry.get("description", ""))
        infos[name] = GuideInfo(name, time_dependent, float(entry.get("default_scale", 1.0)),
                                entry.get("default_source", "x_t" if time_dependent else "x0_through_denoiser"),
                                entry.get("description", ""), entry["file"])
    judge = None
    if manifest.get("judge"):
        judge, _ = load_model_file(base / manifest["judge"]["file"])
    diffusion = DiffusionConfig.from_dict(header["meta"].get("diffusion") or manifest["diffusion"])
    bundle = Bundle(denoiser, diffusion, guides, infos, list(manifest["class_names"]), judge,
                    manifest.get("null_label"), manifest.get("default_respacing", ""), manifest.get("name", root.name),
                    str(base), manifest)
    return bundle.to(device)


def bundle_from_presets(denoiser_preset: str, denoiser_path: str | Path,
                        guides: Mapping[str, tuple[str, str | Path]] | None = None, *,
                        respacing: str | None = None, device: str | torch.device = "cpu",
                        precision: str = "fp32", class_names: Sequence[str] | None = None) -> Bundle:
    """A bundle of published checkpoints: each network is named by its preset and file."""
    preset = get_preset(denoiser_preset)
    if preset.kind != "denoiser":
        raise BundleError(f"{denoiser_preset} is a {preset.kind} preset; the first argument must be a denoiser preset")
    denoiser = load_published(denoiser_preset, denoiser_path)
    flags = diffusion_kwargs(preset.flags)
    diffusion = DiffusionConfig(steps=flags["diffusion_steps"], noise_schedule=flags["noise_schedule"],
                                learn_sigma=flags["learn_sigma"], sigma_small=flags["sigma_small"],
                                predict_xstart=flags["predict_xstart"], rescale_timesteps=flags["rescale_timesteps"])
    guide_nets: dict[str, Guide] = {}
    infos: dict[str, GuideInfo] = {}
    for name, (guide_preset, path) in (guides or {}).items():
        gp = get_preset(guide_preset)
        if gp.kind != "classifier":
            raise BundleError(f"guide {name!r}: {guide_preset} is not a classifier preset")
        guide_nets[name] = Guide(load_published(guide_preset, path), True, gp.description)
        infos[name] = GuideInfo(name, True, gp.default_scale or 1.0, "x_t", gp.description, str(path))
    n = denoiser.num_classes or next((g.num_classes for g in guide_nets.values()), 0)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    bundle = Bundle(denoiser, diffusion, guide_nets, infos, names, None, None,
                    respacing if respacing is not None else "250", denoiser_preset, str(denoiser_path))
    return bundle.to(device, precision)


def bundle_from_preset_set(name: str, paths: Mapping[str, str | Path], **kwargs: Any) -> Bundle:
    """A bundle from a preset set (e.g. ``imagenet128``) and the file of each network,
    keyed ``denoiser`` and by guide name."""
    if name not in PRESET_SETS:
        raise BundleError(f"unknown preset set {name!r}; sets: {', '.join(sorted(PRESET_SETS))}")
    spec = PRESET_SETS[name]
    missing = [k for k in ["denoiser", *spec["guides"]] if k not in paths]
    if missing:
        raise BundleError(f"preset set {name} needs files for {missing}")
    guides = {g: (preset, paths[g]) for g, preset in spec["guides"].items()}
    return bundle_from_presets(spec["denoiser"], paths["denoiser"], guides,
                               respacing=kwargs.pop("respacing", spec["respacing"]), **kwargs)


def parse_network_spec(spec: str) -> tuple[str, str]:
    """``preset:path`` -> (preset, path)."""
    if ":" not in spec:
        raise BundleError(f"expected PRESET:PATH (e.g. gd-128-classifier:/models/128x128_classifier.pt), got {spec!r}")
    preset, path = spec.split(":", 1)
    get_preset(preset)
    return preset, path


def open_models(bundle: str | Path | None = None, *, denoiser: str | None = None, guides: Sequence[str] = (),
                preset_set: str | None = None, device: str = "auto", precision: str = "fp32",
                respacing: str | None = None, diffusers_dir: str | Path | None = None) -> Bundle:
    """Open models the way every command line names them:

    - nothing: the bundled MNIST models (``models/``);
    - ``bundle``: a bundle folder;
    - ``denoiser='PRESET:PATH'`` and ``guides=['NAME=PRESET:PATH', ...]``: published checkpoints;
    - ``preset_set='imagenet128'`` with ``denoiser='PATH'`` and ``guides=['vanilla=PATH', 'robust=PATH']``;
    - ``diffusers_dir``: a local diffusers pipeline folder, guides ``NAME=PATH`` (train.classifier
      model files) or ``NAME=PRESET:PATH`` (see :mod:`engine.diffusers_adapter`).

    ``device='auto'`` picks CUDA when available."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if diffusers_dir:
        if bundle or denoiser or preset_set:
            raise BundleError("--diffusers-dir names the denoiser: give it without --bundle, --denoiser or "
                              "--preset-set")
        from .diffusers_adapter import load_diffusers_pipeline

        return load_diffusers_pipeline(diffusers_dir, guides, device=device, precision=precision, respacing=respacing)
    if preset_set:
        if not denoiser:
            raise BundleError(f"preset set {preset_set} needs the denoiser file: --denoiser PATH")
        paths: dict[str, str | Path] = {"denoiser": denoiser}
        for g in guides:
            name, _, path = g.partition("=")
            if not path:
                raise BundleError(f"expected NAME=PATH for a guide of preset set {preset_set}, got {g!r}")
            paths[name] = path
        return bundle_from_preset_set(preset_set, paths, device=device, precision=precision,
                                      **({"respacing": respacing} if respacing is not None else {}))
    if denoiser:
        d_preset, d_path = parse_network_spec(denoiser)
        guide_specs: dict[str, tuple[str, str | Path]] = {}
        for g in guides:
            name, _, spec = g.partition("=")
            if not spec:
                raise BundleError(f"expected NAME=PRESET:PATH for a guide, got {g!r}")
            guide_specs[name] = parse_network_spec(spec)
        return bundle_from_presets(d_preset, d_path, guide_specs, respacing=respacing, device=device,
                                   precision=precision)
    if guides:
        raise BundleError("--guide needs --denoiser (or a --preset-set); a bundle folder names its own guides")
    opened = load_bundle(bundle, device=device)
    if precision != "fp32":
        opened.to(device, precision)
    if respacing is not None:
        opened.default_respacing = respacing
    return opened
