"""The lab over real HTTP: `python -m app` on the random-weight tiny bundle in a
subprocess, every view driven with gradio_client, the survey at /survey, and a real
headless Chromium that runs a side-by-side sample (screenshot in test-artifacts/)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
HEADERS = ["run", "column", "method", "guide", "scale", "source", "stabiliser"]
COLUMNS = {"headers": HEADERS, "data": [
    [True, "unguided", "unguided", "", 0.0, "", "none"],
    [True, "vanilla", "classifier", "vanilla", 1.0, "x_t", "none"],
    [True, "robust", "classifier", "robust", 2.0, "x_t", "none"],
    [True, "nonrobust x0+adam", "classifier", "nonrobust", 0.5, "x0", "adam"],
]}
MAX_IMAGES = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Gradio prints a traceback for its own input validation (here: the .txt upload that the
# test sends on purpose; the user gets the message). Any other traceback is a failure.
GRADIO_VALIDATION = ('gradio.exceptions.Error: "Invalid file type',)


def unexpected_tracebacks(log: str) -> list[str]:
    """The last line of every traceback in ``log`` that is not Gradio's input validation."""
    ends = re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n|\n)*(\S.*)", log)
    return [end for end in ends if not end.startswith(GRADIO_VALIDATION)]


@pytest.fixture(scope="module")
def lab(tiny_bundle_dir, tmp_path_factory):
    """`python -m app` on the tiny bundle; yields its base URL."""
    for url, _work in serve_lab(tiny_bundle_dir, tmp_path_factory.mktemp("lab")):
        yield url


def serve_lab(tiny_bundle_dir: Path, work: Path):
    """Run `python -m app` on the tiny bundle with its runs and survey database in
    ``work``; yields (base URL, work) once, then stops it and checks its log."""
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "RCG_ADMIN_PASSWORD": "secret"}
    log_path = work / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--bundle", str(tiny_bundle_dir), "--port", str(port), "--threads", "1",
             "--run-dir", str(work / "runs"), "--survey-db", str(work / "survey.db"), "--max-images", str(MAX_IMAGES),
             "--concurrency", "2"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the lab exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the lab did not start in 120 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url, work
        served = log_path.read_text()  # what the requests logged, before the shutdown noise
        assert not unexpected_tracebacks(served), served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def client(lab):
    from gradio_client import Client

    return Client(lab + "/", verbose=False)


