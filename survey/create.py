"""Creating a study: images of two (or more) methods that share class and seed, put in
pairs, plus optional gold (attention check) and repeat pairs.

Three sources of images, each giving "units" (one image per method, all of one class
and seed):

- :func:`units_from_bundle`: generate with the engine's shared-seed sampler (the
  paper's protocol: same class label and same random seed for every method);
- :func:`units_from_npz`: two guided-diffusion sample files (``arr_0`` uint8 NHWC,
  ``arr_1`` labels) made with the same seeds and labels, paired by index;
- :func:`units_from_folders`: two folders of images matched by relative file name.

:func:`create_study` stores the images under random names with their full generation
config and writes the pairs:

- ``main``: for every unit, every combination of two methods (one pair per unit for
  two methods);
- ``repeat``: one row per main pair, shown only to a rater who already answered that
  main pair, with the sides flipped (``repeat_per_rater`` of them per rater);
- ``gold``: an intact image against a broken copy (blocks shuffled, noise) or against
  an image of another class, shown with the intact image's class name; the intact
  image is the correct answer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sqlalchemy import select

from engine.columns import GuidanceSpec

from .db import SurveyDB, utcnow
from .media import as_hwc_uint8, break_image, read_png, save_png
from .models import Image, Pair, Study
from .quality import ExclusionRules

QUESTION = "Which image is more realistic, and more aligned to the description?"
DEFAULT_PER_RATER = 40
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
GOLD_BROKEN, GOLD_WRONG_CLASS = "gold:broken", "gold:wrong-class"
_shuffle = random.SystemRandom().shuffle


class StudyError(ValueError):
    """A study cannot be created as asked; the message says what to change."""


@dataclass
class SourceImage:
    """One image to store: uint8 pixels (H, W[, C]) and where it came from."""

    pixels: np.ndarray
    method: str
    class_name: str
    class_label: int | None = None
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)


Unit = dict  # method name -> SourceImage, every image of the unit has the same class and seed


@dataclass(frozen=True)
class MethodSpec(GuidanceSpec):
    """A method on the command line: an ``engine.guidance`` column spec, usually
    ``[label=]guide[:scale]``, e.g. ``vanilla:0.5``, ``robust:1``, ``strong=robust:2``,
    ``unguided`` or ``x0=nonrobust@x0+adam:0.05``."""

    @property
    def label(self) -> str:
        return self.name

    @property
    def guide(self) -> str:
        return self.kind

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        try:
            return super().parse(text)
        except ValueError as exc:
            raise StudyError(f"cannot read method {text!r} ({exc}); write [label=]guide[:scale], e.g. vanilla:0.5 or "
                             "robust:1.0") from None


def read_class_names(path: str | Path | None) -> list[str] | None:
    """Class names from a JSON list or a text file with one name per line."""
    if path is None:
        return None
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        names = json.loads(text)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or not all(isinstance(n, str) for n in names):
        raise StudyError(f"{path} must hold class names: a JSON list of strings or one name per line")
    return names


# --------------------------------------------------------------------------- sources
def units_from_bundle(bundle: Any, specs: Sequence[MethodSpec], n_units: int, seed: int = 0, *,
                      respacing: str | None = None, sampler: str = "ddpm", batch_size: int = 16,
                      bundle_path: str | None = None, workers: int = 1,
                      progress: Callable[[int, int], None] | None = None) -> list[Unit]:
    """Generate ``n_units`` units with the engine: class labels drawn uniformly at random
    and one random seed per unit (both from ``seed``); every method samples the same
    (class, seed), so the methods share x_T and every step's noise."""
    from engine.data import to_uint8

    if len(specs) < 2:
        raise StudyError("a study compares at least two methods, e.g. --methods vanilla:0.5 robust:1.0")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise StudyError(f"method labels must differ, got {labels}; name them, e.g. weak=robust:0.5 strong=robust:2")
    if n_units < 1:
        raise StudyError("--pairs must be at least 1")
    try:
        configs = [spec.to_config(bundle.guide_info) for spec in specs]
    except ValueError as exc:
        raise StudyError(str(exc)) from exc
    return units_from_configs(bundle, configs, n_units, seed, respacing=respacing, sampler=sampler,
                              batch_size=batch_size, bundle_path=bundle_path, workers=workers, progress=progress)


