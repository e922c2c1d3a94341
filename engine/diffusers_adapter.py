"""Robust guidance for Hugging Face diffusers models: a pixel-space ``UNet2DModel`` and its
``DDPMScheduler`` / ``DDIMScheduler`` become the engine's denoiser and diffusion process,
so every guide, gradient source, stabiliser, trace and front door works on them unchanged.

What is mapped (checked against diffusers' own pipelines step by step in the tests):

- **schedule**: the scheduler's ``alphas_cumprod`` exactly as diffusers computes them
  (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid``, trained betas,
  zero-terminal-SNR rescaling), so the process is the one the network was trained with;
- **timestep spacing**: a respacing ``"N"`` is the scheduler's own N inference steps
  (``leading`` / ``trailing`` / ``linspace`` with ``steps_offset``); ``""`` is every training
  step; guided-diffusion's ``"ddimN"`` and ``"10,15,20"`` pick the steps the engine's way;
- **parameterisation**: ``epsilon``, ``v_prediction`` and ``sample`` outputs;
  ``clip_sample`` / ``clip_sample_range`` clip the predicted x0 as the scheduler does;
- **variance**: ``fixed_small`` (and ``fixed_small_log``), ``fixed_large`` and
  ``learned_range`` (2C output channels) with diffusers' values at every step, including
  the last one (noise is added there when its timestep is above 0, as diffusers does);
- **DDIM**: the scheduler's previous timestep (``t - T // N``), ``set_alpha_to_one`` and the
  unclipped model epsilon of ``DDIMScheduler.step`` (``use_clipped_model_output=False``).

Guidance then works as for guided-diffusion models: a time-dependent guide sees x_t and the
original timestep; a clean classifier sees the predicted x0 (GradCheck's setting).

Loading reads a local folder only (``model_index.json`` with ``unet/`` and ``scheduler/``,
as ``pipeline.save_pretrained(path)`` writes it); weights load through safetensors or
``torch.load(weights_only=True)``, never arbitrary pickles, and nothing is downloaded.

``diffusers`` is optional: this module imports it only when a pipeline is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .bundles import Bundle, GuideInfo
from .checkpoints import BundleError, layout_mismatch, load_model_file, load_published, mismatch_report, \
    read_weights
from .model_specs import parse_network_spec
from .diffusion.process import GaussianDiffusion
from .diffusion.schedules import named_beta_schedule, respaced_betas, space_timesteps
from .guidance import Guide, GuidanceConfig
from .jsonfile import read_json_object
from .nets.flags import diffusion_kwargs
from .nets.plain import CleanClassifier
from .presets import get_preset
from .sampler import SampleResult
from .trace import TraceOptions

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "start_x"}
DDPM_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
                  "learned_range": "learned_range"}
LATENT_PARTS = ("vae", "vqvae", "text_encoder", "tokenizer", "transformer", "prior")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
INSTALL_HINT = ("pip install -r requirements-diffusers.txt (diffusers==0.42.1; or the project's extra: "
                "pip install .[diffusers])")


class DiffusersError(BundleError):
    """A diffusers folder cannot be used; the message says why and what to do."""


def require_diffusers() -> Any:
    """The diffusers package, or a clear error saying how to install it."""
    try:
        import diffusers
    except ImportError as exc:
        raise DiffusersError(f"guiding diffusers models needs the diffusers package: {INSTALL_HINT} ({exc})") from None
    return diffusers


# --------------------------------------------------------------------------- schedule
def scheduler_timesteps(spacing: str, num_train: int, num_steps: int, steps_offset: int = 0) -> list[int]:
    """The timesteps (descending) that diffusers' DDPM / DDIM ``set_timesteps(num_steps)``
    visits for ``timestep_spacing`` ``linspace``, ``leading`` or ``trailing``."""
    if not 0 < num_steps <= num_train:
        raise ValueError(f"the number of sampling steps must lie in 1..{num_train}, got {num_steps}")
    if spacing == "linspace":
        steps = np.linspace(0, num_train - 1, num_steps).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ratio = num_train // num_steps
        steps = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = num_train / num_steps
        steps = np.round(np.arange(num_train, 0, -ratio)).astype(np.int64) - 1
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}: diffusers knows linspace, leading and trailing")
    return [int(s) for s in steps]


@dataclass
class DiffusersSchedule:
    """The training process of a diffusers scheduler and how it picks sampling steps.

    Stands where guided-diffusion bundles keep their ``DiffusionConfig`` (``steps``,
    ``to_dict``); :meth:`process` builds the engine's diffusion for a respacing."""

    scheduler: str
    config: dict[str, Any]
    alphas_cumprod: np.ndarray
    final_alpha_cumprod: float = 1.0
    learned_variance: bool = False

    @property
    def steps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def prediction_type(self) -> str:
        return self.config.get("prediction_type", "epsilon")

    @property
    def clip_sample(self) -> bool:
        return bool(self.config.get("clip_sample", True))

    @property
    def clip_range(self) -> float:
        return float(self.config.get("clip_sample_range", 1.0))

    @property
    def variance_type(self) -> str:
        if self.learned_variance:
            return "learned_range"
        if self.scheduler == "DDIMScheduler":  # DDIM defines no variance; the engine's DDPM then uses beta~
            return "fixed_small"
        return DDPM_VARIANCES[self.config.get("variance_type", "fixed_small")]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for run records and the Models tab (``steps`` and ``noise_schedule``
        as guided-diffusion bundles name them)."""
        keep = ("beta_start", "beta_end", "trained_betas", "timestep_spacing", "steps_offset", "set_alpha_to_one",
                "rescale_betas_zero_snr", "clip_sample_range")
        values = {"source": "diffusers", "scheduler": self.scheduler, "steps": self.steps,
                  "noise_schedule": self.config.get("beta_schedule", "linear"),
                  "prediction_type": self.prediction_type, "variance_type": self.variance_type,
                  "clip_sample": self.clip_sample}
        values.update({k: self.config[k] for k in keep if self.config.get(k) is not None})
        return values

    def kept_steps(self, respacing: str | None) -> tuple[list[int], bool]:
        """Ascending timesteps of a respacing and whether they follow the scheduler's own
        spacing (``"N"``, ``""``) rather than guided-diffusion's (``ddimN``, sections)."""
        text = (respacing or "").strip()
        if not text:
            return list(range(self.steps)), True
        if text.isdigit():
            steps = scheduler_timesteps(self.config.get("timestep_spacing", "leading"), self.steps, int(text),
                                        int(self.config.get("steps_offset", 0) or 0))
            if len(set(steps)) != len(steps) or min(steps) < 0 or max(steps) >= self.steps:
                raise ValueError(f"{self.scheduler} with timestep_spacing {self.config.get('timestep_spacing')!r} "
                                 f"gives unusable timesteps {steps} for {text} steps; choose another number of steps")
            return sorted(steps), True
        return space_timesteps(self.steps, text), False

    def process(self, respacing: str | None = "") -> "DiffusersProcess":
        """The engine's diffusion that samples over the steps ``respacing`` names."""
        kept, own_spacing = self.kept_steps(respacing)
        abar = self.alphas_cumprod
        prev = [abar[kept[k - 1]] if k > 0 else 1.0 for k in range(len(kept))]
        if self.scheduler == "DDIMScheduler":
            if own_spacing:  # DDIMScheduler.step: prev_t = t - T // N, whatever the spacing
                stride = self.steps // len(kept)
                prev = [abar[t - stride] if t - stride >= 0 else self.final_alpha_cumprod for t in kept]
            else:
                prev[0] = self.final_alpha_cumprod
        return DiffusersProcess(self, kept, np.asarray(prev, dtype=np.float64), respacing or "")


