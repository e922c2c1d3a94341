"""A lab run becomes a study: `survey create --from-run run_config.json` on a real
run_config.json written by the lab's own download writer, a real SQLite file, and every
stored image regenerated from its stored config alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from survey.cli import main
from survey.db import open_db
from survey.media import read_png
from survey.models import Image, Pair, Study


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def run_config(tiny_bundle_dir, tmp_path_factory) -> Path:
    """A side-by-side run as the lab's sampling view writes it: three columns (one with a
    stabiliser and another gradient source), DDIM with eta, 8 steps."""
    from app.downloads import write_run_files
    from engine.bundles import load_bundle
    from engine.guidance import GuidanceConfig, unguided

    bundle = load_bundle(tiny_bundle_dir)
    configs = [bundle.default_config("vanilla", name="vanilla s=2", scale=2.0),
               GuidanceConfig(name="robust-ema", classifier="robust", scale=1.5, gradient_source="x0_detached",
                              stabiliser="ema", ema_beta=0.8),
               unguided()]
    result = bundle.sample(configs, labels=[1, 2], seeds=[11, 12], respacing="8", sampler="ddim", eta=0.5)
    folder = tmp_path_factory.mktemp("run")
    write_run_files(result, folder, {"class_names": bundle.class_names, "models": bundle.describe(), "seconds": 1.0})
    return folder / "run_config.json"


def test_study_from_a_lab_run_regenerates_every_image(run_config, tiny_bundle, tmp_path, capsys):
    from engine.data import to_uint8
    from engine.guidance import GuidanceConfig

    original = json.loads(run_config.read_text())
    db_path = tmp_path / "s.db"
    assert run("create", "--db", db_path, "--name", "from-lab", "--from-run", run_config, "--columns", "robust-ema",
               "vanilla s=2", "--pairs", "3", "--seed", "5", "--per-rater", "2", "--device", "cpu") == 0
    assert "3 main, 0 gold, 0 repeat pairs; 6 images" in capsys.readouterr().out
    db = open_db(db_path)
    with db.session() as s:
        study = s.scalar(select(Study))
        images = s.scalars(select(Image).where(Image.study_id == study.id)).all()
        mains = s.scalars(select(Pair).where(Pair.kind == "main")).all()
    db.dispose()
    assert study.methods == ["robust-ema", "vanilla s=2"]  # the chosen columns, in the order given
    source = study.settings["source"]
    assert (source["kind"], source["columns"], source["sampler"], source["eta"], source["respacing"]) == \
        ("run", ["robust-ema", "vanilla s=2"], "ddim", 0.5, "8")
    assert source["run_config"] == str(run_config) and Path(source["bundle_path"]) == Path(original["models"]["source"])
    assert len(mains) == 3 and len(images) == 6
    by_name = {c["name"]: c for c in original["configs"]}
    for image in images:
        config = image.config
        assert config["guidance"] == by_name[image.method]  # the run's column config, unchanged
        assert (config["run"]["sampler"], config["run"]["eta"], config["run"]["respacing"]) == ("ddim", 0.5, "8")
        assert config["run"]["num_steps"] == original["num_steps"] == 8
    assert not {im.seed for im in images} & set(original["seeds"])  # fresh seeds
    # every stored image comes back from its stored config alone
    for image in images:
        cfg = image.config
        result = tiny_bundle.sample([GuidanceConfig.from_dict(cfg["guidance"])], labels=[cfg["label"]],
                                    seeds=[cfg["seed"]], respacing=cfg["run"]["respacing"],
                                    sampler=cfg["run"]["sampler"], eta=cfg["run"]["eta"])
        again = to_uint8(result.images[image.method]).permute(0, 2, 3, 1).numpy()[0]
        assert np.array_equal(again, read_png(tmp_path / "s_media" / image.file_name)), image.method


def _dump(db_path: Path):
    if not db_path.exists():
        return None
    db = open_db(db_path)
    with db.engine.connect() as c:
        rows = {t: c.exec_driver_sql(f"SELECT * FROM {t}").all() for t in ("studies", "images", "pairs")}
    db.dispose()
    return rows


def test_bad_run_files_are_refused_and_change_nothing(run_config, tmp_path, capsys):
    original = json.loads(run_config.read_text())
    db_path = tmp_path / "s.db"

    def write(name: str, content) -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    missing_guide = json.loads(json.dumps(original))
    missing_guide["configs"][0]["classifier"] = "imagenet-robust"
    unknown_setting = json.loads(json.dumps(original))
    unknown_setting["configs"][1]["temperature"] = 3
    bad_scale = json.loads(json.dumps(original))
    bad_scale["configs"][1]["scale"] = "strong"
    other_models = {**original, "bundle": "imagenet128", "models": {"source": str(tmp_path / "gone")}}
    cases = {
        "not there": (tmp_path / "absent.json", "does not exist"),
        "not JSON": (write("a.json", "seeds: [1, 2]\n"), "not JSON"),
        "a list": (write("b.json", [1, 2]), "needs a list \"configs\""),
        "no configs": (write("c.json", {"seeds": [1]}), "needs a list \"configs\""),
        "unknown guide": (write("d.json", missing_guide), "guided by 'imagenet-robust', which the loaded models"),
        "unknown setting": (write("e.json", unknown_setting), "unknown guidance settings ['temperature']"),
        "bad scale": (write("f.json", bad_scale), "scale must be a finite number"),
        "other models": (write("g.json", other_models), "was made with the models 'imagenet128'"),
    }
    for what, (path, message) in cases.items():
        assert run("create", "--db", db_path, "--name", "x", "--from-run", path, "--pairs", "1") == 2, what
        assert message in capsys.readouterr().err, what
        assert not db_path.exists(), what  # refused before the database was opened
    assert run("create", "--db", db_path, "--name", "x", "--from-run", run_config, "--columns", "vanilla s=2",
               "--pairs", "1") == 2
    assert "at least two different columns" in capsys.readouterr().err
    assert run("create", "--db", db_path, "--name", "x", "--from-run", run_config, "--columns", "robust", "unguided",
               "--pairs", "1") == 2
    assert "has no column(s) ['robust']; its columns: ['vanilla s=2', 'robust-ema', 'unguided']" in \
        capsys.readouterr().err
    assert run("create", "--db", db_path, "--name", "x", "--from-run", run_config, "--methods", "vanilla:1",
               "robust:1") == 2
    assert "--from-run takes the columns, steps and sampler from the run; drop --methods" in capsys.readouterr().err
    assert not db_path.exists()
    # with an existing study database: a refused run leaves it as it was
    assert run("create", "--db", db_path, "--name", "first", "--from-run", run_config, "--pairs", "1",
               "--per-rater", "1") == 0
    before = _dump(db_path)
    assert run("create", "--db", db_path, "--name", "second", "--from-run", cases["unknown guide"][0]) == 2
    assert _dump(db_path) == before
