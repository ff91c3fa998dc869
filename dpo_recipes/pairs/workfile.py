"""The work file: answers appended batch by batch, so a killed run resumes where it stopped.

Layout (JSONL): the first line is `{"header": {...}}` with every setting that changes the answers (the model's
weights' fingerprint, mode, k, seed, temperature, top_p, max_new_tokens, batch_size, verifier or scorer, teacher);
each later line is one finished batch, `{"batch": [record, ...]}`, each record keyed by the prompt's index `i` and
its row hash `h`. A batch is written as one line then flushed and fsync'd, so a kill leaves whole batches and at most
one torn last line, which the next run drops. A rerun with other settings, or over an edited prompt, is refused in
one line (`overwrite=True` starts the file again). Settings that only turn answers into pairs (min_margin, the
rewrite template, the output format) are not in the header: changing them reuses the answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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
        if self.path is None:
            return
        if overwrite:
            self.path.unlink(missing_ok=True)
        if self.path.exists():
            self._read()
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_line({"header": self.header}, mode="x")

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        good = 0  # bytes of whole, valid lines
        parsed = []
        for line in lines[:-1]:  # the part after the last newline is torn (or empty)
            try:
                parsed.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            good += len(line) + 1
        if not parsed or "header" not in parsed[0]:
            if parsed:
                raise DPORecipesError(f"{self.path}: not a pair-making work file (no header line); move it away or "
                                      "pass --overwrite.")
            self.path.unlink()  # killed while writing the header: nothing was answered yet
            return
        self._check_header(parsed[0]["header"])
        for entry in parsed[1:]:
            for record in entry.get("batch", []):
                self.records[record["i"]] = record
        if good < sum(len(x) + 1 for x in lines[:-1]) + len(lines[-1]):
            with open(self.path, "r+b") as f:  # drop the torn tail before appending after it
                f.truncate(good)

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

    def _write_line(self, obj: dict, mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, records: list[dict]) -> None:
        """Record a finished batch: one line, flushed and fsync'd before returning."""
        if self.path is not None:
            self._write_line({"batch": records})
        for record in records:
            self.records[record["i"]] = record