def units_from_configs(bundle: Any, configs: Sequence[Any], n_units: int, seed: int = 0, *,
                       respacing: str | None = None, sampler: str = "ddpm", eta: float = 0.0, batch_size: int = 16,
                       bundle_path: str | None = None, workers: int = 1,
                       progress: Callable[[int, int], None] | None = None) -> list[Unit]:
    """Generate ``n_units`` units, one image per :class:`engine.guidance.GuidanceConfig`
    (its ``name`` is the method), classes and seeds drawn from ``seed``. Each image
    stores the config, class, seed and run settings that regenerate it. ``progress(done,
    total)`` is called with 0 first, then after every sampling step (``done`` counts units
    and may be fractional within a batch).

    ``workers`` > 1 samples the batches in that many single-thread processes
    (``engine.parallel_sampling``; faster than threads on a small CPU), each loading the
    bundle from its folder (``bundle.source``) at the bundle's device and precision."""
    if n_units < 1:
        raise StudyError("--pairs must be at least 1")
    if workers < 1:
        raise StudyError(f"--workers must be at least 1, got {workers}")
    import warnings

    from engine.sampler import GuidedDDIMWarning, guided_ddim_from_last_step

    rng = np.random.default_rng(seed)
    classes = rng.integers(0, bundle.num_classes, n_units).tolist()
    seeds = rng.choice(2**31 - 1, size=n_units, replace=False).tolist()
    units: list[Unit] = []
    if respacing is None and hasattr(bundle, "default_respacing_for"):
        respacing = bundle.default_respacing_for(sampler)
    ddim_warning = guided_ddim_from_last_step(bundle.diffusion(respacing), configs, sampler)
    if ddim_warning is not None:  # once, here, before the progress bar (not once per batch or worker)
        warnings.warn(ddim_warning, GuidedDDIMWarning, stacklevel=2)
    if progress is not None:
        progress(0, n_units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuidedDDIMWarning)
        if workers > 1:
            sampled = _sample_in_workers(bundle, configs, classes, seeds, batch_size, workers, respacing, sampler,
                                         eta, progress)
        else:
            sampled = _sample_here(bundle, configs, classes, seeds, batch_size, respacing, sampler, eta, progress)
    import torch

    threads = 1 if workers > 1 else torch.get_num_threads()
    for batch_labels, batch_seeds, arrays, run in sampled:
        for i, (label, s) in enumerate(zip(batch_labels, batch_seeds)):
            unit = {}
            # the batch it was sampled in and the CPU threads: batched (and multi-threaded) network calls
            # round differently, so replaying the batch (regenerate) gives the stored pixels bit for bit
            batch = {"configs": [c.to_dict() for c in configs], "labels": [int(v) for v in batch_labels],
                     "seeds": [int(v) for v in batch_seeds], "index": i, "threads": threads}
            for c in configs:
                config = {"source": "bundle", "bundle": getattr(bundle, "name", ""), "bundle_path": bundle_path,
                          "guidance": c.to_dict(), "seed": int(s), "label": int(label), "run": run, "batch": batch}
                unit[c.name] = SourceImage(arrays[c.name][i], c.name, bundle.class_names[label], int(label), int(s),
                                           config)
            units.append(unit)
    if progress is not None:
        progress(n_units, n_units)
    return units


# one sampled batch: its labels, seeds, uint8 images (N, H, W, C) per column, run settings
Sampled = tuple[list, list, dict, dict]