def error_of(client, *args, api_name: str) -> str:
    """The message of the gr.Error a call raises."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(*args, api_name=api_name)
    return str(info.value)


def png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def rows(frame: dict) -> list[dict]:
    return [dict(zip(frame["headers"], row)) for row in frame["data"]]


def sample_args(**overrides):
    args = {"class_value": "3", "seeds": "0-1", "steps": 3, "respacing": "", "sampler": "DDPM", "eta": 0.0,
            "table": COLUMNS, "unconditional": False, "monitors": ["vanilla", "robust"], "frames": 3,
            "signed": False, "gradient": "raw"}
    args.update(overrides)
    return list(args.values())


# ------------------------------------------------------------------------------------ side by side
def test_side_by_side_sample_returns_every_output(client, tiny_bundle):
    final, x0, grad, logp, stability, table, files, status, *_ = client.predict(*sample_args(), api_name="/sample")
    assert "2 seed(s) x 4 column(s), 3 DDPM steps" in status
    picture = png(final)
    assert picture.shape[1] >= 2 * 112 and picture.shape[0] >= 4 * 112  # 4 rows (columns) of 2 upscaled images
    assert png(x0).shape[0] >= 4 * 2 * 56  # per column: 2 seeds x up to 3 frames at 56 px
    assert png(grad).shape[0] >= 3 * 2 * 56  # the unguided column has no gradient strip
    for plot in (logp, stability):
        figure = png(plot)
        assert figure.shape[1] > 600 and len(np.unique(figure.reshape(-1, 3), axis=0)) > 10
    by_column = {r["column"]: r for r in rows(table)}
    assert list(by_column) == ["unguided", "vanilla", "robust", "nonrobust x0+adam"]
    assert all(r["images"] == 2 and r["judge accuracy"] in (0.0, 0.5, 1.0) for r in by_column.values())
    for name in ("vanilla", "robust", "nonrobust x0+adam"):
        assert -1.0 <= by_column[name]["mean cos"] <= 1.0 and by_column[name]["mean ‖g‖"] > 0
    assert by_column["unguided"]["mean cos"] is None and "adam" in by_column["nonrobust x0+adam"]["guidance"]
    by_name = {Path(f).name: f for f in files}
    config = json.loads(Path(by_name["run_config.json"]).read_text())
    assert config["seeds"] == [0, 1] and config["labels"] == [3, 3] and config["respacing"] == "3"
    assert [c["name"] for c in config["configs"]] == list(by_column)
    assert png(by_name["02-vanilla.png"]).shape[:2] == (28 + 2 * 2, 2 * 28 + 3 * 2)  # native size, padded row of 2
    trace = torch.load(by_name["02-vanilla.trace.pt"], weights_only=True)
    assert trace["cos_raw"].shape == (3, 2) and set(trace["monitor_log_prob"]) == {"vanilla", "robust"}
    # the same seed gives the same image whatever else runs beside it: regenerate one column here
    alone = tiny_bundle.sample([tiny_bundle.default_config("vanilla", scale=1.0)], [3, 3], [0, 1], respacing="3")
    with np.load(by_name["02-vanilla.npz"]) as data:
        from engine.viz import images_to_uint8

        served, here = data["arr_0"].astype(int), images_to_uint8(alone.images["vanilla"]).astype(int)
    # equal up to float rounding between the server's and this process's thread counts
    assert np.abs(served - here).max() <= 2 and np.abs(served - here).mean() < 0.05


def test_rerender_changes_display_without_sampling(client):
    client.predict(*sample_args(seeds="4"), api_name="/sample")
    final, x0, grad, logp, stability, table = client.predict(2, True, "applied", api_name="/rerender_sampling")
    assert png(grad).shape[0] >= 3 * 56 and len(rows(table)) == 4


def test_unconditional_switch_and_classifier_free_column(client):
    """GradCheck's setting is one switch: every column's denoiser gets the null label,
    except classifier-free guidance, which needs both; all from the same seeds (DDIM)."""
    columns = {"headers": HEADERS, "data": [
        [True, "unguided", "unguided", "", 0.0, "", "none"],
        [True, "nonrobust x_t+ema", "classifier", "nonrobust", 1.0, "x_t", "ema"],
        [True, "classifier-free", "cfg", "", 2.0, "", "none"],
    ]}
    runs = {}
    for unconditional in (False, True):
        out = client.predict(*sample_args(table=columns, unconditional=unconditional, sampler="DDIM", monitors=[]),
                             api_name="/sample")
        files = {Path(f).name: f for f in out[6]}
        config = json.loads(Path(files["run_config.json"]).read_text())
        assert config["sampler"] == "ddim"
        modes = {c["name"]: c["denoiser_mode"] for c in config["configs"]}
        assert modes == {"unguided": "unconditional" if unconditional else "conditional",
                         "nonrobust x_t+ema": "unconditional" if unconditional else "conditional",
                         "classifier-free": "conditional"}
        shown = {r["column"]: "unconditional" if "uncond. denoiser" in r["guidance"] else "conditional"
                 for r in rows(out[5])}
        assert shown == modes
        stems = {"unguided": "01-unguided", "nonrobust x_t+ema": "02-nonrobust_x_t+ema",
                 "classifier-free": "03-classifier-free"}
        runs[unconditional] = {name: np.load(files[f"{stem}.npz"])["arr_0"] for name, stem in stems.items()}
    assert not np.array_equal(runs[False]["unguided"], runs[True]["unguided"])  # the null label changes the model
    assert np.array_equal(runs[False]["classifier-free"], runs[True]["classifier-free"])  # same seed, same column


def test_column_presets(client):
    table = rows(client.predict(api_name="/columns_gradcheck"))
    ticked = [r["column"] for r in table if r["run"]]
    assert ticked == ["unguided", "vanilla", "robust", "nonrobust", "nonrobust x0+adam", "nonrobust x0+ema"]
    assert [r["column"] for r in rows(client.predict(api_name="/columns_paper")) if r["run"]] == ["vanilla", "robust"]


def test_few_step_ddim_and_bundle_default_settings(client):
    """The Settings buttons: few-step DDIM sets 10 DDIM steps (spaced with DDIM's stride when
    the run goes, so guided DDIM does not start at t = T - 1); Bundle defaults brings back the
    bundle's opening settings."""
    steps, sampler, respacing = client.predict(api_name="/settings_few_step_ddim")
    assert (steps, sampler, respacing) == (10, "DDIM", "")
    out = client.predict(*sample_args(steps=steps, sampler=sampler, respacing=respacing), api_name="/sample")
    files = {Path(f).name: f for f in out[6]}
    config = json.loads(Path(files["run_config.json"]).read_text())
    assert config["sampler"] == "ddim" and config["respacing"] == "ddim10"
    steps, sampler, respacing, unconditional, seeds, table = client.predict(api_name="/settings_defaults")
    assert (sampler, respacing) == ("DDPM", "") and isinstance(steps, (int, float)) and steps >= 1
    assert [r["column"] for r in rows(table)] == [r["column"] for r in rows(client.predict(api_name="/columns_all"))]


