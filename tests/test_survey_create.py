"""Creating studies: from the engine (shared-seed sampler), from .npz sample files and from
folders of PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from survey.create import (GOLD_BROKEN, GOLD_WRONG_CLASS, MethodSpec, SourceImage, StudyError, StudyPlan, create_study,
                           units_from_bundle, units_from_folders, units_from_npz)
from survey.db import open_db
from survey.media import read_png, save_png
from survey.models import Image, Pair


@pytest.fixture()
def db(tmp_path):
    database = open_db(tmp_path / "s.db")
    yield database
    database.dispose()


def test_method_spec_parsing():
    assert MethodSpec.parse("vanilla:0.5") == MethodSpec("vanilla", "vanilla", 0.5)
    assert MethodSpec.parse("strong=robust:2") == MethodSpec("strong", "robust", 2.0)
    assert MethodSpec.parse("unguided") == MethodSpec("unguided", "unguided", None)
    with pytest.raises(StudyError, match="label=]guide"):
        MethodSpec.parse("robust:one")


def test_study_from_bundle_shares_seed_and_regenerates(db, tmp_path, tiny_bundle):
    from engine.data import to_uint8
    from engine.guidance import GuidanceConfig

    specs = [MethodSpec.parse("vanilla:0.5"), MethodSpec.parse("robust:1.0")]
    units = units_from_bundle(tiny_bundle, specs, 3, seed=7, respacing="10", batch_size=2)
    media = tmp_path / "media"
    study_id = create_study(db, media, "bundle", units, ["vanilla", "robust"], StudyPlan(per_rater=3, gold_rate=0.5))
    with db.session() as s:
        images = {im.id: im for im in s.scalars(select(Image).where(Image.study_id == study_id))}
        mains = s.scalars(select(Pair).where(Pair.kind == "main")).all()
        golds = s.scalars(select(Pair).where(Pair.kind == "gold")).all()
    assert len(mains) == 3 and len(golds) == 2
    for pair in mains:
        a, b = images[pair.image_a_id], images[pair.image_b_id]
        assert (a.method, b.method) == ("vanilla", "robust")
        assert a.seed == b.seed == a.config["seed"] and a.class_label == b.class_label == a.config["label"]
        assert a.class_name == tiny_bundle.class_names[a.class_label]
        assert a.config["guidance"]["scale"] == 0.5 and b.config["guidance"]["scale"] == 1.0
        assert b.config["run"]["respacing"] == "10" and "sampler" in b.config["run"]
    # any stored image can be regenerated from its stored config alone (one at a time, not in its batch)
    image = images[mains[-1].image_b_id]
    run = image.config["run"]
    result = tiny_bundle.sample([GuidanceConfig.from_dict(image.config["guidance"])], labels=[image.config["label"]],
                                seeds=[image.config["seed"]], respacing=run["respacing"], sampler=run["sampler"],
                                eta=run["eta"])
    again = to_uint8(result.images[image.method]).permute(0, 2, 3, 1).numpy()[0]
    stored = read_png(media / image.file_name)
    assert stored.shape == (28, 28, 1)
    assert np.array_equal(again, stored)
    gold_methods = {images[g.image_b_id].method for g in golds}
    assert gold_methods <= {GOLD_BROKEN, GOLD_WRONG_CLASS}
    assert all(g.gold_image_id == g.image_a_id for g in golds)


def test_bundle_study_refuses_unknown_guides(tiny_bundle):
    with pytest.raises(StudyError, match="unknown guide"):
        units_from_bundle(tiny_bundle, [MethodSpec.parse("vanilla"), MethodSpec.parse("nope:1")], 1)
    with pytest.raises(StudyError, match="labels must differ"):
        units_from_bundle(tiny_bundle, [MethodSpec.parse("robust:1"), MethodSpec.parse("robust:2")], 1)


def write_npz(path, images, labels):
    np.savez(path, images, labels)
    return path


def test_study_from_npz_pairs_by_index(db, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([3, 1, 4, 1, 5])
    a = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    units = units_from_npz(write_npz(tmp_path / "vanilla.npz", a, labels), write_npz(tmp_path / "robust.npz", b, labels),
                           class_names=[f"name{i}" for i in range(6)])
    assert [u["vanilla"].class_name for u in units] == ["name3", "name1", "name4", "name1", "name5"]
    assert np.array_equal(units[2]["robust"].pixels, b[2]) and units[2]["vanilla"].config["index"] == 2
    create_study(db, tmp_path / "media", "npz", units)
    subset = units_from_npz(tmp_path / "vanilla.npz", tmp_path / "robust.npz", limit=2, seed=1)
    assert len(subset) == 2


def test_npz_with_different_labels_is_refused(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    write_npz(tmp_path / "a.npz", images, np.array([0, 1, 2, 3]))
    write_npz(tmp_path / "b.npz", images, np.array([0, 1, 9, 3]))
    with pytest.raises(StudyError, match=r"labels differ at 1 of 4 indices \(#2: 2 vs 9\)"):
        units_from_npz(tmp_path / "a.npz", tmp_path / "b.npz")
    write_npz(tmp_path / "c.npz", images[:3], np.array([0, 1, 2]))
    with pytest.raises(StudyError, match="holds 4 images but"):
        units_from_npz(tmp_path / "a.npz", tmp_path / "c.npz")
    np.savez(tmp_path / "nolabels.npz", images)
    with pytest.raises(StudyError, match="no arr_1"):
        units_from_npz(tmp_path / "a.npz", tmp_path / "nolabels.npz")


def test_study_from_folders_matched_by_name(db, tmp_path):
    for folder in ("vanilla", "robust"):
        for name in ("3_000.png", "7_001.png"):
            (tmp_path / folder).mkdir(exist_ok=True)
            PILImage.fromarray(np.full((8, 8), 40 if folder == "vanilla" else 200, np.uint8), "L").save(
                tmp_path / folder / name)
    units = units_from_folders(tmp_path / "vanilla", tmp_path / "robust")
    assert [(u["vanilla"].class_name, u["vanilla"].class_label) for u in units] == [("3", 3), ("7", 7)]
    assert units[0]["robust"].pixels[0, 0, 0] == 200
    create_study(db, tmp_path / "media", "folders", units)
    (tmp_path / "robust" / "9_002.png").write_bytes((tmp_path / "robust" / "3_000.png").read_bytes())
    with pytest.raises(StudyError, match=r"1 only in .*robust.*9_002.png"):
        units_from_folders(tmp_path / "vanilla", tmp_path / "robust")


def test_duplicate_study_name_is_refused(db, tmp_path):
    units = [{m: SourceImage(np.zeros((4, 4), np.uint8), m, "c") for m in ("x", "y")}]
    create_study(db, tmp_path / "m", "same", units)
    with pytest.raises(StudyError, match="already exists"):
        create_study(db, tmp_path / "m", "same", units)


def test_a_failed_creation_leaves_no_study_and_no_image_files(db, tmp_path, monkeypatch):
    """All or nothing: a failure after some images were written (here the database refusing the
    pairs) rolls the study back and removes the files; a later creation works as usual."""
    import survey.create as create_mod

    rng = np.random.default_rng(0)
    units = [{m: SourceImage(rng.integers(0, 255, (8, 8), dtype=np.uint8), m, "c", 1, seed) for m in ("x", "y")}
             for seed in range(3)]
    media = tmp_path / "media"

    class BrokenPair:
        def __init__(self, **_kw):
            raise RuntimeError("disk full")

    saved = []

    def counting_save_png(pixels, folder):
        stored = save_png(pixels, folder)
        saved.append(stored.file_name)
        return stored

    with monkeypatch.context() as patch:
        patch.setattr(create_mod, "Pair", BrokenPair)
        patch.setattr(create_mod, "save_png", counting_save_png)
        with pytest.raises(RuntimeError, match="disk full"):
            create_study(db, media, "s", units)
    assert len(saved) == 6  # every image was written before the failure ...
    assert list(media.glob("*")) == []  # ... and none is left
    with db.session() as session:
        assert session.scalars(select(Image)).all() == []
    create_study(db, media, "s", units)  # the name is free, nothing half-made is in the way
    assert len(list(media.glob("*.png"))) == 6


def test_an_error_after_the_commit_keeps_the_stored_studys_files(db, tmp_path, monkeypatch):
    """If the study did reach the database (the error came after the commit), its image
    files stay: a study without its images would be worse than an orphan file."""
    import survey.create as create_mod

    units = [{m: SourceImage(np.full((4, 4), 9, np.uint8), m, "c", 1, 0) for m in ("x", "y")}]
    real = create_mod.SurveyDB.session

    def session_then_interrupt(self):
        import contextlib

        @contextlib.contextmanager
        def wrapped():
            with real(self) as session:
                yield session
            if not getattr(self, "_interrupted", False):
                self._interrupted = True
                raise KeyboardInterrupt  # after the commit of the study's transaction

        return wrapped()

    with monkeypatch.context() as patch:
        patch.setattr(create_mod.SurveyDB, "session", session_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            create_study(db, tmp_path / "media", "kept", units)
    with db.session() as session:
        assert [s.name for s in session.scalars(select(create_mod.Study)).all()] == ["kept"]
    assert len(list((tmp_path / "media").glob("*.png"))) == 2
