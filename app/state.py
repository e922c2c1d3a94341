"""What the lab server holds between requests: the loaded models, recent runs, the
held-out gallery and per-session stop requests.

One :class:`LabState` per server. Swapping the bundle (Models view) is atomic: a run
takes the bundle it started with to its end. Runs are kept in memory (the last
``keep_runs``) with their download files in ``run_dir``.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.bundles import Bundle
from engine.sampler import SampleResult

from .inputs import LabInputError

log = logging.getLogger("app")


@dataclass(frozen=True)
class Limits:
    """Per-request ceilings that keep one user from monopolising the server."""

    max_images: int = 64  # seeds x columns of one run
    max_steps: int = 1000  # respaced steps of one run
    max_timesteps: int = 8  # timesteps of one inspection
    max_attack_steps: int = 100


@dataclass
class RunRecord:
    """One finished sampling run."""

    id: str
    kind: str  # "side-by-side" or "stability"
    result: SampleResult
    bundle: Bundle
    class_names: list[str]
    folder: Path
    created: float = field(default_factory=time.time)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """A one-line description for lists."""
        cols = ", ".join(c.name for c in self.result.configs)
        n = len(self.result.seeds)
        steps = self.result.settings.get("num_steps", "?")
        return f"{self.id} · {self.kind} · {n} image(s) x [{cols}] · {steps} steps"


@dataclass(frozen=True)
class SurveyTarget:
    """Where the lab puts the studies it makes from runs: the database and image folder
    of the survey this server serves at ``path``, and the admin password that allows it."""

    db: Any  # survey.db.SurveyDB
    media_dir: Path
    admin_password: str | None
    path: str = "/survey"


@dataclass
class Gallery:
    """Held-out images shown by the inspector and attack views."""

    images: Any  # uint8 (N, C, H, W)
    labels: list[int]
    source: str


class LabState:
    """Server-wide state shared by every session."""

    def __init__(self, bundle: Bundle, *, limits: Limits | None = None, run_dir: str | Path | None = None,
                 keep_runs: int = 10, allow_model_loading: bool = True, device: str = "auto"):
        self._bundle = bundle
        self._lock = threading.RLock()
        self.version = 1
        self.limits = limits or Limits()
        self.allow_model_loading = allow_model_loading
        self.device = device
        self.keep_runs = keep_runs
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="rcg-lab-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._counter = itertools.count(1)
        self._stops: dict[str, float] = {}
        self._armed: dict[str, float] = {}
        self._running: dict[str, int] = {}
        self._gallery: dict[tuple, Gallery | None] = {}
        self.survey: SurveyTarget | None = None  # set by app.server when the survey is on

    # ------------------------------------------------------------------ models
    @property
    def bundle(self) -> Bundle:
        with self._lock:
            return self._bundle

    def swap(self, bundle: Bundle) -> None:
        """Replace the loaded models (runs in progress keep theirs)."""
        with self._lock:
            self._bundle = bundle
            self.version += 1
        log.info("loaded models %s from %s", bundle.name, bundle.source)

    # ------------------------------------------------------------------ runs
    def new_run_folder(self) -> tuple[str, Path]:
        """A fresh id and download folder for a run."""
        run_id = f"run-{next(self._counter)}"
        folder = self.run_dir / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return run_id, folder

    def add_run(self, record: RunRecord) -> RunRecord:
        with self._lock:
            self.runs[record.id] = record
            while len(self.runs) > self.keep_runs:
                _, old = self.runs.popitem(last=False)
                shutil.rmtree(old.folder, ignore_errors=True)
        return record

    def get_run(self, run_id: str | None) -> RunRecord:
        if not run_id:
            raise LabInputError("no run yet: run a side-by-side or stability sample first")
        key = str(run_id).split(" ", 1)[0]
        with self._lock:
            record = self.runs.get(key)
        if record is None:
            raise LabInputError(f"run {key!r} is no longer kept (the server keeps the last {self.keep_runs}); "
                                "run it again")
        return record

    def run_labels(self) -> list[str]:
        with self._lock:
            return [r.label for r in reversed(self.runs.values())]

    # ------------------------------------------------------------------ stop
    # A Stop press counts for the session's runs that were armed (Run clicked) or started
    # before it: pressing Stop while a run waits in the queue cancels it at its first step.
    def arm(self, session: str) -> None:
        """Mark the moment a session asked for a run (before it is queued)."""
        with self._lock:
            self._armed[session] = time.monotonic()

    def disarm(self, session: str) -> None:
        """Forget an armed run that never started (its input was refused)."""
        with self._lock:
            self._armed.pop(session, None)

    def start_run(self, session: str) -> Callable[[], bool]:
        """``should_stop`` for the engine: true once this session pressed Stop after it
        armed (or, called directly through the API, started) this run. Pair with
        :meth:`finish_run`."""
        with self._lock:
            since = self._armed.pop(session, time.monotonic())
            self._running[session] = self._running.get(session, 0) + 1

        def should_stop() -> bool:
            with self._lock:
                return self._stops.get(session, -1.0) >= since
        return should_stop

    def finish_run(self, session: str) -> None:
        """The session's run ended (finished, stopped or failed)."""
        with self._lock:
            left = self._running.get(session, 1) - 1
            if left > 0:
                self._running[session] = left
            else:
                self._running.pop(session, None)
                if session not in self._armed:
                    self._stops.pop(session, None)

    def request_stop(self, session: str) -> bool:
        """Stop the session's runs at their next step; False when it has none running or queued."""
        with self._lock:
            active = bool(self._running.get(session)) or session in self._armed
            if active:
                self._stops[session] = time.monotonic()
            return active

    # ------------------------------------------------------------------ gallery
    def gallery(self) -> Gallery | None:
        """The held-out split that fits the loaded models (the bundle's own dataset, the MNIST digits for a
        1x28x28 bundle, or ``lab.gallery`` of bundle.json), or None."""
        bundle = self.bundle
        spec = (bundle.section("lab").get("gallery") or bundle.dataset
                or ("mnist" if bundle.image_shape == (1, 28, 28) else None))
        key = (spec, bundle.image_shape)
        with self._lock:
            if key in self._gallery:
                return self._gallery[key]
        gallery = None
        if spec:
            from engine.data import DataError, load_split

            try:
                data = load_split(spec, "heldout", image_size=bundle.image_shape[1], channels=bundle.image_shape[0])
                gallery = Gallery(data.images, data.labels.tolist(), f"{spec} held-out split")
            except (DataError, ValueError, OSError) as exc:
                log.warning("no gallery: %s", exc)
        with self._lock:
            self._gallery[key] = gallery
        return gallery

    def close(self) -> None:
        """Remove the download folder when the server made it."""
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
