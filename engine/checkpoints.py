"""One network's file: safe reading of checkpoints, layout diagnostics, and the
project's own model-file format.

- :func:`read_weights` reads a checkpoint with ``torch.load(weights_only=True)`` or
  safetensors, never arbitrary pickles, and says in plain words why a file is refused;
- :func:`load_into` loads a state_dict strictly and, when the layout does not fit, names
  the missing, unexpected and mis-shaped keys (:func:`layout_mismatch`,
  :func:`mismatch_report`) and the presets whose layout does fit (:func:`presets_matching`);
- :func:`save_model_file` / :func:`load_model_file` write and read the project's model
  files (``rcg-model-v1``: kind, architecture, config, meta and the state_dict);
  :func:`load_published` builds a published guided-diffusion network from its preset.

Bundles of several networks are in :mod:`engine.bundles`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .nets import EncoderUNetModel, UNetModel
from .nets.flags import classifier_kwargs, denoiser_kwargs
from .nets.plain import CleanClassifier, JudgeNet
from .presets import PRESETS, get_preset

MODEL_FORMAT = "rcg-model-v1"
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


def listed(items: list, limit: int = 8) -> str:
    """The first ``limit`` items joined by commas, with the total when there are more."""
    return ", ".join(str(i) for i in items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def mismatch_report(problems: Mapping[str, list]) -> list[str]:
    """One indented line per kind of problem :func:`layout_mismatch` found."""
    return [f"  {what.replace('_', '-')} keys: {listed(items)}" for what, items in problems.items() if items]


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
        lines = [f"{source} does not fit the requested {type(model).__name__}:", *mismatch_report(problems)]
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
    remake = ("write it again with the python -m train command that made it (or engine.checkpoints.save_model_file); "
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
        raise BundleError(f"{path} is a broken {MODEL_FORMAT} model file: these state_dict values are not tensors: "
                          f"{listed(odd)}; {remake}")
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
