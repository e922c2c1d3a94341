"""The sampling CLI (ADM .npz format) and a tiny end-to-end evaluation sweep on CPU."""

from __future__ import annotations

import csv
import json

import numpy as np

from engine.guidance import GuidanceConfig
from test_training import run_module


def test_sample_cli_writes_adm_npz_and_run_config(tmp_path, tiny_bundle_dir):
    out = tmp_path / "samples"
    run_module("train.sample", "--bundle", str(tiny_bundle_dir), "--out", str(out), "--num-samples", "5",
               "--batch-size", "3", "--guides", "unguided,robust", "--respacing", "2", "--no-progress")
    for name in ("unguided", "robust"):
        data = np.load(out / name / "samples_5x28x28x1.npz")
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (5, 28, 28, 1)
        assert data["arr_1"].tolist() == [0, 1, 2, 3, 4]
        run = json.loads((out / name / "run.json").read_text())
        assert run["seeds"] == [0, 1, 2, 3, 4] and GuidanceConfig.from_dict(run["config"]).name == name
        assert (out / name / "grid.png").is_file()
    # the same seed gives the same image whatever the batch: regenerate image 4 alone
    alone = tmp_path / "alone"
    run_module("train.sample", "--bundle", str(tiny_bundle_dir), "--out", str(alone), "--num-samples", "1",
               "--seed", "4", "--classes", "4", "--guides", "robust", "--respacing", "2", "--no-progress")
    first = np.load(out / "robust" / "samples_5x28x28x1.npz")["arr_0"][4].astype(int)
    again = np.load(alone / "robust" / "samples_1x28x28x1.npz")["arr_0"][0].astype(int)
    assert np.abs(first - again).max() <= 1


def test_tiny_sweep_end_to_end(tmp_path, tiny_bundle_dir):
    out = tmp_path / "sweep"
    args = ["--bundle", str(tiny_bundle_dir), "--out", str(out), "--methods", "unguided,vanilla,nonrobust@x0+adam",
            "--scales", "1,4", "--modes", "conditional,unconditional", "--per-class", "2", "--replicates", "2",
            "--respacing", "2", "--no-progress", "--json", "--paired", "vanilla:unguided"]
    rows = json.loads(run_module("train.evaluate", *args).stdout)
    reference, body = rows[0]["reference"], rows[1:]
    # paired differences: vanilla minus the one unguided row of its mode, replicate by replicate
    paired = rows[0]["paired"]
    assert {(e["mode"], e["scale"]) for e in paired} == {(m, s) for m in ("conditional", "unconditional") for s in (1, 4)}
    for e in paired:
        v = next(r for r in body if r["method"] == "vanilla" and r["mode"] == e["mode"] and r["scale"] == e["scale"])
        u = next(r for r in body if r["method"] == "unguided" and r["mode"] == e["mode"])
        diff = np.array(v["fid_values"]) - np.array(u["fid_values"])
        assert abs(e["fid"] - diff.mean()) < 1e-9 and abs(e["fid_std"] - diff.std(ddof=1)) < 1e-9
        assert e["fid_wins"] == int((diff < 0).sum())
        acc = np.array(v["accuracy_values"]) - np.array(u["accuracy_values"])
        assert e["accuracy_wins"] == int((acc > 0).sum())
    assert {(r["method"], r["mode"]) for r in body} == {
        (m, mode) for m in ("unguided", "vanilla", "nonrobust@x0+adam") for mode in ("conditional", "unconditional")}
    for r in body:
        assert r["replicates"] == 2 and r["n_per_replicate"] == 20 and len(r["fid_values"]) == 2
        assert r["fid"] >= 0 and 0 <= r["precision"] <= 1 and 0 <= r["accuracy"] <= 1
        assert abs(r["fid"] - np.mean(r["fid_values"])) < 1e-9
    assert 0 <= reference["real_vs_real_precision"] <= 1
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(body)
    assert (out / "metrics_by_scale.png").stat().st_size > 1000
    assert "Best scale per method" in (out / "results.md").read_text()
    assert "vanilla minus unguided, paired by seed set (unconditional)" in (out / "results.md").read_text()
    # resumable: a second run samples nothing new and reports the same numbers
    cached = sorted(p.name for p in (out / "cache").rglob("rep*.npz"))
    rows_again = json.loads(run_module("train.evaluate", *args).stdout)
    assert sorted(p.name for p in (out / "cache").rglob("rep*.npz")) == cached
    bad = run_module("train.evaluate", *args, "--paired", "robust:vanilla", check=False)
    assert bad.returncode != 0 and "--paired 'robust:vanilla'" in bad.stderr
    assert [r["fid"] for r in rows_again[1:]] == [r["fid"] for r in body]


def test_sample_cli_under_torchrun_shards_and_merges(tmp_path, tiny_bundle_dir):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_module("train.sample", "--bundle", str(tiny_bundle_dir), "--out", str(single), "--num-samples", "5",
               "--guides", "robust", "--respacing", "2", "--no-progress")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.sample",
         "--bundle", str(tiny_bundle_dir), "--out", str(sharded), "--num-samples", "5", "--guides", "robust",
         "--respacing", "2", "--no-progress"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = np.load(single / "robust" / "samples_5x28x28x1.npz")
    b = np.load(sharded / "robust" / "samples_5x28x28x1.npz")
    assert b["arr_1"].tolist() == a["arr_1"].tolist()
    assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).max() <= 1  # same seeds -> same images
    assert not list(sharded.glob(".shard*"))
