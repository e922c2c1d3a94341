"""Bundles: one denoiser, any number of named guides (classifiers), an optional judge,
the diffusion process they were trained with, and class names.

Two ways in:

- :func:`load_bundle` reads a bundle folder (``bundle.json`` + model files), such as the
  project's own MNIST bundle in ``models/`` (the default);
- :func:`bundle_from_presets` builds one from published checkpoints, naming each
  network's preset and file, e.g. ``bundle_from_presets("gd-128-denoiser", "128x128_diffusion.pt",
  {"vanilla": ("gd-128-classifier", "128x128_classifier.pt"), "robust": ("robust-128-classifier", "robust.pt")})``.

Each network's file is read by :mod:`engine.checkpoints` (safe loading, layout
diagnostics); command-line names of models (``NAME=PRESET:PATH``) are read by
:mod:`engine.model_specs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .bundle_index import UnknownBundle, default_bundle_dir, resolve_bundle
from .checkpoints import BundleError, load_model_file, load_published
from .columns import GuidanceSpec
from .diffusion import DiffusionConfig, GaussianDiffusion, create_diffusion
from .diffusion.schedules import respacing_spaced_for
from .guidance import Guide, GuidanceConfig
from .nets import UNetModel
from .nets.flags import diffusion_kwargs
from .nets.plain import CleanClassifier, JudgeNet
from .precision import check_precision, release_reduced_copies
from .presets import PRESET_SETS, get_preset
from .sampler import SampleResult, sample
from .trace import TraceOptions

BUNDLE_FORMAT = "rcg-bundle-v1"


def bundled_models_dir() -> Path:
    """The default shipped bundle's folder, ``models/<default>`` (see
    :mod:`engine.bundle_index`: ``models/index.json`` names it), in the checkout this
    code runs from, else in the copy ``pip install`` put beside the packages (the data
    package ``rcg_models``), so the default works from any folder."""
    return default_bundle_dir()


DEFAULT_BUNDLE_DIR = bundled_models_dir()


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

    def section(self, name: str) -> dict[str, Any]:
        """A section of bundle.json that front doors read (``lab``, ``survey``): a dict,
        empty when the manifest lacks it or holds something else there."""
        value = self.manifest.get(name) if isinstance(self.manifest, dict) else None
        return value if isinstance(value, dict) else {}

    @property
    def dataset(self) -> str | None:
        """The dataset the bundle was trained on, for its held-out split (``engine.data``
        spec: ``mnist``, ``fashion-mnist``, a folder ...): the manifest's ``data``, else the
        split source recorded by the denoiser's or the judge's training; None when unknown."""
        manifest = self.manifest if isinstance(self.manifest, dict) else {}
        if manifest.get("data"):
            return str(manifest["data"])
        for role in ("denoiser", "judge"):
            split = ((manifest.get(role) or {}).get("training") or {}).get("split") or {}
            if split.get("source"):
                return str(split["source"])
        return None

    def diffusion(self, respacing: str | None = None) -> GaussianDiffusion:
        """The process at ``respacing`` (the bundle's default when None)."""
        return create_diffusion(self.diffusion_config.respaced(respacing if respacing is not None
                                                               else self.default_respacing))

    def default_respacing_for(self, sampler: str = "ddpm") -> str:
        """The bundle's default respacing, a plain step count spaced for ``sampler``
        (``engine.diffusion.schedules.respacing_spaced_for``: DDIM's stride for DDIM)."""
        return respacing_spaced_for(self.diffusion_config.steps, self.default_respacing, sampler)

    def to(self, device: str | torch.device, precision: str = "fp32") -> "Bundle":
        """Move every network and set the precision of later samples: bf16 / fp16 run the
        torsos of the denoiser and the guides in 16 bits from cached copies
        (``engine.precision``); the networks themselves keep float32 weights, so switching
        back to fp32 is exact. An unknown precision, or one the device cannot run, is a
        :class:`engine.precision.PrecisionError` naming the allowed values."""
        device = torch.device(device)
        self.precision = check_precision(precision, device)
        self.device = device
        for net in (self.denoiser, *(guide.net for guide in self.guides.values())):
            release_reduced_copies(net)  # the next 16-bit run builds what it needs, on the new device
        self.denoiser.to(self.device)
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
        """Classifier guidance by ``guide`` with its default scale and gradient source (the
        column spec ``guide`` read against this bundle), then ``overrides`` (any
        :class:`GuidanceConfig` field)."""
        if guide not in self.guide_info:  # also the words unguided / cfg, which name no guide
            raise ValueError(f"unknown guide {guide!r}; this bundle has {sorted(self.guide_info)}")
        config = GuidanceSpec(guide, guide).to_config(self.guide_info)
        return replace(config, **overrides) if overrides else config

    def sample(self, configs: Sequence[GuidanceConfig], labels: Sequence[int], seeds: Sequence[int], *,
               respacing: str | None = None, sampler: str = "ddpm", eta: float = 0.0,
               trace: TraceOptions | None = None, **kwargs: Any) -> SampleResult:
        """Side-by-side sampling with this bundle's networks (see :func:`engine.sampler.sample`)."""
        if respacing is None:
            respacing = self.default_respacing_for(sampler)
        result = sample(self.denoiser, self.diffusion(respacing), configs, labels, seeds=seeds,
                        guides=self.guides, sampler=sampler, eta=eta, null_label=self.null_label,
                        trace=trace, device=self.device, **{"precision": self.precision, **kwargs})
        result.settings["respacing"] = respacing
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
    """Read a bundle folder (``bundle.json`` beside its model files), given by path or by
    the name of a shipped bundle (``"mnist"``); the default is the default shipped
    bundle (:func:`engine.bundle_index.default_bundle_dir`)."""
    try:
        root = Path(resolve_bundle(path)).expanduser() if path is not None else DEFAULT_BUNDLE_DIR
    except UnknownBundle as exc:
        raise BundleError(str(exc)) from None
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
