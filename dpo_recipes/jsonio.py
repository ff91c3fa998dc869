"""Atomic JSON writes: a report or summary is either complete on disk or absent, never half-written.

Files and folders are staged with `tempfile` and renamed into place. `tempfile` creates them private (files 0o600,
folders 0o700) whatever the umask, so `apply_default_modes` gives them the modes a plain `open()` / `mkdir()` would
have: otherwise a summary or a "ready to serve" merged model is unreadable to the service account that reads it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it when Linux tells it (os.umask can only read by setting)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)  # set-and-restore; briefly visible to other threads, so only the fallback
    os.umask(old)
    return old


def apply_default_modes(path: str | os.PathLike) -> None:
    """Give `path`, and everything under it when it is a folder, the umask's default modes.

    Files get 0o666 & ~umask, folders 0o777 & ~umask (0o644 / 0o755 under umask 022). Symlinks are left alone.
    """
    umask = current_umask()
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    for root, dirs, files in os.walk(path):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), file_mode)
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), dir_mode)
    os.chmod(path, dir_mode)


def write_file_atomic(path: str | os.PathLike, write_to) -> Path:
    """Stage a file beside `path` with `write_to(temporary path)`, give it the umask's modes, rename it into place.

    `path` is then complete or untouched; the temporary file is removed on any error or interrupt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_to(tmp)
        apply_default_modes(tmp)  # mkstemp made it 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_atomic(path: str | os.PathLike, write) -> Path:
    def write_to(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)

    return write_file_atomic(path, write_to)


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