@pytest.mark.parametrize("change, message", [
    ({"seeds": "a,b"}, "not an integer"),
    ({"seeds": "1.5"}, "not an integer"),
    ({"steps": 0}, "steps must lie between 1 and 1000"),
    ({"steps": 100000}, "steps must lie between 1 and 1000"),
    ({"class_value": "12"}, "out of range 0..9"),
    ({"seeds": f"0-{MAX_IMAGES - 1}"}, f"at most {MAX_IMAGES} per run"),
    ({"respacing": "ddim7x"}, "respacing"),
    ({"table": {"headers": HEADERS, "data": [[True, "x", "classifier", "nosuch", 1, "x_t", "none"]]}},
     "guide 'nosuch' is not loaded"),
    ({"table": {"headers": HEADERS, "data": [[False, "x", "unguided", "", 0, "", "none"]]}}, "no column"),
])
def test_bad_sampling_input_gives_a_message(client, change, message):
    assert message in error_of(client, *sample_args(**change), api_name="/sample")


def test_stop_cancels_between_steps_and_long_runs_block_nobody(client):
    from gradio_client import Client

    one_column = {"headers": HEADERS, "data": [COLUMNS["data"][1]]}
    job = client.submit(*sample_args(seeds="0", steps=400, table=one_column, monitors=[]), api_name="/sample")
    deadline = time.time() + 60
    while not job.status().progress_data and time.time() < deadline:
        time.sleep(0.05)
    assert job.status().progress_data, "no progress reported"
    other = Client(client.src, verbose=False)
    started = time.time()
    # another user's inspector (its own queue group) and short sample (a second slot) run meanwhile
    other.predict("all classes", 1, api_name="/inspector_pick")
    other.predict("3", "0", ["vanilla"], 0, False, api_name="/inspect")
    status = other.predict(*sample_args(seeds="5", steps=2, table=one_column, monitors=[]), api_name="/sample")[7]
    assert "1 seed(s) x 1 column(s), 2 DDPM steps" in status
    assert not job.done() and time.time() - started < 30
    # Stop is per user: the other user's Stop leaves this run alone
    assert other.predict(api_name="/stop") == "No run of yours is in progress."
    assert not job.done()
    assert "Stopping" in client.predict(api_name="/stop")
    outputs = job.result(timeout=60)
    status = outputs[7]  # final, x0, grad, logp, stability, table, files, status, then the comparison panel
    assert status.startswith("Stopped: stopped after") and "of 400 steps" in status
    assert client.predict(api_name="/stop") == "No run of yours is in progress."