def _sample_here(bundle: Any, configs: Sequence[Any], classes: list, seeds: list, batch_size: int,
                 respacing: str | None, sampler: str, eta: float,
                 progress: Callable[[float, int], None] | None) -> list[Sampled]:
    from engine.parallel_sampling import batch_result

    n_units, out = len(classes), []
    for start in range(0, n_units, batch_size):
        batch_labels, batch_seeds = classes[start:start + batch_size], seeds[start:start + batch_size]

        def on_step(k: int, steps: int, start: int = start, size: int = len(batch_labels)) -> None:
            progress(start + size * k / steps, n_units)  # fractional units within a batch, for the ETA

        result = bundle.sample(configs, labels=batch_labels, seeds=batch_seeds, respacing=respacing, sampler=sampler,
                               eta=eta, progress=on_step if progress is not None else None)
        stored = batch_result(result, configs)
        out.append((batch_labels, batch_seeds, stored.images, stored.run))
    return out


def _sample_in_workers(bundle: Any, configs: Sequence[Any], classes: list, seeds: list, batch_size: int, workers: int,
                       respacing: str | None, sampler: str, eta: float,
                       progress: Callable[[float, int], None] | None) -> list[Sampled]:
    from engine.parallel_sampling import sample_batches_in_processes, split_batches

    source = getattr(bundle, "source", None)
    if not source or not (Path(source) / "bundle.json").is_file():
        raise StudyError("--workers > 1 reloads the models in each worker from a bundle folder; these models have "
                         "none (e.g. --diffusers-dir): use --workers 1")
    device = str(getattr(bundle, "device", "cpu"))
    if device.startswith("cuda"):
        raise StudyError("--workers > 1 is for CPUs (one process per core); on a GPU use --workers 1 and a larger "
                         "--batch-size")
    ranges = split_batches(len(classes), batch_size, workers)
    batches = [([classes[i] for i in r], [seeds[i] for i in r]) for r in ranges]
    results = sample_batches_in_processes(
        source, configs, batches, workers=workers, device=device, precision=getattr(bundle, "precision", "fp32"),
        respacing=respacing, sampler=sampler, eta=eta,
        progress=(lambda done: progress(done, len(classes))) if progress is not None else None)
    return [(labels, batch_seeds, r.images, r.run) for (labels, batch_seeds), r in zip(batches, results)]


def regenerate(bundle: Any, config: Mapping[str, Any], single: bool = False) -> np.ndarray:
    """A stored image made by the engine (a study from a bundle or a lab run), made again
    from its stored config alone: uint8 (H, W, C).

    With the batch it was sampled in (``batch``: every column's config, the batch's classes
    and seeds, its index), the batch is sampled again and the pixels equal the stored ones
    bit for bit on the same models and device (on a CPU with the stored number of threads,
    set for the call). Without it (``single=True``, or a config
    written before batches were stored) the image is sampled alone from its guidance config,
    class and seed; it then agrees up to float rounding (batched network calls add in
    another order: at most a grey level on a few pixels)."""
    import torch

    from engine.data import to_uint8
    from engine.guidance import GuidanceConfig

    if not isinstance(config.get("guidance"), dict):
        raise StudyError("this image was not generated by the engine: its config holds no guidance settings")
    guidance = GuidanceConfig.from_dict(config["guidance"])
    run = config.get("run") or {}
    batch = config.get("batch") if not single else None
    if batch:
        configs = [GuidanceConfig.from_dict(c) for c in batch["configs"]]
        labels, seeds, index = batch["labels"], batch["seeds"], int(batch["index"])
    else:
        configs, labels, seeds, index = [guidance], [config["label"]], [config["seed"]], 0
    threads, stored = torch.get_num_threads(), (batch or {}).get("threads")
    if isinstance(stored, int) and stored >= 1:
        torch.set_num_threads(stored)
    try:
        result = bundle.sample(configs, labels=labels, seeds=seeds, respacing=run.get("respacing"),
                               sampler=run.get("sampler", "ddpm"), eta=run.get("eta", 0.0))
    finally:
        torch.set_num_threads(threads)
    return to_uint8(result.images[guidance.name]).permute(0, 2, 3, 1).numpy()[index]


