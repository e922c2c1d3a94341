"""The diffusion process and the guided sampler against the reference's recorded values
and whole DDPM / DDIM trajectories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.diffusion import DiffusionConfig, create_diffusion, named_beta_schedule, space_timesteps
from engine.guidance import classifier_guided
from engine.nets import EncoderUNetModel, UNetModel
from engine.sampler import GuidedStepper, RecordedNoise, sample


def x0_amplification(diffusion, t: torch.Tensor) -> float:
    """max(1, sqrt(1/abar_t - 1)) over ``t``: how much an error in the network's eps grows in
    the predicted x0 (Ho et al. 2020, Eq. 15 inverted), the tolerance factor for x0 checks."""
    factor = torch.as_tensor(diffusion.arrays["sqrt_recipm1_alphas_cumprod"])[t.long()].max()
    return max(1.0, float(factor))


@pytest.fixture(scope="module")
def nets(reference):
    unet_fx, clf_fx = reference("tiny_unet.pt"), reference("tiny_classifier.pt")
    unet = UNetModel(**json.loads(unet_fx["config_json"])).eval()
    unet.load_state_dict(unet_fx["state_dict"])
    clf = EncoderUNetModel(**json.loads(clf_fx["config_json"])).eval()
    clf.load_state_dict(clf_fx["state_dict"])
    return unet, clf


def test_schedules_and_respacing(reference):
    fx = reference("tiny_diffusion_process.pt")
    for spec, kept in fx["space_timesteps"].items():
        assert space_timesteps(1000, spec) == list(kept), spec
    np.testing.assert_allclose(named_beta_schedule("linear", 1000), fx["base_betas_linear_1000"].numpy(), atol=1e-12)
    np.testing.assert_allclose(named_beta_schedule("cosine", 1000), fx["base_betas_cosine_1000"].numpy(), atol=1e-12)
    cos250 = create_diffusion(DiffusionConfig(noise_schedule="cosine", timestep_respacing="250"))
    np.testing.assert_allclose(cos250.betas, fx["cosine_250_betas"].numpy(), atol=1e-12)
    np.testing.assert_allclose(cos250.alphas_cumprod, fx["cosine_250_alphas_cumprod"].numpy(), atol=1e-12)
    base = create_diffusion(DiffusionConfig())
    torch.testing.assert_close(base.q_sample(fx["x_start"], fx["q_t_base"], fx["noise"]), fx["q_sample_base"],
                               atol=1e-5, rtol=0)


def test_bad_respacing_is_a_clear_error():
    with pytest.raises(ValueError, match="no integer stride"):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="cannot take"):
        space_timesteps(10, "20")
    with pytest.raises(ValueError, match="bad respacing"):
        space_timesteps(1000, "fast")


@pytest.mark.parametrize("key,respacing", [("r10", "10"), ("rddim10", "ddim10")])
def test_process_values(reference, nets, key, respacing):
    fx = reference("tiny_diffusion_process.pt")
    rec = fx[key]
    unet, clf = nets
    diffusion = create_diffusion(DiffusionConfig(timestep_respacing=respacing))
    for name, array in rec["arrays"].items():
        np.testing.assert_allclose(diffusion.arrays[name], array.numpy(), atol=1e-12, err_msg=name)
    assert diffusion.timestep_map.tolist() == list(rec["timestep_map"])
    x, t, y = fx["x_t"], fx["t"], fx["y"]
    net_t = diffusion.network_timesteps(t)
    assert net_t.tolist() == rec["model_timesteps_seen"].tolist() == rec["classifier_timesteps_seen"].tolist()
    with torch.no_grad():
        model_out = unet(x, net_t, y)
    if "model_output" in rec:
        torch.testing.assert_close(model_out, rec["model_output"], atol=1e-4, rtol=0)
    out = diffusion.p_mean_variance(model_out, x, t, clip_denoised=True)
    for name in ("mean", "variance", "log_variance"):
        torch.testing.assert_close(out[name], rec["p_mean_variance"][name], atol=1e-4, rtol=0, msg=name)
    # x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps: the network's rounding (which depends on the thread count)
    # reaches x0 multiplied by sqrt(1/abar - 1), up to ~200 at the noisiest steps
    torch.testing.assert_close(out["pred_xstart"], rec["p_mean_variance"]["pred_xstart"], rtol=0,
                               atol=1e-4 * x0_amplification(diffusion, t), msg="pred_xstart")
    if "p_mean_variance_noclip" in rec:
        noclip = diffusion.p_mean_variance(model_out, x, t, clip_denoised=False)
        for name in ("mean", "pred_xstart"):  # unclipped, x0's amplified rounding reaches the mean too
            torch.testing.assert_close(noclip[name], rec["p_mean_variance_noclip"][name], rtol=0,
                                       atol=1e-4 * x0_amplification(diffusion, t), msg=name)
    x_in = x.clone().requires_grad_(True)
    selected = torch.log_softmax(clf(x_in, net_t), -1)[torch.arange(len(y)), y]
    grad = torch.autograd.grad(selected.sum(), x_in)[0]
    torch.testing.assert_close(grad, rec["cond_grad_scale1"], atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(diffusion.condition_mean(out, grad), rec["condition_mean"], atol=1e-4, rtol=0)
    score = diffusion.condition_score(out, x, t, grad)
    torch.testing.assert_close(score["pred_xstart"], rec["condition_score"]["pred_xstart"], rtol=0,
                               atol=1e-4 * x0_amplification(diffusion, t))
    torch.testing.assert_close(score["mean"], rec["condition_score"]["mean"], atol=1e-4, rtol=0)
    torch.testing.assert_close(diffusion.q_sample(fx["x_start"], t, fx["noise"]), rec["q_sample"], atol=1e-5, rtol=0)
    if "q_posterior" in rec:
        mean, var, log_var = diffusion.q_posterior_mean_variance(fx["x_start"], x, t)
        torch.testing.assert_close(mean, rec["q_posterior"]["mean"], atol=1e-5, rtol=0)
        torch.testing.assert_close(var.expand_as(x), rec["q_posterior"]["variance"], atol=1e-6, rtol=0)
        torch.testing.assert_close(log_var.expand_as(x), rec["q_posterior"]["log_variance_clipped"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("key,sampler", [("p_sample", "ddpm"), ("ddim", "ddim")])
def test_guided_trajectory_every_step(reference, nets, key, sampler):
    """Teacher-forced: feed each recorded x_t and noise, compare the step's outputs."""
    fx = reference("tiny_guided_sample.pt")
    rec = fx[key]
    unet, clf = nets
    diffusion = create_diffusion(DiffusionConfig(timestep_respacing=rec["respacing"]))
    config = classifier_guided("reference", float(fx["classifier_scale"]))
    stepper = GuidedStepper(unet, diffusion, [config], {"reference": clf}, sampler=sampler)
    steps = len(rec["step_indices"])
    for k in range(steps):
        t_index = int(rec["step_indices"][k])
        assert int(diffusion.network_timesteps(torch.tensor([t_index]))) == int(rec["model_timesteps"][k])
        out = stepper.step({"reference": rec["x_t"][k]}, t_index, fx["y"], rec["noise"][k])["reference"]
        expected_next = rec["x_t"][k + 1] if k + 1 < steps else rec["final_sample"]
        torch.testing.assert_close(out.grad_applied, rec["cond_grad"][k], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(out.pred_x0, rec["pred_xstart"][k], atol=1e-4 * x0_amplification(
            diffusion, torch.tensor([t_index])), rtol=0)
        torch.testing.assert_close(out.sample, expected_next, atol=1e-4, rtol=0)


@pytest.mark.parametrize("key,sampler", [("p_sample", "ddpm"), ("ddim", "ddim")])
def test_guided_trajectory_full_loop(reference, nets, key, sampler):
    """Free-running from x_T with the recorded noises injected."""
    fx = reference("tiny_guided_sample.pt")
    rec = fx[key]
    unet, clf = nets
    diffusion = create_diffusion(DiffusionConfig(timestep_respacing=rec["respacing"]))
    config = classifier_guided("reference", float(fx["classifier_scale"]))
    result = sample(unet, diffusion, [config], fx["y"], noise=RecordedNoise(fx["x_T"], rec["noise"]),
                    guides={"reference": clf}, sampler=sampler)
    torch.testing.assert_close(result.images["reference"], rec["final_sample"], atol=2e-3, rtol=0)
