"""``python -m train.steps``: judge FID / accuracy against DDPM and DDIM step counts, on
the tiny random bundle (the real sweep runs on the shipped models; see the README)."""

from __future__ import annotations

import json

import pytest

from train.steps import cheapest_within_noise, main, respacing_for


def test_steps_sweep_end_to_end(tmp_path, tiny_bundle_dir, capsys):
    out = tmp_path / "steps"
    main(["--bundle", str(tiny_bundle_dir), "--out", str(out), "--methods", "unguided,vanilla", "--steps", "4,2",
          "--samplers", "ddpm,ddim", "--per-class", "1", "--replicates", "2", "--no-progress"])
    data = json.loads((out / "steps.json").read_text())
    rows = data["rows"]
    assert {(r["method"], r["sampler"], r["steps"]) for r in rows} == {
        (m, s, n) for m in ("unguided", "vanilla") for s in ("ddpm", "ddim") for n in (2, 4)}
    assert {r["respacing"] for r in rows if r["sampler"] == "ddim"} == {"ddim2", "ddim4"}
    for r in rows:
        assert len(r["fid_values"]) == 2 and r["fid"] >= 0 and 0 <= r["accuracy"] <= 1
        settings = json.loads((out / f"{r['sampler']}-{r['steps']}" / "cache" / "settings.json").read_text())
        assert settings["respacing"] == r["respacing"] and settings["sampler"] == r["sampler"]
    assert len(data["cheapest_within_noise"]) == 4
    assert (out / "steps_vs_quality.png").stat().st_size > 1000
    assert "cheapest within noise" in (out / "steps.md").read_text()
    assert "| fid | 2 steps | 4 steps |" in capsys.readouterr().out


def test_cheapest_within_noise_picks_the_fewest_steps_inside_the_error_bars():
    rows = [{"method": "robust", "sampler": "ddpm", "steps": n, "fid": f, "fid_std": s}
            for n, f, s in ((10, 9.0, 0.5), (25, 5.4, 0.3), (50, 5.0, 0.3), (100, 5.1, 0.4))]
    choice = cheapest_within_noise(rows)[("robust", "ddpm")]
    assert choice["best_steps"] == 50 and choice["cheapest_steps"] == 25  # |5.4 - 5.0| <= hypot(0.3, 0.3)
    rows[1]["fid"] = 5.5  # now outside: 0.5 > 0.42
    assert cheapest_within_noise(rows)[("robust", "ddpm")]["cheapest_steps"] == 50


def test_bad_settings_are_clear_errors(tmp_path, tiny_bundle_dir):
    assert respacing_for("ddim", 25) == "ddim25" and respacing_for("ddpm", 25) == "25"
    with pytest.raises(SystemExit, match="--samplers takes ddpm and / or ddim"):
        main(["--out", str(tmp_path), "--samplers", "euler"])
    with pytest.raises(SystemExit, match="--steps expects whole numbers"):
        main(["--out", str(tmp_path), "--steps", "ten"])


def test_evaluate_refuses_a_cache_made_with_other_steps(tmp_path, tiny_bundle_dir):
    from train.evaluate import main as evaluate_main

    args = ["--bundle", str(tiny_bundle_dir), "--out", str(tmp_path / "e"), "--methods", "unguided", "--per-class", "1",
            "--replicates", "2", "--no-progress", "--respacing", "2"]
    evaluate_main(args)
    with pytest.raises(SystemExit, match=r"other settings \(respacing '2' -> '3'\)"):
        evaluate_main(args[:-1] + ["3"])
