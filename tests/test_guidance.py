"""Guidance options, seeds and the trace, on a random-weight bundle."""

from __future__ import annotations

import math

import pytest
import torch

from engine.guidance import (
    GuidanceConfig,
    GuidanceError,
    Stabiliser,
    classifier_free,
    guidance_objective,
    per_sample_normalise,
    scale_at,
    unguided,
)
from engine.sampler import GuidedStepper, SamplingCancelled
from engine.trace import TraceOptions, cosine_per_sample


def test_config_round_trip_and_validation():
    config = GuidanceConfig(name="r", classifier="robust", scale=2.0, stabiliser="adam", classes=[1, 7])
    assert GuidanceConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="gradient_source must be one of"):
        GuidanceConfig(classifier="robust", gradient_source="x_1")
    with pytest.raises(ValueError, match="needs a classifier"):
        GuidanceConfig(method="classifier")
    with pytest.raises(ValueError, match="unknown guidance settings"):
        GuidanceConfig.from_dict({"name": "a", "scal": 1})
    with pytest.raises(ValueError, match="finite"):
        GuidanceConfig(classifier="robust", scale=float("nan"))


def test_objectives():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
    lp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(guidance_objective(logits, torch.tensor([0, 2]), "log_softmax"),
                               torch.stack([lp[0, 0], lp[1, 2]]))
    torch.testing.assert_close(guidance_objective(logits, torch.tensor([0, 2]), "logit"), torch.tensor([2.0, 3.0]))
    multi = guidance_objective(logits, torch.tensor([[0, 1], [1, 2]]), "log_softmax")
    torch.testing.assert_close(multi, torch.stack([lp[0, 0] + lp[0, 1], lp[1, 1] + lp[1, 2]]))


def test_stabilisers_follow_gradcheck_formulas_and_reset():
    g1, g2 = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]])
    ema = Stabiliser(GuidanceConfig(classifier="c", stabiliser="ema", ema_beta=0.9))
    ema(g1)
    torch.testing.assert_close(ema(g2), 0.9 * (0.1 * g1) + 0.1 * g2)
    adam = Stabiliser(GuidanceConfig(classifier="c", stabiliser="adam"))
    adam(g1)
    out = adam(g2)
    m = 0.9 * (0.1 * g1) + 0.1 * g2
    v = 0.999 * (0.001 * g1**2) + 0.001 * g2**2
    torch.testing.assert_close(out, m / (v.sqrt() + 1e-4))
    adam.reset()
    torch.testing.assert_close(adam(g1), (0.1 * g1) / ((0.001 * g1**2).sqrt() + 1e-4))
    corrected = Stabiliser(GuidanceConfig(classifier="c", stabiliser="adam", adam_bias_correction=True))
    torch.testing.assert_close(corrected(g1), g1 / (g1.abs() + 1e-4))


def test_normalisation_and_scale_schedules():
    g = torch.randn(3, 1, 4, 4)
    n = per_sample_normalise(g)
    torch.testing.assert_close(n.flatten(1).norm(dim=1), torch.ones(3))
    c = GuidanceConfig(classifier="c", scale=2.0, scale_schedule="linear_decay")
    assert scale_at(c, 9, 10) == pytest.approx(2.0) and scale_at(c, 0, 10) == pytest.approx(0.2)
    ramp = GuidanceConfig(classifier="c", scale=2.0, scale_schedule="linear_ramp")
    assert scale_at(ramp, 0, 10) == pytest.approx(2.0)


def test_cosine_per_sample():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(cosine_per_sample(a, b), torch.tensor([0.0, 1.0]))
    undefined = cosine_per_sample(torch.zeros(1, 2), torch.ones(1, 2))
    assert torch.isnan(undefined).all()


def test_shared_seeds_same_start_and_batch_independence(tiny_bundle):
    b = tiny_bundle
    configs = [unguided(), b.default_config("vanilla"), b.default_config("robust", scale=5.0)]
    res = b.sample(configs, [3, 7], [11, 12], respacing="5")
    # with zero scale a guided column is exactly the unguided one (same x_T, same noise)
    zero = b.sample([unguided(), b.default_config("vanilla", scale=0.0)], [3, 7], [11, 12], respacing="5")
    torch.testing.assert_close(zero.images["unguided"], zero.images["vanilla"])
    assert not torch.allclose(res.images["robust"], res.images["unguided"])
    # an image depends only on its own seed / label, not on the batch or other columns
    alone = b.sample([b.default_config("robust", scale=5.0)], [7], [12], respacing="5")
    torch.testing.assert_close(alone.images["robust"][0], res.images["robust"][1], atol=1e-5, rtol=0)


