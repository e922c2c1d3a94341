"""Study generation in worker processes (engine.parallel_sampling, survey create --workers):
the same (class, seed) units and the same pixels as one process sampling the same batches,
progress that reaches the total, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.parallel_sampling import auto_workers, split_batches
from survey.create import StudyError, units_from_configs


def test_split_batches_cover_every_unit_once_and_feed_every_worker():
    for n, size, workers in [(40, 64, 2), (7, 2, 3), (1, 16, 4), (100, 16, 2), (33, 10, 1)]:
        ranges = split_batches(n, size, workers)
        flat = [i for r in ranges for i in r]
        assert flat == list(range(n))
        assert max(len(r) for r in ranges) <= size
        assert len(ranges) >= min(workers, n)
        assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1  # the workers finish together
    assert [len(r) for r in split_batches(200, 64, 2)] == [50, 50, 50, 50]
    with pytest.raises(ValueError):
        split_batches(0, 4, 2)


def test_auto_workers_one_per_core_but_not_for_a_handful_of_pairs_or_a_gpu(monkeypatch):
    import engine.parallel_sampling as ps

    monkeypatch.setattr(ps, "available_cores", lambda: 4)
    assert auto_workers(200, "cpu") == 4
    assert auto_workers(40, "cpu") == 2   # at most one worker per 16 pairs
    assert auto_workers(5, "cpu") == 1
    assert auto_workers(200, "cuda") == 1


def _pixels(units):
    return {(m, img.seed, img.class_label): img.pixels for unit in units for m, img in unit.items()}


def test_workers_give_the_pixels_of_one_process_sampling_the_same_batches(tiny_bundle):
    configs = [tiny_bundle.default_config("vanilla", name="vanilla", scale=0.5),
               tiny_bundle.default_config("robust", name="robust", scale=1.0)]
    seen: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each; match it for bit-equal pixels
    try:
        # 6 units over 2 workers: batches of 3 (split_batches); one process with batch size 3 does the same
        parallel = units_from_configs(tiny_bundle, configs, 6, seed=3, respacing="4", batch_size=16, workers=2,
                                      progress=lambda done, total: seen.append(done / total))
        serial = units_from_configs(tiny_bundle, configs, 6, seed=3, respacing="4", batch_size=3, workers=1)
    finally:
        torch.set_num_threads(threads)
    a, b = _pixels(parallel), _pixels(serial)
    assert a.keys() == b.keys() and len(a) == 12
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    # every image records the batch it came from, so regenerate replays it
    batches = {tuple(img.config["batch"]["seeds"]) for unit in parallel for img in unit.values()}
    assert len(batches) == 2 and all(len(s) == 3 for s in batches)
    assert seen[0] == 0 and seen[-1] == 1.0 and seen == sorted(seen)
    # regenerate replays a worker's batch with its one thread, whatever the caller's thread count
    from survey.create import regenerate

    some = parallel[4]["robust"]
    assert some.config["batch"]["threads"] == 1
    torch.set_num_threads(2)
    try:
        assert np.array_equal(regenerate(tiny_bundle, some.config), some.pixels)
    finally:
        torch.set_num_threads(threads)
    # guidance changed the picture: the two methods differ (the test would pass on copies otherwise)
    assert any(not np.array_equal(u["vanilla"].pixels, u["robust"].pixels) for u in parallel)


def test_workers_refused_without_a_bundle_folder_or_below_one(tiny_bundle, monkeypatch):
    configs = [tiny_bundle.default_config("vanilla", name="a"), tiny_bundle.default_config("robust", name="b")]
    with pytest.raises(StudyError, match="at least 1"):
        units_from_configs(tiny_bundle, configs, 2, workers=0)
    monkeypatch.setattr(tiny_bundle, "source", None)
    with pytest.raises(StudyError, match="--workers 1"):
        units_from_configs(tiny_bundle, configs, 2, workers=2)


def test_a_taken_name_is_refused_before_any_image_is_generated(tmp_path, tiny_bundle_dir, capsys):
    from survey.cli import main

    db = str(tmp_path / "s.db")
    base = ["create", "--db", db, "--from-bundle", str(tiny_bundle_dir), "--methods", "vanilla:0.5", "robust:1",
            "--respacing", "2", "--workers", "1"]
    assert main([*base, "--name", "one", "--pairs", "2"]) == 0
    assert "generating with 1 process(es)" in capsys.readouterr().err
    assert main([*base, "--name", "one", "--pairs", "2"]) != 0
    err = capsys.readouterr().err
    assert "already exists" in err and "generating" not in err  # refused before the bar started


def test_guided_ddim_from_the_last_step_warns_once_before_the_bar(tiny_bundle):
    import warnings as w

    from engine.sampler import GuidedDDIMWarning

    configs = [tiny_bundle.default_config("robust", name="robust")]
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        units_from_configs(tiny_bundle, configs, 4, respacing="3", sampler="ddim", batch_size=1, workers=1)
    assert [str(c.message) for c in caught if c.category is GuidedDDIMWarning].__len__() == 1
