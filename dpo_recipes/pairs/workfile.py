"""The work file: answers appended batch by batch, so a killed run resumes where it stopped.

Layout (JSONL): the first line is `{"header": {...}}` with every setting that changes the answers (the model's
weights' fingerprint, mode, k, seed, temperature, top_p, max_new_tokens, batch_size, verifier or scorer, teacher);
each later line is one finished batch, `{"batch": [record, ...]}`, each record keyed by the prompt's index `i` and
its row hash `h`. A batch is written as one line then flushed and fsync'd, so a kill leaves whole batches and at most
one torn last line, which the next run drops. A rerun with other settings, or over an edited prompt, is refused in
one line (`overwrite=True` starts the file again). Settings that only turn answers into pairs (min_margin, the
rewrite template, the output format) are not in the header: changing them reuses the answers. A run holds an
exclusive lock (flock) on its work file, so a second run on the same output is refused instead of appending the same
batches twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on POSIX: no lock
    fcntl = None

from dpo_recipes.errors import DPORecipesError

VERSION = 1
# Recorded, not compared: the same weights under another path (a moved folder, another cache) resume; other weights
# under the same path (an iterative run's next policy) are caught by the fingerprints.
NAMES = ("model", "teacher")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


class WorkFile:
    """Finished records by prompt index (`records`), and `append` for the next batch. `path=None`: memory only."""

    def __init__(self, path: str | os.PathLike | None, header: dict, overwrite: bool = False):
        self.path = Path(path) if path is not None else None
        self.header = {"version": VERSION, **header}
        self.records: dict[int, dict] = {}
        self._handle = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.path.unlink(missing_ok=True)
        self._handle = open(self.path, "a+b")  # created empty when missing
        if fcntl is not None:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.close()
                raise DPORecipesError(f"{self.path}: another run is writing this work file now; wait for it to end "
                                      "or use another --output_file.") from None
        try:
            self._read()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (the file stays: a rerun resumes from it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self) -> None:
        self._handle.seek(0)
        lines = self._handle.read().split(b"\n")
        good = 0  # bytes of whole, valid lines
        parsed = []
        for line in lines[:-1]:  # the part after the last newline is torn (or empty)
            try:
                parsed.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            good += len(line) + 1
        if parsed and "header" not in parsed[0]:
            raise DPORecipesError(f"{self.path}: not a pair-making work file (no header line); move it away or pass "
                                  "--overwrite.")
        if not parsed:  # new, or killed while writing the header: nothing was answered yet
            self._handle.truncate(0)
            self._write_line({"header": self.header})
            return
        self._check_header(parsed[0]["header"])
        for entry in parsed[1:]:
            for record in entry.get("batch", []):
                self.records[record["i"]] = record
        self._handle.truncate(good)  # drop a torn tail before appending after it

    def _check_header(self, old: dict) -> None:
        keys = sorted(set(old) | set(self.header), key=lambda k: (k not in self.header, k))
        diffs = [f"{k}: {_short(old.get(k))} -> {_short(self.header.get(k))}" for k in keys
                 if k not in NAMES and old.get(k) != self.header.get(k)]
        if diffs:
            raise DPORecipesError(f"{self.path} holds answers made with other settings ({'; '.join(diffs[:4])}); rerun "
                                  "with the same settings to resume it, or pass --overwrite to start again.")

    def check_rows(self, rows_by_index: dict) -> None:
        """Refuse records whose prompt changed since (same index, other row hash)."""
        for i, record in self.records.items():
            row = rows_by_index.get(i)
            if row is not None and row.key != record["h"]:
                raise DPORecipesError(f"{self.path} holds an answer to another version of the prompt at {row.where} "
                                      "(the prompts file changed); pass --overwrite to start again.")

    def _write_line(self, obj: dict) -> None:
        self._handle.seek(0, os.SEEK_END)
        self._handle.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def append(self, records: list[dict]) -> None:
        """Record a finished batch: one line, flushed and fsync'd before returning."""
        if self._handle is not None:
            self._write_line({"batch": records})
        for record in records:
            self.records[record["i"]] = record
