"""The files a run offers for download, written with the engine's own writers:

- ``run_config.json``: everything that regenerates the images (``SampleResult.run_config``)
  plus the class names and the loaded models;
- per column ``NN-<column>.npz`` (guided-diffusion sample format: ``arr_0`` uint8 NHWC,
  ``arr_1`` labels) and ``NN-<column>.png`` (the images in a row at native resolution);
- per column ``NN-<column>.trace.pt`` (``Trace.save``; read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from engine import viz
from engine.metrics import save_samples
from engine.sampler import SampleResult


def safe_name(name: str) -> str:
    """A column name as a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "column"


def write_run_files(result: SampleResult, folder: Path, extra: dict[str, Any] | None = None) -> list[str]:
    """Write the downloads of ``result`` into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    config = {**result.run_config(), **(extra or {})}
    target = folder / "run_config.json"
    target.write_text(json.dumps(config, indent=1, default=str))
    paths.append(target)
    for i, c in enumerate(result.configs, start=1):
        stem = f"{i:02d}-{safe_name(c.name)}"  # the index keeps similar names apart
        images = result.images[c.name]
        paths.append(save_samples(folder / f"{stem}.npz", images, result.labels))
        pictures = viz.to_rgb(viz.images_to_uint8(images))
        paths.append(viz.save_png(viz.grid(pictures, ncols=len(pictures)), folder / f"{stem}.png"))
        if c.name in result.traces:
            trace_path = folder / f"{stem}.trace.pt"
            result.traces[c.name].save(trace_path)
            paths.append(trace_path)
    return [str(p) for p in paths]
