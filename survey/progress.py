"""A progress bar for study generation: units done, images/s and the time left.

``GenerationProgress(methods)`` is the ``progress(done, total)`` callback of
:func:`survey.create.units_from_bundle` / ``units_from_configs``; it counts images
(units x methods) so the rate reads in images per second, and the ETA is tqdm's
(remaining images / recent rate). It writes to stderr, so a study's stdout stays clean.
"""

from __future__ import annotations

import sys
from typing import TextIO


class GenerationProgress:
    """Callable ``(done_units, total_units)`` that drives one tqdm bar counted in images."""

    def __init__(self, methods: int, *, stream: TextIO | None = None, disable: bool = False):
        self.methods = max(1, int(methods))
        self.stream = stream if stream is not None else sys.stderr
        self.disable = disable
        self.bar = None
        self.done = 0
        self.finished = False

    def __call__(self, done: float, total: int) -> None:
        from tqdm.auto import tqdm

        if self.finished:
            return
        if self.bar is None:
            self.bar = tqdm(total=total * self.methods, desc="generating", unit="img", file=self.stream,
                            disable=self.disable, dynamic_ncols=True, smoothing=0.1)
        images = int(done * self.methods)  # images finished, counting fractions of a batch
        if images > self.done:
            self.bar.update(images - self.done)
            self.done = images
        if done >= total:
            self.close()

    def close(self) -> None:
        self.finished = True
        if self.bar is not None:
            self.bar.close()
            self.bar = None