def test_trace_records_bounded_tensors_and_scalars(tiny_bundle):
    b = tiny_bundle
    configs = [b.default_config("vanilla"), b.default_config("robust", stabiliser="ema")]
    res = b.sample(configs, [1, 2, 3], [1, 2, 3], respacing="6",
                   trace=TraceOptions(record_every=4, float16=True, monitors=("vanilla", "robust")))
    trace = res.traces["robust"]
    assert trace.steps == [5, 4, 3, 2, 1, 0]
    assert [s.step for s in trace.snapshots] == [0, 4, 5]  # every 4th step and the last
    assert trace.snapshots[0].x_t.dtype == torch.float16
    cos = trace.series("cos_raw")
    assert cos.shape == (6, 3) and torch.isnan(cos[0]).all() and torch.isfinite(cos[1:]).all()
    assert ((cos[1:] >= -1.0001) & (cos[1:] <= 1.0001)).all()
    summary = trace.summary()
    assert set(summary) >= {"log_prob", "grad_norm", "cos_raw", "cos_applied", "monitor:vanilla"}
    assert math.isnan(summary["cos_raw"]["mean"][0]) and len(summary["grad_norm"]["mean"]) == 6
    # log p(y|x_t) of the guided column equals the monitor of the same classifier on x_t
    torch.testing.assert_close(trace.series("log_prob"), trace.series("monitor:robust"), atol=1e-4, rtol=1e-4)
    saved = trace.to_dict()
    assert saved["grad_norm"].shape == (6, 3)


def test_x0_sources_and_multiclass_and_cfg(tiny_bundle):
    b = tiny_bundle
    configs = [
        b.default_config("nonrobust", name="through", gradient_source="x0_through_denoiser"),
        b.default_config("nonrobust", name="detached", gradient_source="x0_detached", stabiliser="adam"),
        b.default_config("vanilla", name="multi", classes=(1, 2)),
        classifier_free(1.5),
        unguided("uncond", denoiser_mode="unconditional"),
    ]
    res = b.sample(configs, [4, 5], [1, 2], respacing="4", trace=TraceOptions())
    for name, images in res.images.items():
        assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all(), name
    assert torch.isfinite(res.traces["through"].series("grad_norm")).all()
    assert not torch.allclose(res.images["through"], res.images["detached"])
    with pytest.raises(ValueError, match="outside the classifier's range"):
        b.sample([b.default_config("vanilla", classes=(42,))], [1], [1], respacing="2")


def test_stabiliser_state_is_reset_between_trajectories(tiny_bundle):
    b = tiny_bundle
    config = b.default_config("vanilla", stabiliser="adam", scale=3.0)
    first = b.sample([config], [2], [9], respacing="4")
    second = b.sample([config], [2], [9], respacing="4")
    torch.testing.assert_close(first.images["vanilla"], second.images["vanilla"])
    stepper = GuidedStepper(b.denoiser, b.diffusion("4"), [config], b.guides)
    x = {"vanilla": torch.randn(1, 1, 28, 28)}
    stepper.step(x, 3, torch.tensor([9]), torch.zeros(1, 1, 28, 28))
    assert stepper.columns["vanilla"].stabiliser.m is not None
    stepper.reset()
    assert stepper.columns["vanilla"].stabiliser.m is None


def test_bad_inputs_are_clear_errors(tiny_bundle):
    b = tiny_bundle
    with pytest.raises(ValueError, match="class labels must lie"):
        b.sample([unguided()], [10], [1], respacing="2")
    with pytest.raises(ValueError, match="one seed per image"):
        b.sample([unguided()], [1, 2], [1], respacing="2")
    with pytest.raises(ValueError, match="available"):
        b.sample([GuidanceConfig(classifier="nope")], [1], [1], respacing="2")
    with pytest.raises(ValueError, match="every section needs at least one step"):
        b.sample([unguided()], [1], [1], respacing="0")
    with pytest.raises(ValueError, match="unique"):
        b.sample([unguided(), unguided()], [1], [1], respacing="2")


def test_nan_gradient_is_reported(tiny_bundle):
    b = tiny_bundle
    guide = b.guides["vanilla"]
    original = guide.net.out[2].c_proj.weight.data.clone()
    try:
        guide.net.out[2].c_proj.weight.data.fill_(float("nan"))
        with pytest.raises(GuidanceError, match="not finite"):
            b.sample([b.default_config("vanilla")], [1], [1], respacing="2")
    finally:
        guide.net.out[2].c_proj.weight.data.copy_(original)


def test_cancel_and_progress(tiny_bundle):
    calls = []
    with pytest.raises(SamplingCancelled):
        tiny_bundle.sample([unguided()], [1], [1], respacing="5", progress=lambda d, n: calls.append((d, n)),
                           should_stop=lambda: len(calls) >= 2)
    assert calls == [(1, 5), (2, 5)]


