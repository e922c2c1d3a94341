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
    assert tiny["equality"]["max_abs_diff_engine_vs_baseline"] < 1e-4
    assert tiny["gflop_per_guided_step"] == tiny["baseline_gflop_per_step"] > 0
    paths = {r["path"]: r for r in tiny["rows"]}
    assert paths["baseline (guided-diffusion style), 1 method"]["speedup_vs_baseline"] == 1.0
    assert {"engine fp32, 1 method", "engine fp32, 2 methods side by side"} <= set(paths)
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
