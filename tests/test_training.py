"""A few real steps of every training script on CPU; bit-for-bit resume; DDP over two
gloo processes; the robustness table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from engine.checkpoints import load_model_file

TINY_DENOISER = ["--num-channels", "32", "--num-res-blocks", "1", "--channel-mult", "1,2",
                 "--attention-resolutions", "14", "--num-heads", "2"]
TINY_CLASSIFIER = ["--width", "32", "--depth", "1", "--channel-mult", "1,2", "--attention-resolutions", "14"]


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, f"{module} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_denoiser_trains_and_exports(tmp_path):
    out = tmp_path / "den"
    run_module("train.diffusion", "--out", str(out), "--steps", "3", "--batch-size", "8", "--log-every", "1",
               "--no-progress", *TINY_DENOISER)
    log = read_log(out)
    assert log[0]["event"] == "start" and [r["step"] for r in log[1:]] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["vb"] >= 0 for r in log[1:])
    net, header = load_model_file(out / "model.pt")
    assert header["kind"] == "denoiser" and header["meta"]["null_label"] == 10
    assert net.num_classes == 11 and header["meta"]["diffusion"]["noise_schedule"] == "cosine"


@pytest.mark.parametrize("mode", [["--attack", "none"], ["--attack", "l2", "--eps", "1.0", "--attack-steps", "3"],
                                  ["--attack", "linf", "--eps", "0.1", "--attack-steps", "2", "--random-start"],
                                  ["--clean"]])
def test_classifier_trains_in_each_mode(tmp_path, mode):
    out = tmp_path / "clf"
    run_module("train.classifier", "--out", str(out), "--steps", "2", "--batch-size", "16", "--log-every", "1",
               "--no-progress", *TINY_CLASSIFIER, *mode)
    last = read_log(out)[-1]
    assert 0.0 <= last["clean_acc"] <= 1.0 and last["loss"] > 0
    _, header = load_model_file(out / "model.pt")
    if "--clean" in mode:
        assert header["meta"]["time_dependent"] is False and "clean_acc_t0" not in last
    else:
        assert "clean_acc_t0" in last or "clean_acc_t3" in last
    if mode[0] == "--attack" and mode[1] in ("l2", "linf"):
        # attack_success is NaN only when no sample was correctly classified to begin with
        assert (0.0 <= last["attack_success"] <= 1.0) or (math.isnan(last["attack_success"]) and last["clean_acc"] == 0)
        assert 0 <= last["attack_steps"] <= 3
        assert header["meta"]["attack"]["norm"] == mode[1]


def test_judge_trains(tmp_path):
    out = tmp_path / "judge"
    run_module("train.judge", "--out", str(out), "--steps", "3", "--batch-size", "32", "--width", "8",
               "--no-progress")
    _, header = load_model_file(out / "model.pt")
    assert 0.0 <= header["meta"]["heldout_accuracy"] <= 1.0


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("module,extra", [
    ("train.classifier", [*TINY_CLASSIFIER, "--attack", "l2", "--eps", "1.0", "--attack-steps", "2"]),
    ("train.diffusion", TINY_DENOISER),
])
def test_resume_is_bit_for_bit(tmp_path, module, extra):
    common = ["--steps", "4", "--batch-size", "8", "--save-every", "2", "--log-every", "1", "--no-progress", *extra]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_module(module, "--out", str(straight), *common)
    run_module(module, "--out", str(split), "--stop-after", "2", *common)
    assert _state(split / "checkpoint.pt")["step"] == 2 and not (split / "model.pt").exists()
    run_module(module, "--out", str(split), "--resume", *common)
    a, b = _state(straight / "checkpoint.pt"), _state(split / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    losses_a = [r["loss"] for r in read_log(straight) if "loss" in r]
    losses_b = [r["loss"] for r in read_log(split) if "loss" in r]
    assert losses_a == losses_b


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "train.classifier", "--out", str(out), "--steps", "3", "--batch-size", "16", "--log-every", "1",
         "--no-progress", *TINY_CLASSIFIER, "--attack", "l2", "--eps", "0.5", "--attack-steps", "2"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = read_log(out)
    assert log[0]["world"] == 2 and [r["step"] for r in log[1:]] == [1, 2, 3]
    _, header = load_model_file(out / "model.pt")
    assert header["meta"]["world"] == 2 and header["meta"]["command"].startswith("torchrun --nproc_per_node=2")


def test_robustness_table(tmp_path):
    out = tmp_path / "clf"
    run_module("train.classifier", "--out", str(out), "--steps", "1", "--batch-size", "8", "--no-progress",
               *TINY_CLASSIFIER)
    proc = run_module("train.robustness", f"tiny={out / 'model.pt'}", "--timesteps", "0,200", "--eps", "0,1",
                      "--steps", "2", "--limit", "20", "--json")
    rows = json.loads(proc.stdout)
    assert {(r["t"], r["eps"]) for r in rows} == {(0, 0.0), (0, 1.0), (200, 0.0), (200, 1.0)}
    for t in (0, 200):
        clean = next(r for r in rows if r["t"] == t and r["eps"] == 0)["accuracy"]
        attacked = next(r for r in rows if r["t"] == t and r["eps"] == 1.0)["accuracy"]
        assert attacked <= clean  # an attack never helps a classifier
    table = run_module("train.robustness", f"tiny={out / 'model.pt'}", "--timesteps", "0", "--eps", "0,0.5",
                       "--steps", "1", "--limit", "10").stdout
    assert "| tiny | 0 |" in table and "eps 0.5" in table


def test_bad_data_is_a_clear_error(tmp_path):
    single = tmp_path / "single"
    (single / "cat").mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("L", (8, 8), color=i * 40).save(single / "cat" / f"{i}.png")
    proc = subprocess.run([sys.executable, "-m", "train.classifier", "--out", str(tmp_path / "x"), "--data",
                           str(single), "--steps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "single class" in proc.stderr


def test_bundle_set_changes_defaults_and_lab_section(tmp_path, tiny_bundle_dir):
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, folder)
    lab = {"columns": [{"run": True, "column": "robust", "method": "classifier", "guide": "robust", "scale": 3.0,
                        "source": "x_t", "stabiliser": "none"}, "strong=robust@x0+adam:2"], "steps": 20}
    (tmp_path / "lab.json").write_text(json.dumps(lab))
    run_module("train.bundle", "set", "--bundle", str(folder), "--lab", str(tmp_path / "lab.json"))
    run_module("train.bundle", "set", "--bundle", str(folder), "--name", "robust", "--default-scale", "0.5")
    manifest = json.loads((folder / "bundle.json").read_text())
    assert manifest["lab"] == lab and manifest["guides"]["robust"]["default_scale"] == 0.5
    # bad input: a clear message, and bundle.json untouched
    before = (folder / "bundle.json").read_text()
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "shape.json").write_text(json.dumps({"columns": [{"run": True}]}))
    (tmp_path / "spec.json").write_text(json.dumps({"columns": ["robust@nowhere:1"]}))
    for args, message in ((["--lab", str(tmp_path / "broken.json")], "is not valid JSON"),
                          (["--lab", str(tmp_path / "shape.json")], "'columns' must be a list"),
                          (["--lab", str(tmp_path / "spec.json")], "source 'nowhere' is not one of"),
                          (["--name", "nope", "--default-scale", "1"], "no guide 'nope'"),
                          ([], "nothing to set")):
        proc = run_module("train.bundle", "set", "--bundle", str(folder), *args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
    assert (folder / "bundle.json").read_text() == before
