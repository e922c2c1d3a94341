"""`python -m survey` end to end on a real SQLite file: init, create (bundle / npz), invite,
report (database and CSV give the same figures), export, power, info, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from survey import flow
from survey.cli import main
from survey.create import find_study
from survey.db import open_db

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def vote_everything(db_path: Path, study: str, raters: int) -> None:
    """Raters answer at random, except gold pairs: all but the last rater pick the intact
    image; the last rater answers Same to everything (and so fails every gold pair)."""
    from sqlalchemy import select

    from survey.models import Impression, Pair

    db = open_db(db_path)
    study_id = find_study(db, study).id
    rng = np.random.default_rng(0)
    invited = flow.invite(db, study_id, count=raters)
    for k, rater in enumerate(invited):
        flow.consent(db, rater.invite_token)
        while (state := flow.state(db, rater.invite_token)).status == "pair":
            with db.session() as s:
                impression, pair = s.execute(select(Impression, Pair).join(Pair, Pair.id == Impression.pair_id)
                                             .where(Impression.token == state.showing.token)).one()
            if k == len(invited) - 1:
                answer = "S"
            elif pair.kind == "gold":
                answer = "L" if impression.left_image_id == pair.gold_image_id else "R"
            else:
                answer = "LRS"[int(rng.integers(3))]
            flow.record_vote(db, rater.invite_token, state.showing.token, answer)
    db.dispose()


def test_help_lists_commands_and_examples(capsys):
    # (`python -m survey` itself runs as a subprocess in tests/test_survey_server.py)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for word in ("init", "create", "invite", "serve", "report", "export", "power", "--from-bundle", "examples:"):
        assert word in out


def test_bundle_study_report_and_export(tmp_path, tiny_bundle_dir, capsys):
    db = tmp_path / "s.db"
    assert run("init", "--db", db) == 0
    assert run("create", "--db", db, "--name", "tiny", "--from-bundle", tiny_bundle_dir, "--methods", "vanilla:0.5",
               "robust:1.0", "--pairs", "4", "--respacing", "10", "--per-rater", "4", "--gold-rate", "0.25",
               "--repeat-rate", "0.25", "--device", "cpu", "--exclude-gold-below", "0.5") == 0
    assert "4 main, 1 gold, 4 repeat pairs" in capsys.readouterr().out
    assert run("invite", "--db", db, "--name", "Ann O'Neil", "--name", "x'); DROP TABLE raters;--",
               "--base-url", "http://lab:7860/survey") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Ann O'Neil\thttp://lab:7860/survey/r/")
    vote_everything(db, "tiny", raters=5)
    assert run("report", "--db", db, "--bootstrap", "50") == 0
    text = capsys.readouterr().out
    assert "## robust vs vanilla" in text and "Table 2" in text and "users who selected a side" in text
    assert "gold accuracy below 50%" in text and "study settings at creation" in text
    assert "- gold accuracy: 1 rater(s) excluded" in text and "Raters 5 -> 4" in text
    assert run("report", "--db", db, "--json", "--bootstrap", "0", "--denominator", "all") == 0
    from_db = json.loads(capsys.readouterr().out)
    assert from_db["comparisons"][0]["table2"]["denominator"] == "all"
    csv = tmp_path / "votes.csv"
    assert run("export", "--db", db, "--out", csv) == 0
    assert run("report", "--votes", csv, "--json", "--bootstrap", "0", "--denominator", "all", "--exclude-gold-below",
               "0.5") == 0
    from_csv = json.loads(capsys.readouterr().out)
    assert from_csv["comparisons"] == from_db["comparisons"]
    assert from_csv["quality"]["position_bias"] == from_db["quality"]["position_bias"]
    assert from_csv["exclusions"]["excluded"] == from_db["exclusions"]["excluded"]
    assert from_csv["exclusions"]["source"] == "command line"
    import csv as csv_module
    exported = list(csv_module.DictReader(csv.open(encoding="utf-8")))
    for row in exported:  # times are written as UTC, with the offset spelled out
        assert row["shown_at"].endswith("+00:00") and row["answered_at"].endswith("+00:00")
        assert row["shown_at"] <= row["answered_at"]
    header = csv.read_text().splitlines()[0].split(",")
    for column in ("pair_id", "rater_id", "left_method", "right_method", "answer", "pair_kind", "latency_ms",
                   "gold_correct_method", "source_pair_id", "shown_at", "answered_at"):
        assert column in header
    assert run("info", "--db", db) == 0
    assert "tiny" in capsys.readouterr().out


def test_npz_study_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 12)
    np.savez(tmp_path / "a.npz", rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), labels)
    np.savez(tmp_path / "b.npz", rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), labels)
    np.savez(tmp_path / "bad.npz", rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), (labels + 1) % 3)
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    db = tmp_path / "s.db"
    assert run("create", "--db", db, "--name", "files", "--from-npz", tmp_path / "a.npz", tmp_path / "b.npz",
               "--names", "vanilla", "robust", "--class-names", tmp_path / "classes.txt", "--pairs", "10") == 0
    assert (tmp_path / "s_media").is_dir()
    assert run("report", "--db", db) == 2
    assert "no votes to analyse yet" in capsys.readouterr().err
    assert run("create", "--db", db, "--name", "bad", "--from-npz", tmp_path / "a.npz", tmp_path / "bad.npz") == 2
    assert "labels differ at 12 of 12 indices" in capsys.readouterr().err
    assert run("create", "--db", db, "--name", "files", "--from-npz", tmp_path / "a.npz", tmp_path / "b.npz") == 2
    assert "already exists" in capsys.readouterr().err
    assert run("report", "--votes", tmp_path / "missing.csv") == 2
    assert "does not exist" in capsys.readouterr().err
    assert run("invite", "--db", db, "--study", "nope") == 2
    assert "no study 'nope'" in capsys.readouterr().err
    # commands that only read never create a database where --db points by mistake
    for command in (["report", "--db"], ["export", "--db"], ["invite", "--db"], ["info", "--db"]):
        assert run(*command, tmp_path / "typo.db") == 2
        assert "no survey database at" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    assert run("report", "--db", tmp_path / "notes.txt") == 2
    assert "cannot read" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "not a database\n" * 100
    import sqlite3
    with sqlite3.connect(tmp_path / "other.db") as other:  # somebody else's SQLite database
        other.execute("CREATE TABLE things (x)")
    assert run("export", "--db", tmp_path / "other.db") == 2
    assert "holds no survey database" in capsys.readouterr().err
    with sqlite3.connect(tmp_path / "other.db") as other:
        assert [t for (t,) in other.execute("SELECT name FROM sqlite_master")] == ["things"]


def answer_all(db_path: Path, study: str, raters: int, answer: str = "S") -> None:
    """``raters`` raters answer every item with ``answer`` (Same fails every gold pair)."""
    db = open_db(db_path)
    for rater in flow.invite(db, find_study(db, study).id, count=raters):
        flow.consent(db, rater.invite_token)
        while (state := flow.state(db, rater.invite_token)).status == "pair":
            flow.record_vote(db, rater.invite_token, state.showing.token, answer)
    db.dispose()


def test_report_when_the_rules_remove_every_rater(tmp_path, capsys):
    """The README's rules (--exclude-gold-below 0.75, one gold item per rater) on a small
    study where both raters miss their gold item: the report names each rater, the rule
    and the value, and still shows the figures, marked as unfiltered."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 8)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", rng.integers(0, 255, (8, 8, 8, 3), dtype=np.uint8), labels)
    db = tmp_path / "s.db"
    assert run("create", "--db", db, "--name", "small", "--from-npz", tmp_path / "a.npz", tmp_path / "b.npz",
               "--names", "vanilla", "robust", "--per-rater", "4", "--gold-rate", "0.25",
               "--exclude-gold-below", "0.75") == 0
    answer_all(db, "small", raters=2)
    capsys.readouterr()
    assert run("report", "--db", db, "--bootstrap", "0") == 0
    text = capsys.readouterr().out
    assert "**UNFILTERED FIGURES:** the exclusion rules removed every rater (2 of 2)" in text
    for rater in ("1", "2"):
        assert f"| {rater} | gold accuracy | 0 | gold accuracy 0 % (0 of 1 gold answers correct) is below 75 % |" in text
    assert "## robust vs vanilla" in text and "10 answers (8 on" in text
    assert run("report", "--db", db, "--bootstrap", "0", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unfiltered"] and report["exclusions"]["raters_after"] == 0
    assert [(d["rater"], d["rule"], d["value"]) for d in report["exclusions"]["details"]] == \
        [("1", "gold accuracy", 0.0), ("2", "gold accuracy", 0.0)]
    assert run("report", "--db", db, "--bootstrap", "0", "--no-exclusions") == 0
    text = capsys.readouterr().out
    assert "UNFILTERED" not in text and "not applied" in text and "2 rater(s) would be excluded" in text
    assert "Raters 2 -> 2, answers 10 -> 10" in text


def test_power_command(capsys):
    assert run("power", "--paper") == 0
    out = capsys.readouterr().out
    assert "decisive answers needed" in out and "pairs at 25.09 answers per pair" in out
    assert run("power", "--effect", "0.6", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    from survey.power import required_sample_size
    assert plan == required_sample_size(0.6).to_dict() and plan["achieved_power"] >= 0.8
    assert run("power", "--effect", "0.5") == 2
    assert "differ from 0.5" in capsys.readouterr().err


COMMANDS = ("init", "create", "invite", "open-link", "serve", "report", "export", "power", "info")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples:\n", 1)
    assert len(examples) == 2, text
    assert f"python -m survey {command} " in examples[1]
    import argparse

    from survey.cli import build_parser
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    undocumented = [a.option_strings for a in sub.choices[command]._actions if a.option_strings and not a.help]
    assert undocumented == []


def test_serve_warns_about_a_command_line_password_and_never_prints_it(tmp_path, monkeypatch, capsys):
    import survey.web

    started = {}
    monkeypatch.setattr(survey.web, "serve", lambda *args, **kw: started.setdefault("args", args))
    monkeypatch.delenv("SURVEY_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("RCG_ADMIN_PASSWORD", raising=False)
    assert run("serve", "--db", tmp_path / "s.db") == 2  # a mistyped --db is not served as an empty survey
    assert "no survey database at" in capsys.readouterr().err and not (tmp_path / "s.db").exists()
    assert run("init", "--db", tmp_path / "s.db") == 0
    assert run("serve", "--db", tmp_path / "s.db", "--admin-password", "s3cret-pw") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "RCG_ADMIN_PASSWORD" in err and "s3cret-pw" not in err
    assert started.pop("args")[4] == "s3cret-pw"
    monkeypatch.setenv("RCG_ADMIN_PASSWORD", "from-env-pw")
    assert run("serve", "--db", tmp_path / "s.db") == 0
    out = capsys.readouterr()
    assert "warning" not in out.err and "note" not in out.err and "from-env-pw" not in out.err + out.out
    assert "results view on" in out.err and started.pop("args")[4] == "from-env-pw"
    # the old name still works, with a note naming the new one
    monkeypatch.delenv("RCG_ADMIN_PASSWORD")
    monkeypatch.setenv("SURVEY_ADMIN_PASSWORD", "old-name-pw")
    assert run("serve", "--db", tmp_path / "s.db") == 0
    err = capsys.readouterr().err
    assert "SURVEY_ADMIN_PASSWORD is deprecated; use RCG_ADMIN_PASSWORD" in err and "old-name-pw" not in err
    assert started.pop("args")[4] == "old-name-pw"
    # both set and different: the new name wins, and the note says so
    monkeypatch.setenv("RCG_ADMIN_PASSWORD", "new-name-pw")
    assert run("serve", "--db", tmp_path / "s.db") == 0
    assert "using RCG_ADMIN_PASSWORD" in capsys.readouterr().err and started.pop("args")[4] == "new-name-pw"


def test_db_from_the_environment(tmp_path, monkeypatch, capsys):
    """RCG_SURVEY_DB (shared with the lab) is the default --db, so a database URL with a
    password stays off the command line."""
    monkeypatch.setenv("RCG_SURVEY_DB", str(tmp_path / "env.db"))
    assert run("init") == 0
    assert (tmp_path / "env.db").is_file() and "schema at revision" in capsys.readouterr().out
    monkeypatch.delenv("RCG_SURVEY_DB")
    with pytest.raises(SystemExit) as done:
        run("init")
    assert done.value.code == 2 and "--db" in capsys.readouterr().err


def test_no_example_or_help_puts_a_password_on_the_command_line(capsys):
    """Every example of the survey, the lab and the README gives secrets through the
    environment."""
    import re

    from app.__main__ import build_parser as lab_parser
    from survey.cli import EXAMPLES, build_parser
    texts = [build_parser().format_help(), lab_parser().format_help(), *EXAMPLES.values(),
             (ROOT / "README.md").read_text()]
    commands = [line for text in texts for line in text.splitlines()
                if re.search(r"python -m |rcg-(lab|survey|train)", line)]
    assert len(commands) > 40
    for line in commands:
        assert not re.search(r"--(admin|lab)-password", line), line
        assert "SURVEY_ADMIN_PASSWORD=" not in line, line


def test_a_bundle_study_defaults_to_the_bundles_survey_section(tmp_path, tiny_bundle_dir, capsys):
    """Without --methods, `create --from-bundle` compares what the bundle's manifest names
    (``survey.methods``, chosen where the vanilla-vs-robust contrast shows), in its mode and
    at its steps; a malformed section is refused with what to write."""
    import shutil

    from survey.create import find_study
    from survey.db import open_db

    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["survey"] = {"methods": ["v=vanilla:3/mode=unconditional", "r=robust:3/mode=unconditional"],
                          "respacing": "5"}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    db = tmp_path / "s.db"
    assert run("init", "--db", db) == 0
    assert run("create", "--db", db, "--name", "dflt", "--from-bundle", folder, "--pairs", "2", "--per-rater", "2",
               "--device", "cpu") == 0
    study = find_study(open_db(str(db)), "dflt")
    assert study.methods == ["v", "r"]
    with open_db(str(db)).session() as session:
        from sqlalchemy import select

        from survey.models import Image
        config = session.scalars(select(Image.config).limit(1)).one()
    assert config["guidance"]["denoiser_mode"] == "unconditional" and config["guidance"]["scale"] == 3.0
    assert config["run"]["respacing"] == "5"

    manifest["survey"] = {"methods": ["vanilla:1"]}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="at least two column specs"):
        run("create", "--db", db, "--name", "bad", "--from-bundle", folder, "--pairs", "2", "--device", "cpu")