# ------------------------------------------------------------------------------------ inspector and attack
def test_inspector_on_a_gallery_image(client):
    thumbs, position = client.predict("3", api_name="/inspector_gallery")
    assert position == 0 and len(thumbs) > 5 and {t["caption"] for t in thumbs} == {"3"}
    preview, note, label = client.predict("3", 2, api_name="/inspector_pick")
    assert label == "3" and "class 3" in note and png(preview).shape[:2] == (112, 112)
    picture, table, status = client.predict("3", "0, 500", ["vanilla", "robust", "nonrobust"], 0, False,
                                            api_name="/inspect")
    assert [(r["t"], r["guide"]) for r in rows(table)] == [(t, g) for t in (0, 500)
                                                           for g in ("vanilla", "robust", "nonrobust")]
    assert all(0 < r["confidence"] <= 1 and r["log p(class)"] <= 0 for r in rows(table))
    image = png(picture)
    assert image.shape[0] >= 2 * 112 and image.shape[1] >= 4 * 112  # rows = timesteps; x_t + 3 guides
    assert int(status.rsplit(" in ", 1)[1].split()[0]) < 5000  # server-side milliseconds


@pytest.mark.parametrize("args, message", [
    (("3", "0, 5000", ["vanilla"], 0, False), "outside 0..999"),
    (("12", "0", ["vanilla"], 0, False), "out of range"),
    (("3", "0,1,2,3,4,5,6,7,8", ["vanilla"], 0, False), "at most 8"),
])
def test_bad_inspector_input_gives_a_message(client, args, message):
    assert message in error_of(client, *args, api_name="/inspect")


def test_upload_is_checked_and_converted(client, tmp_path):
    from gradio_client import handle_file

    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    client.predict("3", 2, api_name="/inspector_pick")  # a gallery image was chosen before
    preview, note, _ = client.predict(handle_file(str(text)), api_name="/inspector_upload")
    assert preview is None and "Upload refused" in note and "not a readable image" in note
    # the run refuses instead of silently using the earlier image (or gallery image 0)
    message = error_of(client, "3", "0", ["vanilla"], 0, False, api_name="/inspect")
    assert "your upload was refused" in message and "not a readable image" in message
    client.predict("3", 2, api_name="/inspector_pick")  # picking an image again clears the refusal
    assert len(rows(client.predict("3", "0", ["vanilla"], 0, False, api_name="/inspect")[1])) == 1
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all")
    assert "Invalid file type" in error_of(client, handle_file(str(notes)), api_name="/attack_upload")
    colour = tmp_path / "photo.png"
    Image.new("RGB", (60, 40), (250, 250, 250)).save(colour)
    preview, note, _ = client.predict(handle_file(str(colour)), api_name="/inspector_upload")
    assert "converted to 28x28 greyscale" in note and png(preview).shape[:2] == (112, 112)
    _, table, status = client.predict("5", "0", ["vanilla"], 0, True, api_name="/inspect")
    assert status.startswith("uploaded 60x40 RGB image") and len(rows(table)) == 1


def test_targeted_attack_starts_at_a_radius_for_the_models_image_size(lab):
    from engine.probes import scaled_attack_eps

    config = httpx.get(lab + "/config", timeout=30).json()
    eps = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "attack-eps"]
    assert len(eps) == 1
    # the paper's L2 radius 100 on 3x128x128 images, at the same change per pixel on the 1x28x28 tiny bundle
    assert eps[0]["props"]["value"] == scaled_attack_eps((1, 28, 28)) == 12.6
    assert scaled_attack_eps((3, 128, 128)) == 100.0 and scaled_attack_eps((3, 64, 64)) == 50.0


def test_targeted_attack(client):
    client.predict("all classes", 0, api_name="/attack_pick")
    picture, table, status = client.predict("7", "L2", 100.0, 3, 0, ["vanilla", "robust"], api_name="/attack")
    result = rows(table)
    assert [r["guide"] for r in result] == ["vanilla", "robust"] and all(r["steps"] == 3 for r in result)
    assert all(0 <= r["p(target) before"] <= 1 and 0 <= r["p(target) after"] <= 1 for r in result)
    assert png(picture).shape[1] >= 3 * 112 and "L2 eps 100" in status
    assert "eps must be positive" in error_of(client, "7", "L2", 0, 3, 0, ["vanilla"], api_name="/attack")
    assert "attack steps" in error_of(client, "7", "Linf", 0.1, 0, 0, ["vanilla"], api_name="/attack")


