"""Precision: fp32 stays the exact default, bf16 runs the denoiser in bfloat16 and gives
samples close to fp32 on the same seed, and a bad precision is one clear error at every
front door. Also the speed work's exact rewrites and the benchmark's baseline."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F

import engine.precision as precision_mod
from engine.bundles import load_bundle
from engine.precision import PrecisionError, check_precision, supported_precisions


# --------------------------------------------------------------------------- errors
def test_unknown_precision_names_the_allowed_values():
    with pytest.raises(PrecisionError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16"):
        check_precision("fp8", "cpu")
    assert check_precision(None, "cpu") == "fp32"
    assert check_precision(" BF16 ", "cpu") == "bf16"


def test_precision_the_device_cannot_run_names_what_it_can(monkeypatch):
    monkeypatch.setattr(precision_mod, "_cpu_supports", lambda p: p == "bf16")
    assert supported_precisions("cpu") == ("fp32", "bf16")
    with pytest.raises(PrecisionError, match=r"fp16 cannot run on cpu.*this device allows fp32, bf16"):
        check_precision("fp16", "cpu")
    assert supported_precisions("meta") == ("fp32",)


def test_bundle_refuses_a_bad_precision(tiny_bundle):
    with pytest.raises(PrecisionError, match="choose one of fp32, bf16, fp16"):
        tiny_bundle.to("cpu", "half")
    assert tiny_bundle.precision == "fp32"


def test_front_doors_exit_with_the_message(monkeypatch, tiny_bundle_dir, tmp_path, capsys):
    import argparse

    from survey.cli import main as survey_main
    from train.model_args import add_model_args, open_from_args

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err and "fp32" in parser.format_help()
    monkeypatch.setattr(precision_mod, "_cpu_supports", lambda p: False)  # a CPU without bf16 / fp16
    args = parser.parse_args(["--bundle", str(tiny_bundle_dir), "--precision", "bf16"])
    with pytest.raises(SystemExit, match="bf16 cannot run on cpu; this device allows fp32"):
        open_from_args(args, "cpu")
    with pytest.raises(SystemExit, match="bf16 cannot run on cpu; this device allows fp32"):
        survey_main(["create", "--db", str(tmp_path / "s.db"), "--name", "x", "--from-bundle", str(tiny_bundle_dir),
                     "--pairs", "1", "--precision", "bf16", "--device", "cpu"])


# --------------------------------------------------------------------------- what runs
def _torso_convs(net) -> list[torch.nn.Module]:
    return [m for name, m in net.named_modules()
            if name.startswith(("input_blocks.", "middle_block.", "output_blocks."))
            and isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]


def _conv_output_dtypes(nets, run) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype)) for net in nets for m in _torso_convs(net)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_reduced_copy_casts_the_torso_once_and_leaves_the_network_alone(tiny_bundle):
    from engine.precision import reduced_copy

    net = tiny_bundle.denoiser
    before = {k: v.clone() for k, v in net.state_dict().items()}
    twin = reduced_copy(net, "bf16")
    assert twin is not net and reduced_copy(net, "bf16") is twin  # cached
    assert reduced_copy(net, "fp32") is net
    assert {m.weight.dtype for m in _torso_convs(twin)} == {torch.bfloat16}
    assert twin.out[-1].weight.dtype == torch.float32 and twin.time_embed[0].weight.dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # float32 weights untouched
    conv = _torso_convs(net)[0]
    weight = conv.weight.detach().clone()
    assert torch.equal(_torso_convs(twin)[0].weight, weight.bfloat16())
    with torch.no_grad():  # new weights (a reload): the next call builds a new copy from them
        conv.weight.mul_(2)
    try:
        fresh = reduced_copy(net, "bf16")
        assert fresh is not twin and torch.equal(_torso_convs(fresh)[0].weight, (2 * weight).bfloat16())
    finally:
        with torch.no_grad():
            conv.weight.copy_(weight)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_default_is_fp32_and_bf16_runs_denoiser_and_guide_torsos_in_bfloat16(tiny_bundle):
    from engine.precision import reduced_copy

    denoiser, guide = tiny_bundle.denoiser, tiny_bundle.guides["vanilla"].net

    def conv_dtypes(precision: str, watch, **kw) -> set[torch.dtype]:
        """Sample at ``precision`` and give the output dtypes of the torso convs of the
        networks ``watch()`` names once the bundle is set to that precision."""
        tiny_bundle.to("cpu", precision)
        try:
            seen = _conv_output_dtypes(watch(), lambda: results.append(tiny_bundle.sample(
                [tiny_bundle.default_config("vanilla")], [1], [0], respacing="2", **kw)))
        finally:
            tiny_bundle.to("cpu", "fp32")
        assert results[-1].settings["precision"] == precision
        assert results[-1].images["vanilla"].dtype == torch.float32
        return seen

    results: list = []
    assert tiny_bundle.precision == "fp32"
    assert conv_dtypes("fp32", lambda: [denoiser, guide]) == {torch.float32}
    # what a bf16 run uses: the cached copies (the same objects the sampler asks for)
    assert conv_dtypes("bf16", lambda: [reduced_copy(denoiser, "bf16")]) == {torch.bfloat16}
    assert conv_dtypes("bf16", lambda: [reduced_copy(guide, "bf16")]) == {torch.bfloat16}
    # the float32 nets sit idle (copies made first, so they do not inherit the test's hooks)
    assert conv_dtypes("bf16", lambda: [reduced_copy(denoiser, "bf16"), reduced_copy(guide, "bf16")]
                       and [denoiser, guide]) == set()
    assert results[-1].settings["guide_precision"] == "bf16"
    # the guide can stay float32 (the benchmark compares both)
    assert conv_dtypes("bf16", lambda: [guide], guide_precision="fp32") == {torch.float32}
    assert results[-1].settings["guide_precision"] == "fp32"


def test_switching_precision_back_to_fp32_is_exact(tiny_bundle):
    """A bf16 run leaves the bundle's float32 networks as they were (the CUDA path used to
    convert the denoiser in place and back, rounding its weights to bf16; no device converts
    in place now, so this holds on the CPU and the GPU alike)."""
    configs = [tiny_bundle.default_config("vanilla")]
    first = tiny_bundle.sample(configs, [2], [3], respacing="3")
    tiny_bundle.to("cpu", "bf16")
    tiny_bundle.sample(configs, [2], [3], respacing="3")
    tiny_bundle.to("cpu", "fp32")
    assert torch.equal(tiny_bundle.sample(configs, [2], [3], respacing="3").images["vanilla"], first.images["vanilla"])


def test_half_precision_norm_softmax_and_pooling_keep_float32_statistics():
    """On the CPU the 16-bit torso skips the reference's cast up and back around group norm
    and softmax (the kernels accumulate in float32) and pools 2x2 from strided views: the
    results equal the reference's way to within one rounding of the 16-bit output; float32
    inputs give the reference's values exactly."""
    from engine.nets.layers import Downsample, GroupNorm32, _attention

    torch.manual_seed(0)
    x = torch.randn(4, 64, 8, 8) * 3 + 1
    norm = GroupNorm32(32, 64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        xb = x.bfloat16()
        got = norm(xb)
        want = F.group_norm(xb.float(), 32, norm.weight, norm.bias, norm.eps).bfloat16()
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=1e-5, rtol=2 ** -7)  # one bf16 ulp
        assert torch.equal(norm(x), F.group_norm(x, 32, norm.weight, norm.bias, norm.eps))
        q, k, v = (torch.randn(6, 16, 50) * 2 for _ in range(3))
        scores = torch.einsum("bct,bcs->bts", q.bfloat16() * 0.5, k.bfloat16() * 0.5)
        weight = torch.softmax(scores.float(), dim=-1).bfloat16()
        torch.testing.assert_close(_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float(),
                                   torch.einsum("bts,bcs->bct", weight, v.bfloat16()).float(), atol=1e-5, rtol=2 ** -7)
        down = Downsample(64, use_conv=False)
        torch.testing.assert_close(down(xb).float(), F.avg_pool2d(xb.float(), 2), atol=0.02, rtol=2 ** -7)
        assert torch.equal(down(x), F.avg_pool2d(x, 2))


