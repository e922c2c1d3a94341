"""Reading a JSON file that must hold one object, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: Path, error: type[Exception] = ValueError, what: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (naming the file and ``what`` it is) when the
    file is not valid JSON or holds something other than an object."""
    where = f"{path} ({what})" if what else f"{path}"
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{where} holds no JSON object")
    return data