# ------------------------------------------------------------------------------------ stability
def test_stability_run_and_analysis_of_a_kept_run(client):
    plot, table, status = client.predict(["unguided", "vanilla", "nonrobust x0+adam"], "all classes (cycled)", 3, 3,
                                         0, "DDPM", False, "applied", api_name="/stability")
    result = {r["column"]: r for r in rows(table)}
    assert list(result) == ["unguided", "vanilla", "nonrobust x0+adam"]
    for r in result.values():  # the judge's accuracy of 3 images, with its binomial standard error
        p = r["judge accuracy"]
        assert r["images"] == 3 and abs(p * 3 - round(p * 3)) < 0.01
        assert r["± s.e."] == pytest.approx((p * (1 - p) / 3) ** 0.5, abs=1e-3)
    assert result["unguided"]["mean cos"] is None
    for name in ("vanilla", "nonrobust x0+adam"):
        assert -1 <= result[name]["mean cos"] <= 1 and result[name]["mean ‖g‖"] > 0
    figure = png(plot)  # cosine, norm and accuracy panels side by side
    assert figure.shape[1] > 1000 and len(np.unique(figure.reshape(-1, 3), axis=0)) > 10
    assert "3 image(s) per column, 3 steps, applied gradients" in status
    runs = client.predict(api_name="/list_runs")
    labels = [c[0] if isinstance(c, (list, tuple)) else c for c in runs["choices"]]
    side_by_side = next(label for label in labels if "side-by-side" in label)
    _, table, status = client.predict(side_by_side, "applied", api_name="/analyse_run")
    assert "applied gradients" in status and len(rows(table)) >= 1
    assert "no longer kept" in error_of(client, "run-999", "raw", api_name="/analyse_run")


# ------------------------------------------------------------------------------------ models, survey, health
def test_models_view_describes_and_loads(client, tiny_bundle, tiny_bundle_dir):
    described = json.loads(client.predict(api_name="/describe_models"))
    assert described["denoiser_parameters"] == tiny_bundle.describe()["denoiser_parameters"]
    assert sorted(described["guides"]) == ["nonrobust", "robust", "vanilla"]
    load = ["", "", "", "", "cpu", "fp32", "", ""]

    def load_with(**fields):
        values = dict(zip(["folder", "preset_set", "denoiser", "guides", "device", "precision", "respacing",
                           "diffusers_dir"], load))
        values.update(fields)
        return client.predict(*values.values(), api_name="/load_models")

    assert "no bundle at /nonexistent" in load_with(folder="/nonexistent")
    assert "unknown preset 'nosuch'" in load_with(denoiser="nosuch:/x.pt")
    assert "does not exist" in load_with(preset_set="cifar10", denoiser="/nope/cifar_diffusion_200k.pt",
                                         guides="robust=/nope/robust.pt")
    assert "Give a bundle folder" in load_with()
    assert "no diffusers pipeline at /nope" in load_with(diffusers_dir="/nope")  # loading one: test_diffusers_adapter
    assert "without a bundle folder" in load_with(folder=str(tiny_bundle_dir), diffusers_dir="/nope")
    assert "Loaded **tiny-random**" in load_with(folder=str(tiny_bundle_dir))


def test_health_and_survey_paths(lab):
    health = httpx.get(lab + "/healthz").json()
    assert health == {"ok": True, "models": "tiny-random", "survey": "on"}  # no database URL for anyone to read
    assert httpx.get(lab + "/survey/", timeout=10).status_code == 200
    assert httpx.get(lab + "/survey", follow_redirects=True, timeout=10).status_code == 200
    assert httpx.get(lab + "/survey/results", timeout=10).status_code == 401
    assert httpx.get(lab + "/survey/results", auth=("admin", "wrong"), timeout=10).status_code == 401
    admitted = httpx.get(lab + "/survey/results", auth=("admin", "secret"), timeout=10)
    assert admitted.status_code in (200, 400), admitted.text  # 400: the empty database holds no study yet
    lab_page = httpx.get(lab + "/", timeout=10).text
    assert "/survey" not in lab_page  # the lab links raters nowhere


# ------------------------------------------------------------------------------------ browser
# distinct colours of the first <img> under a selector (every 7th pixel), read back through a canvas
COLOURS_JS = """sel => { const img = document.querySelector(sel + ' img');
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data; const seen = new Set();
  for (let i = 0; i < d.length; i += 28) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return seen.size; }"""


