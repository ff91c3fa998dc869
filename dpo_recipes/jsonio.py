"""Atomic JSON writes: a report or summary is either complete on disk or absent, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def _write_atomic(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON to a temporary file beside `path`, then rename it into place."""

    def write(f):
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")

    return _write_atomic(path, write)


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically."""

    def write(f):
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    return _write_atomic(path, write)