def test_bf16_samples_are_close_to_fp32_on_the_same_seed():
    """On the shipped models, 10 DDPM steps: bf16 differs from fp32 (it did run in bf16)
    by a small fraction of the difference between two seeds (measured: mean |diff| about
    0.007 against 0.25 between seeds, guides in bf16 too)."""
    bundle = load_bundle()
    configs = [bundle.default_config("vanilla"), bundle.default_config("robust")]
    labels, seeds = [3, 1, 4, 1], [0, 1, 2, 3]
    fp32 = bundle.sample(configs, labels, seeds, respacing="10")
    other = bundle.sample(configs, labels, [10, 11, 12, 13], respacing="10")
    bundle.to("cpu", "bf16")
    try:
        bf16 = bundle.sample(configs, labels, seeds, respacing="10")
    finally:
        bundle.to("cpu", "fp32")
    again = bundle.sample(configs, labels, seeds, respacing="10")
    for name in ("vanilla", "robust"):
        assert torch.equal(again.images[name], fp32.images[name])  # fp32 is deterministic and exact
        diff = (bf16.images[name] - fp32.images[name]).abs().flatten(1).mean(1)
        between_seeds = (other.images[name] - fp32.images[name]).abs().mean()
        assert float(diff.min()) > 0, "bf16 gave exactly the fp32 samples: the fast path did not run"
        assert float(diff.max()) < 0.04, diff
        assert float(diff.max()) < 0.15 * float(between_seeds)