# scrolling boxes under ``sel`` whose content is wider than the box: a table that needs horizontal
# scrolling, a gallery that cuts its last column
OVERFLOW_JS = """sel => [...document.querySelectorAll(sel + ', ' + sel + ' *')].filter(e => {
  const s = getComputedStyle(e); return s.display !== 'none' && ['auto', 'scroll'].includes(s.overflowX) &&
  e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1; })
  .map(e => `${e.tagName}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`)"""


def chromium_or_skip() -> None:
    """Skip a browser test when Chromium is missing, with the reason; fail under CI=true."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (Debian package chromium); the browser test needs it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


def open_lab_page(browser, url: str):
    """A page on the lab at ``url``, loaded, and the list its page errors go to."""
    ARTIFACTS.mkdir(exist_ok=True)  # where the screenshots go
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#sample-run", timeout=60000)
    page.wait_for_timeout(1000)  # the page-load refresh fills the controls
    return page, errors


def sample_in_page(page, steps: int) -> None:
    """Run a side-by-side sample of ``steps`` steps in the page and wait until it is done."""
    from app.screenshots import DONE_JS

    page.locator("#sample-steps input").fill(str(steps))
    page.locator("#sample-steps input").press("Tab")
    page.click("#sample-run")
    page.wait_for_function(DONE_JS, arg=["#sample-status", ""], timeout=120000)


@pytest.mark.browser
def test_browser_runs_a_side_by_side_sample(lab):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    from app.screenshots import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page, errors = open_lab_page(browser, lab)
            sample_in_page(page, steps=2)
            loaded = "sel => [...document.querySelectorAll(sel + ' img')].map(i => i.complete ? i.naturalWidth : 0)"
            for selector in ("#sample-final", "#sample-x0", "#sample-grad", "#sample-logp", "#sample-stability"):
                page.wait_for_function(f"() => ({loaded})('{selector}').some(w => w > 0)", timeout=30000)
            widths = {s: max(page.evaluate(loaded, s)) for s in ("#sample-final", "#sample-logp", "#sample-stability")}
            assert widths["#sample-final"] >= 3 * 112
            assert widths["#sample-logp"] > 600 and widths["#sample-stability"] > 1000
            # the pictures hold drawn pixels, not a blank or broken image
            colours = {s: page.evaluate(COLOURS_JS, s) for s in
                       ("#sample-final", "#sample-x0", "#sample-grad", "#sample-logp", "#sample-stability")}
            assert all(n > 10 for n in colours.values()), colours
            assert "2 DDPM steps" in page.inner_text("#sample-status")
            page.wait_for_function("() => (document.querySelector('#sample-table')?.innerText ?? '').includes('nonrobust')",
                                   timeout=30000)
            assert page.inner_text("#sample-table").count("guide nonrobust, x0") == 1  # the default three columns
            assert page.evaluate(OVERFLOW_JS, "#sample-table") == []  # every column shows, no scrolling
            page.screenshot(path=str(ARTIFACTS / "lab-side-by-side.png"), full_page=True)
            page.get_by_role("tab", name="Gradient inspector").click()
            page.wait_for_function("() => document.querySelectorAll('#inspector-gallery img').length >= 4",
                                   timeout=30000)
            assert page.evaluate(OVERFLOW_JS, "#inspector-gallery") == []  # no thumbnail column cut off
            page.get_by_role("tab", name="Side by side").click()

            # a long run shows its progress, and Stop ends it between steps
            page.locator("#sample-steps input").fill("400")
            page.locator("#sample-steps input").press("Tab")
            page.click("#sample-run")
            page.wait_for_function("() => /[0-9]+\\s*\\/\\s*400/.test(document.body.innerText)", timeout=60000)
            page.click("#sample-stop")
            page.wait_for_function(
                "() => (document.querySelector('#sample-status')?.innerText ?? '').includes('Stopped: stopped after')",
                timeout=60000)
            assert "of 400 steps" in page.inner_text("#sample-status")
            assert not errors, errors
        finally:
            browser.close()
