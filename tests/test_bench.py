"""``python -m bench.sampling`` runs every section end to end on tiny settings and reports
ratios against its baseline (timings themselves are not asserted: the benchmark is the
measurement, not a test)."""

from __future__ import annotations

import json

from bench.sampling import main


def test_bench_runs_every_section(tmp_path, tiny_bundle_dir, reference, capsys):
    reference("tiny_unet.pt")  # skips (fails under CI) without the shared fixtures
    out = tmp_path / "bench.json"
    main(["--bundle", str(tiny_bundle_dir), "--batch", "2", "--steps", "2", "--repeats", "1", "--survey-pairs", "2",
          "--survey-batch", "2", "--survey-cores", "2", "--stability-steps", "2", "--precisions", "fp32", "--json", str(out)])
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["machine"]["matmul_gflops"]["fp32"] > 0 and data["machine"]["threads"] == 1
    tiny = data["tiny"]
    assert tiny["equality"]["max_abs_diff_engine_vs_baseline"] == 0  # the same arithmetic, bit for bit
    # the baseline also recomputes its attention blocks in the backward (guided-diffusion's checkpoint)
    assert tiny["baseline_gflop_per_step"] > tiny["gflop_per_guided_step"] > 0
    assert tiny["baseline_gflop_by_op"]["convolution"] > tiny["gflop_by_op"]["convolution"]
    paths = {r["path"]: r for r in tiny["rows"]}
    assert paths["guided-diffusion-style loop (the baseline), 1 method"]["speedup_vs_baseline"] == 1.0
    assert {"engine fp32, 1 method", "engine fp32, 2 methods side by side", "the same loop on the engine's networks",
            "the same loop on the engine's networks, freed memory kept",
            "engine fp32, freed memory returned (RCG_KEEP_FREED_MEMORY=0)"} <= set(paths)
    assert all(len(r["runs"]["cpu"]) == 1 and r["cpu_s"] > 0 and r["page_faults_per_step"] >= 0 for r in paths.values())
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":  # each row ran with its allocator setting
        assert {name for name, r in paths.items() if not r["freed_memory_kept"]} == {
            "guided-diffusion-style loop (the baseline), 1 method", "the same loop on the engine's networks",
            "engine fp32, freed memory returned (RCG_KEEP_FREED_MEMORY=0)"}
    side = paths["engine fp32, 2 methods side by side"]  # against the baseline run twice, same round
    assert side["speedup_vs_baseline"] == 2 * paths["guided-diffusion-style loop (the baseline), 1 method"]["cpu_s"] / side["cpu_s"]
    assert not any("bf16" in p for p in paths)  # --precisions fp32 (bf16 is tested in test_precision.py)
    assert set(data["lab"]["seconds"]) == {"fp32"} and len(data["lab"]["columns"]) >= 1
    assert set(data["lab"]["views"]["seconds"]) == {"inspector", "stability"}
    assert "lab gradient inspector" in text and "Stability run" in text
    survey = data["survey"]["wall_seconds"]
    assert set(survey) == {"fp32"}
    assert set(survey["fp32"]) == {"1 process x 1 thread", "1 process x 2 threads", "2 processes x 1 thread"}
    assert "| fp32 | 2 processes x 1 thread |" in text
    assert "| engine fp32, 1 method |" in text and "of fp32 matmul" in text and "survey create" in text


def test_bench_profile_prints_a_per_op_table(capsys):
    main(["--profile", "--batch", "2", "--steps", "2", "--profile-rows", "5"])
    assert "aten::" in capsys.readouterr().out


def test_baseline_networks_run_as_guided_diffusion_runs_them(reference, monkeypatch):
    """The baseline's networks (bench.baseline.with_guided_diffusion_ops) do what
    guided-diffusion's modules do at sampling time, and nothing changes a value: the
    classifier's attention blocks run once without a graph and again in the backward,
    which also takes their parameters' gradients; upsampling goes through F.interpolate and
    downsampling through torch's pooling kernel;
    logits, the guidance gradient and the denoiser's output equal the engine networks'
    bit for bit."""
    import torch
    import torch.nn.functional as F

    from bench.baseline import with_guided_diffusion_ops
    from bench.tiny_paths import load_tiny_pair
    from conftest import reference_path

    reference("tiny_unet.pt")
    unet, clf = load_tiny_pair(reference_path("tiny_unet.pt").parent)
    gd_unet, gd_clf = with_guided_diffusion_ops(unet), with_guided_diffusion_ops(clf)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 700])

    calls = {"attention": 0, "interpolate": 0, "avg_pool2d": 0}
    block = next(m for m in gd_clf.modules() if type(m).__name__ == "AttentionBlock")
    inner = block._forward

    def counted(h):
        calls["attention"] += 1
        return inner(h)

    block._forward = counted
    pool = F.avg_pool2d

    def pool_spy(*args, **kwargs):
        calls["avg_pool2d"] += 1
        return pool(*args, **kwargs)

    grads = []
    for net in (clf, gd_clf):
        monkeypatch.setattr(F, "avg_pool2d", pool_spy if net is gd_clf else pool)
        x_in = x.clone().requires_grad_(True)
        logits = net(x_in, t)
        grads.append((logits.detach(), torch.autograd.grad(torch.log_softmax(logits, -1)[:, 3].sum(), x_in)[0]))
    monkeypatch.setattr(F, "avg_pool2d", pool)
    assert calls["attention"] == 2  # forward without a graph, then recomputed in the backward
    assert calls["avg_pool2d"] > 0  # torch's pooling kernel, not the engine's strided views
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert all(p.requires_grad for p in gd_clf.parameters()) and not any(p.requires_grad for p in clf.parameters())
    assert block.qkv.weight.grad is None  # taken and dropped, as torch.autograd.grad does

    original = F.interpolate

    def spy(*args, **kwargs):
        calls["interpolate"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    y = torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(unet(x, t, y), gd_unet(x, t, y))
    assert calls["interpolate"] > 0