class ToyDenoiser(torch.nn.Module):
    """eps(x, t, y) = 0.1 x + e_y: the class shifts the prediction by a known constant."""

    num_classes = 3  # class 2 is the null label

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([0.3, -0.5, 0.05]), requires_grad=False)

    def forward(self, x, t, y):
        return 0.1 * x + self.shift[y].reshape(-1, 1, 1, 1)


def test_classifier_free_guidance_follows_its_formula():
    """eps~ = eps(x_t, null) + (1 + s) (eps(x_t, y) - eps(x_t, null)) (Ho & Salimans 2021, Eq. 6, w = s):
    checked through x0_hat = (x_t - sqrt(1 - abar_t) eps~) / sqrt(abar_t) on a toy denoiser."""
    from engine.diffusion import DiffusionConfig, create_diffusion

    diffusion = create_diffusion(DiffusionConfig(learn_sigma=False, timestep_respacing="10"))
    s, t_index = 1.5, 6
    configs = [classifier_free(s, name="cfg"), classifier_free(0.0, name="cfg0"), unguided("cond"),
               unguided("uncond", denoiser_mode="unconditional")]
    stepper = GuidedStepper(ToyDenoiser(), diffusion, configs, null_label=2, clip_denoised=False)
    x_t = torch.randn(2, 1, 4, 4)
    labels = torch.tensor([0, 1])
    out = stepper.step({c.name: x_t for c in configs}, t_index, labels, torch.zeros_like(x_t))
    eps_cond = 0.1 * x_t + torch.tensor([0.3, -0.5]).reshape(-1, 1, 1, 1)
    eps_null = 0.1 * x_t + 0.05
    abar = float(diffusion.alphas_cumprod[t_index])

    def x0(eps):
        return (x_t - (1 - abar) ** 0.5 * eps) / abar ** 0.5

    torch.testing.assert_close(out["cfg"].pred_x0, x0(eps_null + (1 + s) * (eps_cond - eps_null)))
    torch.testing.assert_close(out["cfg0"].pred_x0, x0(eps_cond))  # s = 0 is the conditional model
    torch.testing.assert_close(out["cond"].pred_x0, x0(eps_cond))
    torch.testing.assert_close(out["uncond"].pred_x0, x0(eps_null))
    assert out["cfg"].grad_applied is None  # classifier-free guidance adds no classifier gradient


@pytest.mark.filterwarnings("ignore::engine.sampler.GuidedDDIMWarning")  # a 10-step toy process, from t = 9
def test_ddpm_adds_sigma_g_to_the_mean_and_ddim_moves_the_score():
    """Algorithm 1: x_{t-1} = mu + Sigma g + sigma z; Algorithm 2: eps' = eps - sqrt(1 - abar_t) g."""
    from engine.diffusion import DiffusionConfig, create_diffusion
    from engine.guidance import Guide

    diffusion = create_diffusion(DiffusionConfig(learn_sigma=False, timestep_respacing="10"))
    weight = torch.randn(3, 16)

    class Linear(torch.nn.Module):
        out_channels = 3

        def forward(self, x, t):
            return x.flatten(1) @ weight.T

    config = GuidanceConfig(name="g", classifier="lin", scale=2.0)
    x_t, labels, z, t_index = torch.randn(2, 1, 4, 4), torch.tensor([0, 2]), torch.randn(2, 1, 4, 4), 5
    logits = x_t.flatten(1) @ weight.T
    grad_log_p = (weight[labels] - torch.softmax(logits, -1) @ weight).reshape(x_t.shape)  # d log softmax_y / dx
    t = torch.full((2,), t_index)
    for sampler in ("ddpm", "ddim"):
        stepper = GuidedStepper(ToyDenoiser(), diffusion, [config], {"lin": Guide(Linear())}, sampler=sampler,
                                null_label=2, clip_denoised=False)
        out = stepper.step({"g": x_t}, t_index, labels, z)["g"]
        torch.testing.assert_close(out.grad_raw, grad_log_p, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.grad_applied, 2.0 * out.grad_raw)
        eps = 0.1 * x_t + torch.tensor([0.3, 0.05]).reshape(-1, 1, 1, 1)
        plain = diffusion.p_mean_variance(eps, x_t, t, clip_denoised=False)
        if sampler == "ddpm":
            expected = plain["mean"] + plain["variance"] * out.grad_applied + plain["log_variance"].mul(0.5).exp() * z
        else:
            abar = float(diffusion.alphas_cumprod[t_index])
            guided = eps - (1 - abar) ** 0.5 * out.grad_applied
            x0 = (x_t - (1 - abar) ** 0.5 * guided) / abar ** 0.5
            torch.testing.assert_close(out.pred_x0, x0, rtol=1e-5, atol=1e-5)
            expected = diffusion.ddim_step({"pred_xstart": x0}, x_t, t, z)
        torch.testing.assert_close(out.sample, expected, rtol=1e-5, atol=1e-5)