@dataclass(frozen=True)
class RunPlan:
    """A side-by-side run of the lab (its ``run_config.json``) as a study: the chosen
    columns' guidance configs and the run's sampler settings; seeds are drawn afresh."""

    path: str
    configs: tuple[Any, ...]       # engine.guidance.GuidanceConfig, one per chosen column
    respacing: str | None
    sampler: str
    eta: float
    bundle_name: str | None
    bundle_source: str | None
    null_label_needed: bool

    def source(self) -> dict[str, Any]:
        return {"kind": "run", "run_config": self.path, "columns": [c.name for c in self.configs],
                "respacing": self.respacing, "sampler": self.sampler, "eta": self.eta, "bundle": self.bundle_name}


def read_run_config(path: str | Path, columns: Sequence[str] | None = None) -> RunPlan:
    """Read a lab run's ``run_config.json`` (``engine.sampler.SampleResult.run_config``
    plus the lab's extras) and pick ``columns`` (default: all, at least two). Every
    column is parsed by :meth:`engine.guidance.GuidanceConfig.from_dict`; anything that
    is not a run config raises :class:`StudyError` naming the file and the problem."""
    from engine.guidance import GuidanceConfig

    path = Path(path)
    where = f"{path}"
    if not path.is_file():
        raise StudyError(f"{where} does not exist; give the run_config.json of a lab run (its downloads)")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(f"{where} is not a run_config.json (not JSON: {exc})") from None
    if not isinstance(run, dict) or not isinstance(run.get("configs"), list) or not run["configs"]:
        raise StudyError(f"{where} is not a run_config.json: it needs a list \"configs\" of guidance configs (one per "
                         "column), as the lab writes")
    configs = []
    for i, values in enumerate(run["configs"], start=1):
        if not isinstance(values, dict):
            raise StudyError(f"{where}: column {i} is not an object of guidance settings")
        try:
            configs.append(GuidanceConfig.from_dict(values))
        except (ValueError, TypeError) as exc:
            raise StudyError(f"{where}: column {i} ({values.get('name', '?')}): {exc}") from None
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise StudyError(f"{where}: column names repeat ({names}); every column needs its own name")
    chosen = list(columns) if columns else names
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise StudyError(f"{where} has no column(s) {unknown}; its columns: {names}")
    if len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise StudyError(f"a study compares at least two different columns; the run has {names}, chosen {chosen}")
    sampler = run.get("sampler", "ddpm")
    if sampler not in ("ddpm", "ddim"):
        raise StudyError(f"{where}: sampler must be ddpm or ddim, got {sampler!r}")
    eta = run.get("eta", 0.0)
    if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise StudyError(f"{where}: eta must be a number in [0, 1], got {eta!r}")
    respacing = run.get("respacing")
    if respacing is not None and not isinstance(respacing, (str, int)):
        raise StudyError(f"{where}: respacing must be text such as \"100\" or \"ddim50\", got {respacing!r}")
    models = run.get("models") if isinstance(run.get("models"), dict) else {}
    picked = tuple(c for c in configs if c.name in chosen)
    picked = tuple(sorted(picked, key=lambda c: chosen.index(c.name)))
    return RunPlan(str(path), picked, None if respacing is None else str(respacing), sampler, float(eta),
                   run.get("bundle") if isinstance(run.get("bundle"), str) else None,
                   models.get("source") if isinstance(models.get("source"), str) else None,
                   any(c.method == "cfg" or c.denoiser_mode == "unconditional" for c in picked))


def check_run_against_bundle(plan: RunPlan, bundle: Any) -> None:
    """Refuse a run whose columns need guides, classes or a null label the bundle lacks."""
    guides = sorted(getattr(bundle, "guides", {}) or {})
    for c in plan.configs:
        if c.method == "classifier" and c.classifier not in guides:
            raise StudyError(f"{plan.path}: column {c.name!r} is guided by {c.classifier!r}, which the loaded "
                             f"models ({getattr(bundle, 'name', '?')}) lack; they have the guides {guides}. Load the "
                             "run's models with --bundle DIR")
        if c.classes is not None and any(not 0 <= k < bundle.num_classes for k in c.classes):
            raise StudyError(f"{plan.path}: column {c.name!r} names classes {list(c.classes)} outside 0.."
                             f"{bundle.num_classes - 1}")
    if plan.null_label_needed and getattr(bundle, "null_label", None) is None:
        raise StudyError(f"{plan.path}: a column needs the denoiser's null label (classifier-free or unconditional), "
                         "which the loaded models lack")


