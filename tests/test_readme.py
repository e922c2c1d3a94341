"""The README tells the truth: its two opening commands, the CLIs it names, and its
engine example (run against the bundled models)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_opens_with_launch_and_test_commands():
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    assert "pip install -r requirements.txt" in blocks[0] and "python -m app" in blocks[0]
    assert blocks[1].strip() == "sh tests/run_tests.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tests/run_tests.sh" in ci
    assert "pytest" in (ROOT / "tests" / "run_tests.sh").read_text()


def _modules() -> list[str]:
    found = set(re.findall(r"python -m ((?:app|survey)(?:\.[a-z_]+)?|(?:train|bench)\.[a-z_]+)\b", README))
    return sorted(found)


@pytest.mark.parametrize("module", _modules())
def test_every_cli_in_the_readme_has_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout.lower()


def test_engine_example_runs():
    match = re.search(r"<!-- example: engine.*?-->\n```python\n(.*?)```", README, flags=re.S)
    assert match, "the engine example block is missing"
    code = match.group(1).replace('respacing="50"', 'respacing="10"')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert tuple(namespace["images"].shape) == (3, 1, 28, 28)
    assert len(namespace["x0_filmstrip"]) == 2
    assert namespace["run_config"]["seeds"] == [0, 1, 2]