class _ProcessConfig:
    """What a sample's run record says about the process (``SampleResult.settings``)."""

    def __init__(self, schedule: DiffusersSchedule, respacing: str):
        self.values = {**schedule.to_dict(), "timestep_respacing": respacing}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


class DiffusersProcess(GaussianDiffusion):
    """The respaced process of a diffusers scheduler, stepping as the scheduler does.

    Differences from guided-diffusion's process, all following diffusers: the
    predicted x0 of v- and x0-prediction, the clip range, the epsilon a DDIM step uses
    (the network's, unclipped), the DDIM previous alpha-bar (``alphas_cumprod_prev``), the
    variance at the last step, and noise at the last step when its timestep is above 0."""

    def __init__(self, schedule: DiffusersSchedule, kept: list[int], prev_alphas_cumprod: np.ndarray,
                 respacing: str = ""):
        abar = schedule.alphas_cumprod
        super().__init__(respaced_betas(abar, kept), mean_type="epsilon", variance_type=schedule.variance_type,
                         timestep_map=kept, original_num_steps=schedule.steps,
                         config=_ProcessConfig(schedule, respacing))
        self.schedule = schedule
        self.prediction = PREDICTIONS[schedule.prediction_type]
        self.clip_range = schedule.clip_range
        # The values a step uses, computed in float32 from float32 alpha-bars in the order
        # diffusers' schedulers compute them, so that ill-conditioned steps (alpha-bar near 0,
        # no clipping) round the same way.
        abar_t = torch.tensor(abar[kept], dtype=torch.float32)
        prev_ddpm = torch.cat([torch.ones(1), abar_t[:-1]])  # DDPMScheduler: the previous kept step, or 1
        beta_prod = 1 - abar_t
        current_alpha = abar_t / prev_ddpm
        current_beta = 1 - current_alpha
        posterior = torch.clamp((1 - prev_ddpm) / beta_prod * current_beta, min=1e-20)
        values = {
            "alphas_cumprod": abar_t,
            "alphas_cumprod_prev": torch.tensor(prev_alphas_cumprod, dtype=torch.float32),  # DDIM's previous step
            "sqrt_alphas_cumprod": abar_t**0.5,
            "sqrt_one_minus_alphas_cumprod": beta_prod**0.5,
            "posterior_mean_coef1": prev_ddpm**0.5 * current_beta / beta_prod,
            "posterior_mean_coef2": current_alpha**0.5 * (1 - prev_ddpm) / beta_prod,
            "posterior_variance": posterior,
            "posterior_log_variance_clipped": torch.log(posterior),
            "log_betas": torch.log(current_beta),
            "fixed_large_variance": current_beta,
        }
        for name, value in values.items():
            self._set(name, value.double().numpy())
        # DDPMScheduler adds noise whenever the timestep is above 0; DDIMScheduler (eta > 0) at every step
        self.ddpm_noise_at_last_step = kept[0] > 0

    def _set(self, name: str, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        self.arrays[name] = values
        self._tensors[name] = torch.from_numpy(np.ascontiguousarray(values))

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """As :meth:`GaussianDiffusion.p_mean_variance`, with diffusers' parameterisations:
        epsilon: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar); v: x0 = sqrt(abar) x_t - sqrt(1 - abar) v,
        eps = sqrt(abar) v + sqrt(1 - abar) x_t; sample: x0 is the output, eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).
        x0 is clipped to the scheduler's clip range; ``eps`` is the unclipped one."""
        t = self._check_t(t, x_t.shape[0])
        mean_part, var_values = self.split_output(model_output, x_t.shape[1])
        variance, log_variance = self.step_variance(var_values, t, x_t)
        root_abar = self._at("sqrt_alphas_cumprod", t, x_t)
        root_one_minus = self._at("sqrt_one_minus_alphas_cumprod", t, x_t)
        if self.prediction == "epsilon":
            eps = mean_part
            pred_xstart = (x_t - root_one_minus * eps) / root_abar
        elif self.prediction == "v":
            pred_xstart = root_abar * x_t - root_one_minus * mean_part
            eps = root_abar * mean_part + root_one_minus * x_t
        else:
            pred_xstart = mean_part
            eps = (x_t - root_abar * mean_part) / root_one_minus
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-self.clip_range, self.clip_range)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart,
                "eps": eps}

    @staticmethod
    def _noise_mask(t: torch.Tensor, like: torch.Tensor, at_last_step: bool) -> torch.Tensor:
        keep = torch.ones_like(t, dtype=torch.bool) if at_last_step else t != 0
        return keep.float().reshape(-1, *([1] * (like.dim() - 1))).to(like.device)

    def ddpm_step(self, out: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_{t-1} = mu + sigma z, with noise at the last step when its timestep is above 0."""
        mask = self._noise_mask(t, noise, self.ddpm_noise_at_last_step)
        return out["mean"] + mask * torch.exp(0.5 * out["log_variance"]) * noise

    def ddim_step(self, out: dict[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                  eta: float = 0.0) -> torch.Tensor:
        """DDIMScheduler.step: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z with
        the network's (unclipped, or guided) epsilon and the scheduler's previous alpha-bar."""
        t = self._check_t(t, x_t.shape[0])
        eps = out["eps"]
        alpha_bar = self._at("alphas_cumprod", t, x_t)
        alpha_bar_prev = self._at("alphas_cumprod_prev", t, x_t)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        return mean + self._noise_mask(t, x_t, True) * sigma * noise


# --------------------------------------------------------------------------- denoiser
class DiffusersDenoiser(nn.Module):
    """A diffusers ``UNet2DModel`` called the engine's way: ``forward(x, t[, y])``."""

    def __init__(self, unet: nn.Module, num_classes: int | None):
        super().__init__()
        self.unet = unet
        config = unet.config
        size = config.sample_size
        if size is None:
            raise DiffusersError("the UNet config gives no sample_size (the image size); add it to unet/config.json")
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise DiffusersError(f"the UNet makes {size[0]}x{size[1]} images; the engine samples square ones only")
            size = size[0]
        self.image_size = int(size)
        self.in_channels = int(config.in_channels)
        self.out_channels = int(config.out_channels)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("this denoiser is class-conditional: pass y" if self.num_classes is not None
                             else "this denoiser is unconditional: do not pass y")
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(x.to(dtype), timesteps, class_labels=y, return_dict=False)[0]
        return out.float()

    def convert_to_fp16(self) -> None:
        self.unet.to(torch.float16)

    def convert_to_bf16(self) -> None:
        self.unet.to(torch.bfloat16)

    def convert_to_fp32(self) -> None:
        self.unet.to(torch.float32)


# --------------------------------------------------------------------------- bundle
class DiffusersBundle(Bundle):
    """A :class:`Bundle` whose denoiser and process come from a diffusers pipeline folder."""

    def diffusion(self, respacing: str | None = None) -> GaussianDiffusion:
        return self.diffusion_config.process(respacing if respacing is not None else self.default_respacing)

    def sample(self, configs: Sequence[GuidanceConfig], labels: Sequence[int], seeds: Sequence[int], *,
               respacing: str | None = None, sampler: str = "ddpm", eta: float = 0.0,
               trace: TraceOptions | None = None, **kwargs: Any) -> SampleResult:
        """As :meth:`Bundle.sample`; x0 is clipped only when the scheduler clips (``clip_sample``)."""
        kwargs.setdefault("clip_denoised", self.diffusion_config.clip_sample)
        result = super().sample(configs, labels, seeds, respacing=respacing, sampler=sampler, eta=eta, trace=trace,
                                **kwargs)
        result.settings["diffusers_dir"] = self.source
        return result


def _read_json(path: Path, what: str) -> dict[str, Any]:
    return read_json_object(path, DiffusersError, what)


def _locate(root: Path) -> tuple[Path, Path, dict[str, Any]]:
    """unet/ and scheduler/ of a pipeline folder, with model_index.json (or {})."""
    if not root.exists():
        raise DiffusersError(f"no diffusers pipeline at {root}: the folder does not exist (nothing is downloaded; "
                             "save one with pipeline.save_pretrained(PATH) or huggingface-cli download)")
    if not root.is_dir():
        raise DiffusersError(f"{root} is a file; give the pipeline folder (with model_index.json, unet/, scheduler/)")
    index = _read_json(root / "model_index.json", "pipeline index") if (root / "model_index.json").is_file() else {}
    pipeline = str(index.get("_class_name", ""))
    latent = [part for part in LATENT_PARTS  # model_index.json marks absent optional parts [null, null]
              if (isinstance(index.get(part), list) and any(index[part])) or (root / part).is_dir()]
    if latent or "Latent" in pipeline or "StableDiffusion" in pipeline:
        raise DiffusersError(
            f"{root} is a latent-space or text-conditioned pipeline ({pipeline or 'components ' + ', '.join(latent)}); "
            "only pixel-space pipelines (UNet2DModel + DDPMScheduler / DDIMScheduler, e.g. DDPMPipeline) are "
            "supported: a guide of pixel images cannot steer a latent")
    unet, scheduler = root / "unet", root / "scheduler"
    if not (unet / "config.json").is_file() or not (scheduler / "scheduler_config.json").is_file():
        hint = ""
        if (root / "bundle.json").is_file():
            hint = " (it is an engine bundle: use --bundle)"
        elif (root / "scheduler_config.json").is_file() or (root / "config.json").is_file():
            hint = " (it looks like one component of a pipeline: give the folder above it)"
        raise DiffusersError(
            f"{root} is not a diffusers pipeline folder{hint}: expected model_index.json with unet/config.json and "
            "scheduler/scheduler_config.json, as pipeline.save_pretrained(PATH) writes them")
    return unet, scheduler, index


def _check_unet_config(config: Mapping[str, Any], where: Path) -> int | None:
    """The number of classes of a UNet2DModel config (None: unconditional), or an error."""
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        extra = " (text-conditioned; latent pipelines are not supported)" if "Condition" in str(name) else ""
        raise DiffusersError(f"{where} describes a {name}{extra}; the engine guides pixel-space UNet2DModel denoisers")
    if config.get("time_embedding_type", "positional") == "fourier":
        raise DiffusersError(f"{where}: a Fourier time embedding belongs to score-SDE models (continuous noise "
                             "levels), "
                             "not to DDPM / DDIM schedules; not supported")
    embed, count = config.get("class_embed_type"), config.get("num_class_embeds")
    if embed is None:
        return int(count) if count else None
    if embed == "timestep":
        if not count:
            raise DiffusersError(f"{where}: class_embed_type 'timestep' does not say how many classes there are; "
                                 "add num_class_embeds (the number of classes) to unet/config.json")
        return int(count)
    raise DiffusersError(f"{where}: class_embed_type {embed!r} takes class embeddings, not class ids; "
                         "supported: none (num_class_embeds) and 'timestep'")


def _scheduler_from(config: dict[str, Any], where: Path, learned: bool) -> DiffusersSchedule:
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise DiffusersError(f"{where} configures a {name}; supported schedulers: {', '.join(SCHEDULERS)} (the engine "
                             "samples with its own DDPM / DDIM; save the pipeline with one of them)")
    if config.get("thresholding"):
        raise DiffusersError(f"{where}: dynamic thresholding is not supported; set thresholding to false")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise DiffusersError(f"{where}: prediction_type {prediction!r} is not supported ({', '.join(PREDICTIONS)})")
    variance = config.get("variance_type", "fixed_small")
    if name == "DDPMScheduler":
        if variance not in (*DDPM_VARIANCES, "learned") or variance == "learned":
            raise DiffusersError(f"{where}: variance_type {variance!r} is not supported "
                                 f"({', '.join(DDPM_VARIANCES)})")
        if learned != (variance == "learned_range"):
            raise DiffusersError(f"{where}: variance_type {variance!r} does not fit the UNet's output "
                                 f"({'2x' if learned else '1x'} its input channels)")
    diffusers = require_diffusers()
    try:
        built = getattr(diffusers, name).from_config(config)
    except Exception as exc:  # diffusers' own validation (e.g. an unknown beta_schedule)
        raise DiffusersError(f"{where}: diffusers cannot build this {name}: {exc}") from exc
    abar = built.alphas_cumprod.double().numpy().copy()
    final = float(getattr(built, "final_alpha_cumprod", torch.tensor(1.0)))
    return DiffusersSchedule(name, dict(built.config), abar, final, learned)


def _weights_file(unet_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (unet_dir / name).is_file():
            return unet_dir / name
    if (unet_dir / "diffusion_pytorch_model.safetensors.index.json").is_file():
        return unet_dir / "diffusion_pytorch_model.safetensors.index.json"
    raise DiffusersError(f"{unet_dir} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _read_unet_state(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".index.json"):
        shards = sorted(set(_read_json(path, "weight index").get("weight_map", {}).values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_weights(path.parent / shard))
        return state
    data = read_weights(path)
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _rename_old_attention(unet: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints written by diffusers before 0.15 (the google/ddpm-* ones) name the
    attention projections query / key / value / proj_attn; current blocks call them
    to_q / to_k / to_v / to_out.0."""
    names = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    for path, module in unet.named_modules():
        if not getattr(module, "_from_deprecated_attn_block", False):
            continue
        for old, new in names.items():
            for kind in ("weight", "bias"):
                key = f"{path}.{old}.{kind}"
                if key in state:
                    state[f"{path}.{new}.{kind}"] = state.pop(key)
    return state


def load_unet(unet_dir: Path, config: dict[str, Any]) -> nn.Module:
    """A UNet2DModel built from its config, its weights read safely and loaded strictly."""
    diffusers = require_diffusers()
    try:
        unet = diffusers.UNet2DModel.from_config(config)
    except Exception as exc:
        raise DiffusersError(f"{unet_dir / 'config.json'}: diffusers cannot build this UNet2DModel: {exc}") from exc
    path = _weights_file(unet_dir)
    state = _rename_old_attention(unet, _read_unet_state(path))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    problems = layout_mismatch(unet, state)
    if any(problems.values()):
        raise DiffusersError("\n".join([f"{path} does not fit the UNet2DModel of {unet_dir / 'config.json'}:",
                                        *mismatch_report(problems)]))
    unet.load_state_dict(state, strict=True)
    return unet.eval()


def _guide_schedule(header_meta: Mapping[str, Any] | None, preset: str | None) -> tuple[str, int] | None:
    if preset is not None:
        flags = diffusion_kwargs(get_preset(preset).flags)
        return flags["noise_schedule"], int(flags["diffusion_steps"])
    diffusion = (header_meta or {}).get("diffusion")
    if not diffusion:
        return None
    return diffusion.get("noise_schedule", "linear"), int(diffusion.get("steps", 1000))


def load_guide(spec: str) -> tuple[str, Guide, GuideInfo, dict[str, Any]]:
    """``NAME=PATH`` (a model file of ``python -m train.classifier``) or ``NAME=PRESET:PATH``
    (a published classifier): the guide, its info and its meta (class names, schedule)."""
    name, _, target = spec.partition("=")
    name, target = name.strip(), target.strip()
    if not name or not target:
        raise DiffusersError(f"expected a guide as NAME=PATH (a train.classifier model file) or NAME=PRESET:PATH, "
                             f"got {spec!r}")
    preset = None
    if ":" in target and not Path(target).exists():
        preset, path = parse_network_spec(target)
        net: nn.Module = load_published(preset, path)
        meta: dict[str, Any] = {}
        time_dependent, info_scale = True, get_preset(preset).default_scale or 1.0
        description = get_preset(preset).description
    else:
        net, header = load_model_file(target)
        if header.get("kind") != "classifier":
            raise DiffusersError(f"guide {name!r}: {target} holds a {header.get('kind')}, not a classifier")
        meta = dict(header.get("meta") or {})
        time_dependent = bool(meta.get("time_dependent", True))
        info_scale = float(meta.get("default_scale", 1.0))
        description = str(meta.get("description", ""))
        if not time_dependent:
            net = CleanClassifier(net).eval()
    source = "x_t" if time_dependent else "x0_through_denoiser"
    info = GuideInfo(name, time_dependent, info_scale, source, description, target)
    schedule = _guide_schedule(meta, preset)
    return name, Guide(net, time_dependent, description), info, {"meta": meta, "schedule": schedule}


def check_guide_fits(name: str, guide: Guide, denoiser: DiffusersDenoiser, schedule: DiffusersSchedule,
                     trained_on: tuple[str, int] | None) -> None:
    """A guide must see the denoiser's image size and channels; a time-dependent guide must
    have been trained on the same noise schedule (same alpha-bar at every timestep)."""
    net = guide.net
    size, channels = getattr(net, "image_size", None), getattr(net, "in_channels", None)
    if (size is not None and int(size) != denoiser.image_size) or (channels is not None and
                                                                    int(channels) != denoiser.in_channels):
        raise DiffusersError(
            f"guide {name!r} takes {channels}x{size}x{size} images but the diffusers model makes "
            f"{denoiser.in_channels}x{denoiser.image_size}x{denoiser.image_size} images; train a guide on this size, "
            "e.g. "
            f"python -m train.classifier --image-size {denoiser.image_size} --noise-schedule linear ... on "
            f"{denoiser.in_channels}-channel data")
    if guide.time_dependent and trained_on is not None:
        noise_schedule, steps = trained_on
        guide_abar = np.cumprod(1.0 - named_beta_schedule(noise_schedule, steps))
        if steps != schedule.steps or float(np.abs(guide_abar - schedule.alphas_cumprod).max()) > 1e-3:
            raise DiffusersError(
                f"time-dependent guide {name!r} was trained on a {steps}-step {noise_schedule} schedule, which is not "
                f"this pipeline's {schedule.steps}-step {schedule.config.get('beta_schedule')} schedule: at the same "
                "timestep it expects another noise level. Train it with the pipeline's schedule (e.g. "
                "--noise-schedule linear --diffusion-steps 1000 for beta 1e-4..0.02), or use a clean guide "
                "(--clean, guided through the predicted x0)")


def load_diffusers_pipeline(path: str | Path, guides: Sequence[str] = (), *, device: str | torch.device = "cpu",
                            precision: str = "fp32", respacing: str | None = None,
                            class_names: Sequence[str] | None = None) -> DiffusersBundle:
    """A bundle from a local diffusers pipeline folder and guides named ``NAME=PATH`` or
    ``NAME=PRESET:PATH``. The default respacing is the pipeline's own default: every
    training step for DDPM (DDPMPipeline's 1000), 50 steps for DDIM (DDIMPipeline's)."""
    root = Path(path).expanduser()
    unet_dir, scheduler_dir, index = _locate(root)
    unet_config = _read_json(unet_dir / "config.json", "UNet config")
    num_classes = _check_unet_config(unet_config, unet_dir / "config.json")
    channels_in, channels_out = int(unet_config.get("in_channels", 3)), int(unet_config.get("out_channels", 3))
    if channels_out not in (channels_in, 2 * channels_in):
        raise DiffusersError(f"{unet_dir / 'config.json'}: {channels_out} output channels for {channels_in} input "
                             "channels; expected as many (epsilon / v / x0) or twice as many (learned variance)")
    schedule = _scheduler_from(_read_json(scheduler_dir / "scheduler_config.json", "scheduler config"),
                               scheduler_dir / "scheduler_config.json", channels_out == 2 * channels_in)
    unet = load_unet(unet_dir, unet_config)
    denoiser = DiffusersDenoiser(unet, num_classes).eval()
    guide_nets: dict[str, Guide] = {}
    infos: dict[str, GuideInfo] = {}
    guide_classes: list[str] | None = None
    for spec in guides:
        name, guide, info, extra = load_guide(spec)
        if name in guide_nets:
            raise DiffusersError(f"two guides are named {name!r}")
        check_guide_fits(name, guide, denoiser, schedule, extra["schedule"])
        if num_classes is not None and guide.num_classes != num_classes:
            raise DiffusersError(f"guide {name!r} has {guide.num_classes} classes but the class-conditional UNet has "
                                 f"{num_classes}")
        if guide_nets and guide.num_classes != next(iter(guide_nets.values())).num_classes:
            raise DiffusersError(f"guide {name!r} has {guide.num_classes} classes, the other guides "
                                 f"{next(iter(guide_nets.values())).num_classes}")
        guide_nets[name], infos[name] = guide, info
        names = extra["meta"].get("class_names")
        if guide_classes is None and names and len(names) == guide.num_classes:
            guide_classes = [str(n) for n in names]
    count = num_classes or (next(iter(guide_nets.values())).num_classes if guide_nets else None)
    if class_names is not None:
        names = [str(n) for n in class_names]
        if count is not None and len(names) != count:
            raise DiffusersError(f"{len(names)} class names for {count} classes")
    elif guide_classes is not None:
        names = guide_classes
    else:
        names = [str(i) for i in range(count)] if count else ["unconditional"]
    default = respacing if respacing is not None else ("50" if schedule.scheduler == "DDIMScheduler" else "")
    schedule.process(default)  # a bad respacing fails here, not at the first sample
    manifest = {"diffusers": {"pipeline": index.get("_class_name"), "unet": unet_config,
                              "scheduler": schedule.to_dict(), "default_sampler":
                              "ddim" if schedule.scheduler == "DDIMScheduler" else "ddpm"}}
    bundle = DiffusersBundle(denoiser, schedule, guide_nets, infos, names, None, None, default,
                             f"diffusers:{root.name}", str(root), manifest)
    return bundle.to(device, precision)


__all__ = [
    "DiffusersBundle",
    "DiffusersDenoiser",
    "DiffusersError",
    "DiffusersProcess",
    "DiffusersSchedule",
    "check_guide_fits",
    "load_diffusers_pipeline",
    "load_guide",
    "load_unet",
    "require_diffusers",
    "scheduler_timesteps",
]