# --------------------------------------------------------------------------- exact rewrites
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 64, 8, 8)])
def test_nearest_upsample_equals_interpolate(shape):
    from engine.nets.layers import upsample_nearest_2x

    x = torch.randn(*shape, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    a, b = upsample_nearest_2x(x), F.interpolate(y, scale_factor=2, mode="nearest")
    assert torch.equal(a, b)
    with torch.no_grad():  # sampling: the strided-copy fill, fp32 and 16 bits
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(upsample_nearest_2x(x.to(dtype)), F.interpolate(y.to(dtype), scale_factor=2, mode="nearest"))
    w = torch.randn_like(a)
    # the backward sums each 2x2 block in another order: equal to float32 rounding
    torch.testing.assert_close(torch.autograd.grad((a * w).sum(), x)[0], torch.autograd.grad((b * w).sum(), y)[0],
                               atol=1e-5, rtol=1e-6)


# --------------------------------------------------------------------------- survey progress
def test_generation_progress_counts_images_and_shows_rate_and_eta():
    from survey.progress import GenerationProgress

    stream = io.StringIO()
    bar = GenerationProgress(2, stream=stream)
    bar(0, 4)
    bar(1.5, 4)
    assert bar.bar.n == 3 and bar.bar.total == 8
    bar(4, 4)
    bar(4, 4)  # the caller's last report after the last step's: no second bar
    text = stream.getvalue()
    assert "8/8" in text and "img/s" in text and bar.bar is None
    assert text.count("0/8") == 1


def test_units_from_bundle_reports_steps_within_a_batch(tiny_bundle):
    from survey.create import MethodSpec, units_from_bundle

    calls = []
    units_from_bundle(tiny_bundle, [MethodSpec.parse("vanilla:1"), MethodSpec.parse("robust:1")], 3, batch_size=2,
                      respacing="2", progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert any(0 < d < 2 for d, _ in calls), calls  # fractional progress inside the first batch
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --------------------------------------------------------------------------- the benchmark
def test_bench_baseline_loop_equals_the_engine(reference):
    """The benchmark's guided-diffusion-style loop and the engine do the same arithmetic:
    equal samples from the same x_T and noise, and the same FLOP count per step."""
    from bench.baseline import BaselineDiffusion, guided_ddpm_loop
    from bench.roofline import count_flops
    from engine.diffusion import DiffusionConfig, create_diffusion
    from engine.guidance import classifier_guided
    from engine.nets import EncoderUNetModel, UNetModel
    from engine.sampler import RecordedNoise, sample

    nets = []
    for name, cls in (("tiny_unet.pt", UNetModel), ("tiny_classifier.pt", EncoderUNetModel)):
        fx = reference(name)
        net = cls(**json.loads(fx["config_json"])).eval()
        net.load_state_dict(fx["state_dict"])
        nets.append(net)
    unet, clf = nets
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 7])
    drawn: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        drawn.append(torch.randn_like(x))
        return drawn[-1]

    torch.manual_seed(0)
    base = guided_ddpm_loop(unet, clf, BaselineDiffusion(respacing="3"), x_T, y, 2.0, noise_fn=record)
    diffusion = create_diffusion(DiffusionConfig(timestep_respacing="3"))
    configs = [classifier_guided("c", 2.0)]
    ours = sample(unet, diffusion, configs, y, noise=RecordedNoise(x_T, drawn), guides={"c": clf}).images["c"]
    torch.testing.assert_close(ours, base, atol=1e-5, rtol=0)
    assert not torch.equal(base, x_T)
    flops_engine, _ = count_flops(lambda: sample(unet, diffusion, configs, y, noise=RecordedNoise(x_T, drawn),
                                                 guides={"c": clf}))
    flops_base, _ = count_flops(lambda: guided_ddpm_loop(unet, clf, BaselineDiffusion(respacing="3"), x_T, y, 2.0))
    assert flops_engine == flops_base > 0


def test_flop_counter_counts_a_matmul():
    from bench.roofline import count_flops

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    total, per_op = count_flops(lambda: a @ b)
    assert total == 2 * 8 * 16 * 4 and per_op == {"mm": total}


