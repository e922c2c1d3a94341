"""The networks against the guided-diffusion reference: every published layout, and the
tiny random-weight checkpoints' outputs (the compatibility contract)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import reference_path
from engine.nets import EncoderUNetModel, UNetModel, timestep_embedding
from engine.nets.flags import create_classifier, create_denoiser

# Flags beyond the README's that our builder needs for the robust repo's CIFAR models
# (their constructors hard-code 10 classes).
EXTRA_FLAGS = {
    "robust_cifar10_classifier": " --classifier_num_classes 10",
    "robust_cifar10_diffusion": " --num_classes 10 --attention_resolutions 16,8",
}


def _layouts() -> dict:
    return json.loads(reference_path("state_dict_layouts.json").read_text())["configs"]


def _layout_names() -> list[str]:
    try:
        return list(_layouts())
    except BaseException:  # collected without the fixture: one placeholder case that skips / fails
        return ["<state_dict_layouts.json missing>"]


@pytest.mark.parametrize("name", _layout_names())
def test_published_layout_built_from_readme_flags(name):
    configs = _layouts()
    config = configs[name]
    flags = config["readme_flags"] + EXTRA_FLAGS.get(name, "")
    with torch.device("meta"):
        net = create_classifier(flags) if "classifier" in name else create_denoiser(flags)
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    expected = [(entry[0], entry[1]) for entry in config["state_dict"]]
    assert got == expected
    assert sum(p.numel() for p in net.parameters()) == config["total_parameters"]


def _load_unet(fixture: dict, state: dict) -> UNetModel:
    model = UNetModel(**json.loads(fixture["config_json"])).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("name", ["tiny_unet.pt", "tiny_unet_newattn.pt", "tiny_unet_convresample.pt"])
def test_unet_forward_matches_reference(reference, name):
    fixture = reference(name)
    state = fixture.get("state_dict") or reference("tiny_unet.pt")["state_dict"]
    model = _load_unet(fixture, state)
    with torch.no_grad():
        out = model(fixture["x"], fixture["timesteps"], fixture["y"])
    torch.testing.assert_close(out, fixture["out"], atol=1e-4, rtol=1e-4)
    emb = timestep_embedding(fixture["timesteps"], model.model_channels)
    torch.testing.assert_close(emb, fixture["timestep_embedding"], atol=1e-6, rtol=0)


def test_unet_fractional_timesteps_and_fp16_torso(reference):
    fixture = reference("tiny_unet.pt")
    model = _load_unet(fixture, fixture["state_dict"])
    with torch.no_grad():
        out = model(fixture["x"], fixture["timesteps_float"], fixture["y"])
    torch.testing.assert_close(out, fixture["out_timesteps_float"], atol=1e-4, rtol=1e-4)
    model.convert_to_fp16()
    conv = model.input_blocks[1][0].in_layers[2]
    assert conv.weight.dtype == torch.float16 and model.out[2].weight.dtype == torch.float32
    with torch.no_grad():
        half = model(fixture["x"], fixture["timesteps"], fixture["y"])
    scale = fixture["out_fp16_torso_cpu"].abs().max()
    assert (half - fixture["out_fp16_torso_cpu"]).abs().max() <= 1e-2 * scale


def test_classifier_logits_and_guidance_gradient(reference):
    fixture = reference("tiny_classifier.pt")
    clf = EncoderUNetModel(**json.loads(fixture["config_json"])).eval()
    clf.load_state_dict(fixture["state_dict"], strict=True)
    for t_key, logit_key, grad_key in [("timesteps", "logits", "grad_log_prob"),
                                       ("timesteps_float", "logits_timesteps_float", "grad_log_prob_timesteps_float")]:
        x = fixture["x"].clone().requires_grad_(True)
        logits = clf(x, fixture[t_key])
        torch.testing.assert_close(logits.detach(), fixture[logit_key], atol=1e-4, rtol=1e-4)
        selected = torch.log_softmax(logits, -1)[torch.arange(4), fixture["y"]]
        grad = torch.autograd.grad(selected.sum(), x)[0]
        torch.testing.assert_close(grad, fixture[grad_key], atol=1e-5, rtol=1e-3)


def test_wrong_labels_and_shapes_are_clear_errors(reference):
    fixture = reference("tiny_unet.pt")
    model = _load_unet(fixture, fixture["state_dict"])
    with pytest.raises(ValueError, match="class labels must lie"):
        model(fixture["x"], fixture["timesteps"], torch.tensor([0, 1, 2, 99]))
    with pytest.raises(ValueError, match="expected images shaped"):
        model(fixture["x"][:, :1], fixture["timesteps"], fixture["y"])
    with pytest.raises(ValueError, match="class-conditional"):
        model(fixture["x"], fixture["timesteps"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func's own use
@pytest.mark.parametrize("shape", [(3, 32, 32, 32), (2, 64, 16, 16), (4, 8, 8, 6)])
def test_cpu_2x2_mean_pooling_equals_torch_kernel_bit_for_bit(shape):
    """The CPU float32 2x2 average pooling of the networks (four strided views added in
    the kernel's order, engine.nets.layers._Mean2x2) gives torch's avg_pool2d values and
    gradients exactly, so the reference fixtures and the guided-diffusion-style benchmark
    loop stay equal bit for bit."""
    import torch.nn.functional as F

    from engine.nets.layers import Downsample

    down = Downsample(shape[1], use_conv=False)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_(True)
    g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=torch.Generator().manual_seed(2))
    got, want = down(x), F.avg_pool2d(x, 2)
    assert got.grad_fn is not None and "Mean2x2" in type(got.grad_fn).__name__  # the fast path did run
    assert torch.equal(got, want)
    assert torch.equal(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
    odd = torch.randn(2, shape[1], 7, 7)
    assert torch.equal(down(odd), F.avg_pool2d(odd, 2))  # odd sizes: the kernel (drops the last row / column)
    # forward-mode AD and torch.func (per-sample gradients) work as they do through the kernel
    import torch.autograd.forward_ad as fwAD

    plain = x.detach()
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(down(fwAD.make_dual(plain, g.repeat_interleave(2, -1).repeat_interleave(2, -2)))).tangent
    assert torch.equal(tangent, F.avg_pool2d(g.repeat_interleave(2, -1).repeat_interleave(2, -2), 2))
    per_sample = torch.func.vmap(torch.func.grad(lambda v: down(v[None]).sin().sum()))(plain)
    want = torch.stack([torch.func.grad(lambda v: F.avg_pool2d(v[None], 2).sin().sum())(v) for v in plain])
    assert torch.equal(per_sample, want)
