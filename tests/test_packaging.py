"""The project installs with pip and its commands work from any folder.

The install test builds the project from a copy of its tracked files into a fresh
virtual environment and runs the console commands from an empty temporary folder, so
neither the checkout nor its ``models/`` can be found by accident: the test checks that
the packages and the bundled models are imported from the new environment.

Dependencies: installing torch, gradio & co. afresh takes minutes, so the fresh
environment sees the already installed pinned set (requirements.txt) through a ``.pth``
file, and pip installs the project with ``--no-index`` and dependency checking on: a
dependency pyproject.toml declares that the pinned set does not satisfy fails the
install. That the declared dependencies are complete is checked separately against
requirements.txt (every runtime requirement there must be declared).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("engine", "train", "survey", "app")
TEST_ONLY = {"pytest", "pytest-timeout", "playwright", "torchmetrics", "httpx"}
OPTIONAL = {"psycopg"}  # extra "postgres"


def _name(requirement: str) -> str:
    return re.match(r"\s*([A-Za-z0-9_.-]+)", requirement).group(1).lower().replace("_", "-")


def test_pyproject_declares_every_runtime_requirement():
    pinned = {_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")}
    project = PYPROJECT["project"]
    declared = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for group in project["optional-dependencies"].values() for r in group}
    assert pinned - TEST_ONLY - OPTIONAL == declared
    assert TEST_ONLY | OPTIONAL <= extras
    assert set(project["scripts"]) == {"rcg-lab", "rcg-survey", "rcg-train"}


def test_every_module_and_data_file_is_in_the_package_list():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {str(p.parent.relative_to(ROOT)).replace("/", ".") for name in PACKAGES
               for p in (ROOT / name).rglob("*.py") if "__pycache__" not in p.parts}
    assert folders <= listed, f"add {sorted(folders - listed)} to [tool.setuptools] packages in pyproject.toml"
    # every shipped bundle's files (models/NAME/bundle.json + weights) and models/index.json are package data
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["rcg_models"]
    shipped = [p.relative_to(ROOT / "models") for p in (ROOT / "models").rglob("*") if p.is_file()
               and "__pycache__" not in p.parts]
    assert Path("index.json") in shipped and Path("mnist", "bundle.json") in shipped
    unmatched = [str(p) for p in shipped if not any(p.match(pattern) and len(p.parts) == len(Path(pattern).parts)
                                                   for pattern in patterns)]
    assert not unmatched, f"add patterns for {unmatched} to [tool.setuptools.package-data] rcg_models"


def _tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not name.startswith(("tests/", "docs/", ".ci/")):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def test_installed_commands_work_from_any_folder(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the tracked files are what gets installed)")
    source, venv, work = tmp_path / "src", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _tracked_copy(source)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_pinned_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RCG_SURVEY_DB")}
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", PIP_NO_INPUT="1")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-build-isolation", "--no-index", "--quiet", str(source)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    def run(*argv: str, timeout: int = 180) -> str:
        proc = subprocess.run(list(argv), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-2000:])
        return proc.stdout + proc.stderr

    where = run(str(venv / "bin" / "python"), "-c", "import engine, survey, app, train, engine.bundles as b; "
                "print(engine.__file__, survey.__file__, app.__file__, train.__file__, b.DEFAULT_BUNDLE_DIR)")
    for path in where.split():
        assert Path(path).resolve().is_relative_to(site.resolve()), where  # the installed copy, not the checkout
    listed = run(str(venv / "bin" / "rcg-train"), "bundle", "list")  # models/index.json and models/mnist/ came along
    assert "* mnist" in listed and str(site.resolve() / "rcg_models" / "mnist") in listed, listed
    for command in ("rcg-lab", "rcg-survey", "rcg-train"):
        assert "usage:" in run(str(venv / "bin" / command), "--help").lower()
    assert "usage:" in run(str(venv / "bin" / "rcg-train"), "sample", "--help")
    for module in ("survey", "app", "train", "train.sample"):  # the python -m forms of the installed packages
        assert "usage:" in run(str(venv / "bin" / "python"), "-m", module, "--help").lower()
    # real work from the empty folder: a survey study generated with the bundled models (alembic migrations and
    # model files both come from the installed package), and guided samples
    out = run(str(venv / "bin" / "rcg-survey"), "create", "--db", "study.db", "--name", "s", "--from-bundle",
              "--methods", "vanilla:0.5", "robust:1.0", "--pairs", "2", "--respacing", "5", "--per-rater", "2",
              "--device", "cpu")
    assert "2 main, 0 gold, 0 repeat pairs; 4 images" in out and (work / "study_media").is_dir()
    assert "\ts\tmethods vanilla, robust" in run(str(venv / "bin" / "rcg-survey"), "info", "--db", "study.db")
    run(str(venv / "bin" / "rcg-train"), "sample", "--out", "samples", "--num-samples", "2", "--respacing", "5",
        "--guides", "vanilla", "--device", "cpu", "--no-progress")
    assert list((work / "samples").rglob("*.npz"))