def check_name_free(db: SurveyDB, name: str) -> str:
    """``name`` validated and not yet used in ``db`` (checked before any image is generated,
    so a taken name costs nothing); the name, stripped."""
    name = validate_name(name)
    with db.session() as session:
        _refuse_taken_name(session, name)
    return name


def _name_taken(session, name: str) -> bool:  # noqa: ANN001 - a SQLAlchemy session
    return session.scalar(select(Study.id).where(Study.name == name)) is not None


def _refuse_taken_name(session, name: str) -> None:  # noqa: ANN001
    if _name_taken(session, name):
        raise StudyError(f"a study named {name!r} already exists in this database; choose another --name")


def study_from_run(db: SurveyDB, media_dir: str | Path, name: str, plan: RunPlan, bundle: Any, pairs: int, *,
                   seed: int = 0, study_plan: StudyPlan | None = None, bundle_path: str | None = None,
                   batch_size: int = 16, workers: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> int:
    """A study of a lab run (``survey create --from-run`` and the lab's button): ``pairs``
    units of fresh (class, seed) drawn from ``seed``, every chosen column sampled with the
    run's sampler, eta and steps by ``bundle``; each image stores the config that
    regenerates it. Refused before anything is generated when the models lack what the run
    needs or the name is taken; returns the new study's id."""
    check_run_against_bundle(plan, bundle)
    name = check_name_free(db, name)
    units = units_from_configs(bundle, plan.configs, pairs, seed, respacing=plan.respacing, sampler=plan.sampler,
                               eta=plan.eta, batch_size=batch_size, bundle_path=bundle_path, workers=workers,
                               progress=progress)
    return create_study(db, media_dir, name, units, [c.name for c in plan.configs], study_plan,
                        {**plan.source(), "bundle_path": bundle_path})


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    if not path.is_file():
        raise StudyError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise StudyError(f"{path} has no arr_0 (the images); found {data.files}")
            if "arr_1" not in data.files:
                raise StudyError(f"{path} has no arr_1 (the class labels); the survey needs class-conditional samples "
                                 "saved by guided-diffusion's sampling scripts with labels")
            images, labels = data["arr_0"], data["arr_1"]
    except (OSError, ValueError) as exc:
        raise StudyError(f"cannot read {path} as .npz: {exc}") from exc
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise StudyError(f"{path}: arr_0 must be uint8 NHWC (or NHW), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise StudyError(f"{path}: arr_1 must hold one label per image, got shape {labels.shape} for {len(images)} "
                         "images")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return images, labels.astype(np.int64), digest


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise StudyError("--pairs must be at least 1")
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is None:
        return str(label)
    if not 0 <= label < len(class_names):
        raise StudyError(f"label {label} has no name in the class names list ({len(class_names)} names)")
    return class_names[label]


def units_from_npz(path_a: str | Path, path_b: str | Path, methods: Sequence[str] | None = None,
                   class_names: Sequence[str] | None = None, limit: int | None = None, seed: int = 0) -> list[Unit]:
    """Pair two sample files by index; their labels must agree at every index."""
    path_a, path_b = Path(path_a), Path(path_b)
    methods = list(methods) if methods else [path_a.stem, path_b.stem]
    if len(methods) != 2 or methods[0] == methods[1]:
        raise StudyError(f"give two different method names for the two files (--names), got {methods}")
    images_a, labels_a, digest_a = _load_npz(path_a)
    images_b, labels_b, digest_b = _load_npz(path_b)
    if len(images_a) != len(images_b):
        raise StudyError(f"{path_a} holds {len(images_a)} images but {path_b} holds {len(images_b)}; both must come "
                         "from the same seeds and labels")
    if images_a.shape[1:] != images_b.shape[1:]:
        raise StudyError(f"image shapes differ: {images_a.shape[1:]} vs {images_b.shape[1:]}")
    differ = np.nonzero(labels_a != labels_b)[0]
    if len(differ):
        shown = ", ".join(f"#{i}: {labels_a[i]} vs {labels_b[i]}" for i in differ[:5])
        raise StudyError(f"labels differ at {len(differ)} of {len(labels_a)} indices ({shown}); the files were not "
                         "sampled with the same seeds and labels, so they cannot be paired by index")
    units = []
    for i in _subset(len(images_a), limit, seed):
        label = int(labels_a[i])
        name = _class_name(label, class_names)
        unit = {}
        for method, images, path, digest in ((methods[0], images_a, path_a, digest_a),
                                             (methods[1], images_b, path_b, digest_b)):
            config = {"source": "npz", "file": str(path), "file_sha256": digest, "index": i, "label": label}
            unit[method] = SourceImage(as_hwc_uint8(images[i]), method, name, label, None, config)
        units.append(unit)
    return units


def _images_under(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise StudyError(f"{root} is not a folder")
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*")
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise StudyError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _class_of(relative: str, class_names: Sequence[str] | None) -> tuple[str, int | None]:
    parts = relative.split("/")
    if len(parts) > 1:
        raw = parts[0]
    else:
        stem = Path(parts[0]).stem
        if "_" not in stem:
            raise StudyError(f"cannot tell the class of {relative!r}: put images in class sub-folders "
                             "(<class>/<name>.png) or name them <class>_<anything>.png")
        raw = stem.split("_", 1)[0]
    if raw.isdigit():
        label = int(raw)
        return (_class_name(label, class_names) if class_names else raw), label
    if class_names and raw in class_names:
        return raw, list(class_names).index(raw)
    return raw, None


def units_from_folders(dir_a: str | Path, dir_b: str | Path, methods: Sequence[str] | None = None,
                       class_names: Sequence[str] | None = None, limit: int | None = None,
                       seed: int = 0) -> list[Unit]:
    """Pair two folders by relative file name; the class comes from the sub-folder or the
    ``<class>_`` prefix of the file name (a number is looked up in ``class_names``)."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    methods = list(methods) if methods else [dir_a.name, dir_b.name]
    if len(methods) != 2 or methods[0] == methods[1]:
        raise StudyError(f"give two different method names for the two folders (--names), got {methods}")
    files_a, files_b = _images_under(dir_a), _images_under(dir_b)
    only_a, only_b = sorted(set(files_a) - set(files_b)), sorted(set(files_b) - set(files_a))
    if only_a or only_b:
        raise StudyError(f"the folders do not match by file name: {len(only_a)} only in {dir_a} (e.g. {only_a[:3]}), "
                         f"{len(only_b)} only in {dir_b} (e.g. {only_b[:3]})")
    names = sorted(files_a)
    units = []
    for i in _subset(len(names), limit, seed):
        relative = names[i]
        class_name, label = _class_of(relative, class_names)
        unit = {}
        shapes = []
        for method, files in ((methods[0], files_a), (methods[1], files_b)):
            pixels = read_png(files[relative])
            shapes.append(pixels.shape)
            config = {"source": "folder", "file": str(files[relative]),
                      "file_sha256": hashlib.sha256(files[relative].read_bytes()).hexdigest(), "name": relative}
            unit[method] = SourceImage(pixels, method, class_name, label, None, config)
        if shapes[0] != shapes[1]:
            raise StudyError(f"{relative}: the two images differ in size/channels {shapes[0]} vs {shapes[1]}")
        units.append(unit)
    return units


# --------------------------------------------------------------------------- storing
@dataclass(frozen=True)
class StudyPlan:
    """How many items each rater answers (``per_rater`` main pairs plus gold and repeat
    items at the given rates of that number)."""

    per_rater: int = DEFAULT_PER_RATER
    gold_rate: float = 0.0
    repeat_rate: float = 0.0
    seed: int = 0
    rules: ExclusionRules = field(default_factory=ExclusionRules)
    fast_ms: float = 800.0

    def __post_init__(self) -> None:
        if self.per_rater < 1:
            raise StudyError("--per-rater must be at least 1")
        for name in ("gold_rate", "repeat_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise StudyError(f"--{name.replace('_', '-')} is a fraction in [0, 1]")


def _store(session, study: Study, media_dir: Path, image: SourceImage, now, written: list[Path]) -> Image:  # noqa: ANN001
    stored = save_png(image.pixels, media_dir)
    written.append(media_dir / stored.file_name)
    row = Image(study_id=study.id, file_name=stored.file_name, sha256=stored.sha256, class_label=image.class_label,
                class_name=image.class_name, seed=image.seed, method=image.method, config=image.config,
                width=stored.width, height=stored.height, created_at=now)
    session.add(row)
    return row


def validate_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200 or any(ord(ch) < 32 for ch in name):
        raise StudyError("a study name must be 1 to 200 printable characters")
    return name


def create_study(db: SurveyDB, media_dir: str | Path, name: str, units: Sequence[Unit],
                 methods: Sequence[str] | None = None, plan: StudyPlan | None = None,
                 source: Mapping[str, Any] | None = None) -> int:
    """Store ``units`` as a new study and return its id (see the module doc for the pairs).
    All or nothing: when anything fails (or the run is interrupted) the transaction rolls
    back and the image files already written are removed."""
    plan = plan or StudyPlan()
    name = validate_name(name)
    media_dir = Path(media_dir)
    if not units:
        raise StudyError("no images to put in the study")
    methods = list(methods or units[0].keys())
    if len(methods) < 2:
        raise StudyError("a study compares at least two methods")
    for k, unit in enumerate(units):
        if sorted(unit) != sorted(methods):
            raise StudyError(f"unit {k} has methods {sorted(unit)}, expected {sorted(methods)}")
        if len({(im.class_name, im.seed) for im in unit.values()}) != 1:
            raise StudyError(f"unit {k}: the images of one unit must share class and seed")
    n_main = len(units) * math.comb(len(methods), 2)
    per_rater = min(plan.per_rater, n_main)
    gold_per_rater = round(plan.gold_rate * per_rater)
    repeat_per_rater = min(round(plan.repeat_rate * per_rater), per_rater)
    n_gold = max(gold_per_rater, math.ceil(plan.gold_rate * n_main)) if plan.gold_rate > 0 else 0
    now = utcnow()
    rng = np.random.default_rng(plan.seed + 1)
    settings = {
        "question": QUESTION, "per_rater": per_rater, "gold_per_rater": gold_per_rater,
        "repeat_per_rater": repeat_per_rater, "gold_rate": plan.gold_rate, "repeat_rate": plan.repeat_rate,
        "seed": plan.seed, "exclusions": plan.rules.to_dict(), "exclusions_declared_at": now.isoformat(),
        "fast_ms": plan.fast_ms, "source": dict(source or {}), "units": len(units),
    }
    written: list[Path] = []  # image files of this study, removed again if it fails
    try:
        with db.session() as session:
            _refuse_taken_name(session, name)
            study = Study(name=name, created_at=now, methods=methods, settings=settings)
            session.add(study)
            session.flush()
            stored_units = []
            for unit in units:
                # store a unit's images in random order: neither row ids nor file times follow the methods
                order = list(methods)
                _shuffle(order)
                rows = {m: _store(session, study, media_dir, unit[m], now, written) for m in order}
                stored_units.append((unit, rows))
            session.flush()
            mains = []
            for unit, rows in stored_units:
                for a, b in itertools.combinations(methods, 2):
                    first = unit[a]
                    pair = Pair(study_id=study.id, kind="main", class_label=first.class_label, class_name=first.class_name,
                                seed=first.seed, image_a_id=rows[a].id, image_b_id=rows[b].id, created_at=now)
                    session.add(pair)
                    mains.append(pair)
            session.flush()
            if plan.repeat_rate > 0:
                for pair in mains:
                    session.add(Pair(study_id=study.id, kind="repeat", class_label=pair.class_label,
                                     class_name=pair.class_name, seed=pair.seed, image_a_id=pair.image_a_id,
                                     image_b_id=pair.image_b_id, source_pair_id=pair.id, created_at=now))
            for g in range(n_gold):
                unit, rows = stored_units[int(rng.integers(len(stored_units)))]
                method = methods[int(rng.integers(len(methods)))]
                good = unit[method]
                others = [(u, r) for u, r in stored_units if u[method].class_name != good.class_name]
                if g % 2 == 1 and others:
                    other_unit, _ = others[int(rng.integers(len(others)))]
                    bad = SourceImage(other_unit[method].pixels, GOLD_WRONG_CLASS, good.class_name, good.class_label,
                                      good.seed, {"source": "gold", "kind": "wrong_class", "intact_image_id": rows[method].id,
                                                  "shown_class": good.class_name,
                                                  "actual_class": other_unit[method].class_name,
                                                  "from": other_unit[method].config})
                else:
                    bad = SourceImage(break_image(good.pixels, rng), GOLD_BROKEN, good.class_name, good.class_label,
                                      good.seed, {"source": "gold", "kind": "broken", "intact_image_id": rows[method].id,
                                                  "corruption": "4x4 blocks shuffled + N(0, 60) noise",
                                                  "seed": plan.seed})
                bad_row = _store(session, study, media_dir, bad, now, written)
                session.flush()
                session.add(Pair(study_id=study.id, kind="gold", class_label=good.class_label, class_name=good.class_name,
                                 seed=good.seed, image_a_id=rows[method].id, image_b_id=bad_row.id,
                                 gold_image_id=rows[method].id, created_at=now))
            session.flush()
            return study.id
    except BaseException:
        if not _study_stored(db, name):  # an error after the commit keeps a stored study's files
            for path in written:
                path.unlink(missing_ok=True)
        raise


def _study_stored(db: SurveyDB, name: str) -> bool:
    """Whether a study of this name is in the database; True when that cannot be told (a file
    too many beats a study without its images)."""
    try:
        with db.session() as session:
            return _name_taken(session, name)
    except Exception:  # noqa: BLE001 - the database itself failed: keep the files
        return True


def find_study(db: SurveyDB, name_or_id: str | int | None = None) -> Study:
    """A study by name or id; without one, the only (or newest) study."""
    with db.session() as session:
        if name_or_id is None:
            studies = session.scalars(select(Study).order_by(Study.id.desc())).all()
            if not studies:
                raise StudyError("the database holds no study yet; create one with `python -m survey create`")
            return studies[0]
        text = str(name_or_id)
        study = session.scalar(select(Study).where(Study.name == text))
        if study is None and text.isdigit():
            study = session.get(Study, int(text))
        if study is None:
            names = session.scalars(select(Study.name)).all()
            raise StudyError(f"no study {text!r}; studies here: {names or 'none'}")
        return study


def study_counts(db: SurveyDB, study_id: int) -> dict[str, int]:
    from sqlalchemy import func

    from .models import Rater, Vote

    with db.session() as session:
        kinds = dict(session.execute(select(Pair.kind, func.count()).where(Pair.study_id == study_id)
                                     .group_by(Pair.kind)).all())
        return {"images": session.scalar(select(func.count()).select_from(Image).where(Image.study_id == study_id)),
                "main_pairs": kinds.get("main", 0), "gold_pairs": kinds.get("gold", 0),
                "repeat_pairs": kinds.get("repeat", 0),
                "raters": session.scalar(select(func.count()).select_from(Rater).where(Rater.study_id == study_id)),
                "votes": session.scalar(select(func.count()).select_from(Vote).join(Pair, Pair.id == Vote.pair_id)
                                        .where(Pair.study_id == study_id))}



__all__ = ["GOLD_BROKEN", "GOLD_WRONG_CLASS", "MethodSpec", "QUESTION", "RunPlan", "SourceImage", "StudyError",
           "StudyPlan", "check_run_against_bundle", "create_study", "find_study", "read_class_names",
           "read_run_config", "regenerate", "study_counts", "study_from_run", "units_from_bundle", "units_from_configs",
           "units_from_folders", "units_from_npz"]
