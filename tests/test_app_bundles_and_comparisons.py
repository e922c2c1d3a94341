"""The lab over real HTTP with several shipped bundles (issue 16): `python -m app` on a
folder of two bundles (RCG_MODELS_DIR; copies of the shipped MNIST bundle, one with its
classes renamed) opens the default one of index.json; the side by side shows the judge's
verdict per image and the difference of two columns; the Targeted PGD view's batch mode
gives the instrument's transfer; the Models tab switches the whole lab (also in a real
headless Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from conftest import ROOT
from test_app_server import CHROMIUM, error_of, free_port, png, rows, unexpected_tracebacks

LETTERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLUMNS = {"headers": ["run", "column", "method", "guide", "scale", "source", "stabiliser"], "data": [
    [True, "vanilla", "classifier", "vanilla", 1.0, "x_t", "none"],
    [True, "robust", "classifier", "robust", 1.0, "x_t", "none"],
    [True, "unguided", "unguided", "", 0.0, "", "none"],
]}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """Two bundles: 'digits' (the shipped MNIST bundle) and 'words' (the same models,
    classes named in words); index.json makes 'words' the default."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(ROOT / "models" / "mnist", root / "digits")
    shutil.copytree(ROOT / "models" / "mnist", root / "words")
    manifest = json.loads((root / "words" / "bundle.json").read_text())
    manifest.update(name="mnist-in-words", class_names=LETTERS)
    (root / "words" / "bundle.json").write_text(json.dumps(manifest))
    (root / "index.json").write_text(json.dumps({"default": "words", "order": ["digits", "words"], "why": "test"}))
    return root