def test_denoiser_row_chunks_change_nothing_but_speed(tiny_bundle):
    """The CPU splits the batched denoiser call into chunks; every row is computed on its own."""
    from engine.sampler import sample

    configs = [tiny_bundle.default_config("vanilla"), tiny_bundle.default_config("robust")]
    runs = [sample(tiny_bundle.denoiser, tiny_bundle.diffusion("3"), configs, [1, 2, 3], seeds=[5, 6, 7],
                   guides=tiny_bundle.guides, null_label=tiny_bundle.null_label, denoiser_rows=rows)
            for rows in (1, 4, 1000)]
    for name in ("vanilla", "robust"):
        for other in runs[1:]:
            torch.testing.assert_close(other.images[name], runs[0].images[name], atol=1e-5, rtol=0)


def test_lab_command_line_exits_with_the_message(monkeypatch, tiny_bundle_dir):
    import argparse

    from app.__main__ import open_bundle

    monkeypatch.setattr(precision_mod, "_cpu_supports", lambda p: False)
    args = argparse.Namespace(bundle=str(tiny_bundle_dir), denoiser=None, guide=[], preset_set=None,
                              diffusers_dir=None, device="cpu", precision="bf16")
    with pytest.raises(SystemExit, match="bf16 cannot run on cpu; this device allows fp32"):
        open_bundle(args)
    args.precision = "fp32"
    assert open_bundle(args).precision == "fp32"


def test_reduced_copy_shares_what_it_does_not_cast_and_follows_the_mode(tiny_bundle):
    from engine.precision import reduced_copy, release_reduced_copies

    net = tiny_bundle.denoiser
    twin = reduced_copy(net, "bf16")
    # only the torso is new memory: the time embedding (float32) is the network's own storage
    assert twin.time_embed[0].weight.data_ptr() == net.time_embed[0].weight.data_ptr()
    assert _torso_convs(twin)[0].weight.data_ptr() != _torso_convs(net)[0].weight.data_ptr()
    net.train()
    try:
        trained = reduced_copy(net, "bf16")
        assert trained is not twin and trained.training  # a copy made in eval mode is not reused
    finally:
        net.eval()
    assert not reduced_copy(net, "bf16").training
    release_reduced_copies(net)
    assert reduced_copy(net, "bf16") is not twin


def test_bundle_to_releases_the_copies_and_every_shipped_guide_casts(tiny_bundle):
    from engine.precision import converts_torso, reduced_copy

    for name, guide in tiny_bundle.guides.items():  # the clean (time-independent) guide included
        assert converts_torso(guide.net), name
    twin = reduced_copy(tiny_bundle.denoiser, "bf16")
    tiny_bundle.to("cpu", "bf16")
    assert reduced_copy(tiny_bundle.denoiser, "bf16") is not twin
    tiny_bundle.to("cpu", "fp32")


def test_fp16_keeps_the_guides_in_float32(monkeypatch, tiny_bundle):
    """fp16 has no room for an unscaled input gradient: its guides stay float32 unless asked."""
    from engine.sampler import GuidedStepper

    monkeypatch.setattr(precision_mod, "_cpu_supports", lambda p: True)
    configs = [tiny_bundle.default_config("vanilla")]
    stepper = GuidedStepper(tiny_bundle.denoiser, tiny_bundle.diffusion("2"), configs, tiny_bundle.guides,
                            precision="fp16")
    assert stepper.guide_precision == "fp32"
    assert stepper.guides["vanilla"].net is tiny_bundle.guides["vanilla"].net
    assert {m.weight.dtype for m in _torso_convs(stepper.denoiser)} == {torch.float16}
    bf16 = GuidedStepper(tiny_bundle.denoiser, tiny_bundle.diffusion("2"), configs, tiny_bundle.guides,
                         precision="bf16")
    assert bf16.guide_precision == "bf16" and bf16.guides["vanilla"].net is not tiny_bundle.guides["vanilla"].net


def test_odd_sizes_and_autocast_take_the_reference_kernels():
    """The CPU 16-bit shortcuts apply only where they are the same computation: an odd
    feature map pools with torch's kernel (it drops the last row and column), and under
    autocast (training with --amp) norm and softmax keep the reference's float32 casts, so
    recorded training commands give the same numbers."""
    from engine.nets.layers import Downsample, GroupNorm32

    down = Downsample(8, use_conv=False)
    x = torch.randn(2, 8, 7, 7).bfloat16()
    assert torch.equal(down(x), F.avg_pool2d(x, 2))
    norm = GroupNorm32(4, 8)
    y = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = y.bfloat16()
        got = norm(yb)
        want = F.group_norm(yb.float(), 4, norm.weight, norm.bias, norm.eps).type(torch.bfloat16)
    assert torch.equal(got, want)