@pytest.fixture(scope="module")
def lab(models_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("lab16")
    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1", "RCG_MODELS_DIR": str(models_dir)}
    log_path = work / "server.log"
    with open(log_path, "w") as log:  # no --bundle: the default of index.json
        proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--threads", "1", "--device", "cpu",
                                 "--run-dir", str(work / "runs"), "--no-survey"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
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
                raise RuntimeError(f"the lab did not start in 180 s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield url
        served = log_path.read_text()
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


@pytest.fixture(scope="module")
def words(models_dir):
    from engine.bundles import load_bundle

    return load_bundle(models_dir / "words")


def sample(client, class_value="three", seeds="0-2", steps=8, columns=COLUMNS):
    args = [class_value, seeds, steps, "", "DDPM", 0.0, columns, False, [], 3, False, "raw"]
    return client.predict(*args, api_name="/sample")


def _npz_images(files, column: str) -> torch.Tensor:
    path = next(f for f in files if f.endswith(f"-{column}.npz"))
    with np.load(path) as data:
        return torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_the_lab_opens_the_default_bundle_of_the_index(client):
    described = json.loads(client.predict(api_name="/describe_models"))
    assert described["name"] == "mnist-in-words" and described["classes"] == LETTERS


def test_side_by_side_shows_the_judges_verdict_per_image(client, words):
    out = sample(client)
    files, status, verdicts = out[6], out[7], rows(out[8])  # (the run id is session state: not returned)
    assert "3 seed(s) x 3 column(s)" in status
    assert [(v["column"], v["seed"]) for v in verdicts] == [(c, s) for c in ("vanilla", "robust", "unguided")
                                                            for s in (0, 1, 2)]
    checked = 0
    for column in ("vanilla", "robust", "unguided"):
        # the judge on the downloaded images (uint8, so probabilities agree to quantisation)
        with torch.no_grad():
            probs = torch.softmax(words.judge(_npz_images(files, column)).float(), -1)
        for i, v in enumerate(r for r in verdicts if r["column"] == column):
            assert v["asked for"] == "three"  # the class names of the loaded bundle
            top2 = probs[i].topk(2).values
            assert v["p(reading)"] == pytest.approx(float(probs[i].max()), abs=0.05)
            if float(top2[0] - top2[1]) > 0.1:  # a clear reading: the shown verdict is the judge's argmax
                assert v["judge reads"] == LETTERS[int(probs[i].argmax())]
                checked += 1
            assert v["agrees"] == ("yes" if v["judge reads"] == "three" else "NO")
    assert checked >= 5
    final = png(out[0])
    red = (final[..., 0] > 180) & (final[..., 1] < 60) & (final[..., 2] < 60)  # the frame of a disagreeing image
    assert red.any() == any(v["agrees"] == "NO" for v in verdicts)


def test_difference_of_two_columns(client):
    out = sample(client, seeds="0-1")
    files, choice_a, choice_b, picture, table = out[6], out[9]["value"], out[10]["value"], out[11], rows(out[12])
    assert (choice_a, choice_b) == ("robust", "vanilla")  # the default pair: the second column minus the first
    delta = _npz_images(files, "robust") - _npz_images(files, "vanilla")
    for seed, row in zip((0, 1), table):
        assert row["seed"] == seed
        # ||A - B|| of the float images vs of the uint8 downloads: at most 1/127.5 per pixel apart
        assert row["‖A − B‖₂"] == pytest.approx(float(delta[seed].norm()), abs=28 / 127.5)
        assert row["‖A − B‖₂"] > 0
    diff = png(picture)
    assert len(np.unique(diff.reshape(-1, 3), axis=0)) > 20  # images, a coloured map and the legend
    same_picture, same_table = client.predict("unguided", "unguided", api_name="/difference")
    assert all(r["‖A − B‖₂"] == 0 and r["max |A − B|"] == 0 for r in rows(same_table))


def test_batch_attack_transfer_equals_the_instrument(client, words):
    from engine.alignment import AlignmentSettings, measure_alignment, stratified_subset
    from engine.data import load_split

    plot, table, grid, status = client.predict(6, 3, 0, 8.0, 3, "L2", ["vanilla", "robust"], api_name="/attack_batch")
    assert "6 mnist held-out split images" in status and "PGD-3 at t=0" in status
    shown = {r["guide"]: r for r in rows(table)}
    data = load_split("mnist", "heldout")
    images, labels = data.tensors()
    pick = stratified_subset(labels, 6)
    torch.set_num_threads(1)
    result = measure_alignment({g: words.guides[g] for g in ("vanilla", "robust")}, words.judge, images[pick],
                               labels[pick], AlignmentSettings(timesteps=(0,), radii=(8.0,), steps=3, seed=3),
                               diffusion=words.diffusion(""), denoiser=words.denoiser, null_label=words.null_label,
                               num_classes=10)
    for summary in result.summaries():
        row = shown[summary["guide"]]
        assert row["transfer %"] == pytest.approx(100 * summary["transfer"], abs=0.05)
        assert row["± s.e."] == pytest.approx(100 * summary["transfer_se"], abs=0.05)
        assert row["success %"] == pytest.approx(100 * summary["success"], abs=0.05)
    paired = shown["robust − vanilla (paired)"]
    assert paired["transfer %"] == pytest.approx(100 * result.paired("robust", "vanilla")[0]["mean_diff"], abs=0.05)
    assert png(plot).shape[1] > 300 and png(grid).shape[0] > 6 * 74  # one grid row per image
    assert "images" in error_of(client, 1000, 0, 0, 8.0, 3, "L2", ["vanilla"], api_name="/attack_batch")


def test_a_bad_bundle_name_lists_the_choices(client):
    message = client.predict("cifar", api_name="/switch_bundle")
    assert "No shipped bundle named 'cifar'" in message and "digits" in message and "words (default)" in message


def test_switching_bundles_changes_the_class_names(client, lab):
    message = client.predict("digits", api_name="/switch_bundle")
    assert "Switched to **digits**" in message
    described = json.loads(client.predict(api_name="/describe_models"))
    assert described["classes"] == [str(i) for i in range(10)]
    out = sample(client, class_value="3", seeds="0", steps=3)
    assert {r["asked for"] for r in rows(out[8])} == {"3"}
    assert "three" in error_of(client, *[ "three", "0", 3, "", "DDPM", 0.0, COLUMNS, False, [], 3, False, "raw"],
                               api_name="/sample")
    client.predict("words", api_name="/switch_bundle")  # back to the default for the browser test


@pytest.mark.browser
def test_browser_switches_bundles_from_the_models_tab(lab):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    from app.screenshots import CHROMIUM_ARGS, DONE_JS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(lab + "/", wait_until="domcontentloaded")
            page.wait_for_selector("#sample-run", timeout=60000)
            page.wait_for_timeout(1000)
            page.get_by_role("tab", name="Models").click()
            page.wait_for_selector("#models-shipped-table", timeout=30000)
            assert "digits" in page.inner_text("#models-shipped-table")
            page.locator("#models-shipped input").fill("digits")
            page.keyboard.press("Enter")
            page.click("#models-switch")
            page.wait_for_function("() => (document.querySelector('#models-switch-status')?.innerText ?? '')"
                                   ".includes('Switched to digits')", timeout=60000)
            page.wait_for_function("() => (document.querySelector('#models-loaded')?.innerText ?? '').includes('mnist-demo')",
                                   timeout=30000)
            page.get_by_role("tab", name="Side by side").click()
            page.locator("#sample-steps input").fill("2")
            page.locator("#sample-steps input").press("Tab")
            page.click("#sample-run")
            page.wait_for_function(DONE_JS, arg=["#sample-status", ""], timeout=120000)
            # The table sits in a closed accordion; Gradio renders its content only once opened, so
            # open it (again, if a click landed before the accordion was ready) until the table shows.
            for _ in range(3):
                if page.locator("#sample-verdicts").count() and page.locator("#sample-verdicts").is_visible():
                    break
                page.get_by_text("The judge's verdict per image").click()
                page.wait_for_timeout(1500)
            page.wait_for_function("() => { const e = document.querySelector('#sample-verdicts');"
                                   " return e !== null && e.innerText.includes('agrees'); }", timeout=30000)
            text = page.inner_text("#sample-verdicts")
            assert "zero" not in text  # the class names followed the switch: digits, not words
            assert not errors, errors
        finally:
            browser.close()
