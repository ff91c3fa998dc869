"""Read preference rows from a file, a `save_to_disk` folder or a hub id, as plain Python dicts.

Every structural problem (missing file, bad syntax, truncated gzip, invalid UTF-8, no rows) becomes one
`DPORecipesError` naming the file and the line or row. Row content is not judged here: that is the
validators' job, so nothing is dropped in this module.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from dpo_recipes.errors import DPORecipesError

FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class RawRows:
    """Rows as read, before any normalization.

    `lines[i]` is the 1-based physical line of row i for JSON Lines (blank lines are skipped, so rows and lines
    can differ) and None elsewhere; rows are then named by their 1-based position.
    """

    source: str
    kind: str
    rows: list[dict]
    lines: list[int] | None = None

    def where(self, i: int) -> str:
        """Human name of row `i` (0-based): 'line 12' for JSON Lines, 'row 12' otherwise."""
        if self.lines is not None:
            return f"line {self.lines[i]}"
        return f"row {i + 1}"


def file_kind(path: Path) -> tuple[str, bool]:
    """(kind, gzipped) from the file name: 'data.jsonl.gz' -> ('jsonl', True)."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] in (".gz", ".gzip")
    if gz:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in FILE_KINDS:
        raise DPORecipesError(
            f"{path}: unsupported file type {''.join(path.suffixes) or '(none)'}; expected .jsonl, .json, .csv or "
            ".parquet, optionally gzip-compressed (.gz), or a datasets save_to_disk folder.")
    return FILE_KINDS[ext], gz


def read_rows(source: str, split: str = "train") -> RawRows:
    """Read every row of `source`: a local file, a `save_to_disk` folder, or (otherwise) a hub dataset id."""
    path = Path(source).expanduser()
    if path.is_dir():
        raw = _read_saved_dataset(path, split)
    elif path.exists():
        raw = _read_file(path)
    elif _looks_like_path(source):
        raise DPORecipesError(f"{source}: no such file or folder.")
    else:
        raw = _read_hub(source, split)
    if not raw.rows:
        raise DPORecipesError(f"{source}: no rows. The dataset is empty; check the file or the split.")
    return raw


def _looks_like_path(source: str) -> bool:
    """A string that can only be meant as a local path (hub ids are 'name' or 'owner/name')."""
    if source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1:
        return True
    last = source.rsplit("/", 1)[-1].lower()
    return any(last.endswith(ext) or last.endswith(ext + ".gz") for ext in FILE_KINDS)


# --- files ---------------------------------------------------------------------------------------------------------

def _read_bytes(path: Path, gz: bool) -> bytes:
    try:
        if not gz:
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            return f.read()
    except PermissionError:
        raise DPORecipesError(f"{path}: permission denied; make the file readable.") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DPORecipesError(f"{path}: corrupt or truncated gzip ({exc}); re-download or re-compress it.") from None
    except OSError as exc:
        raise DPORecipesError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text; a leading BOM is dropped; invalid bytes name their line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DPORecipesError(
            f"{path}: line {line}: invalid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
            "re-save the file as UTF-8.") from None


def _read_file(path: Path) -> RawRows:
    kind, gz = file_kind(path)
    data = _read_bytes(path, gz)
    if kind == "parquet":
        return _read_parquet(path, data)
    text = _decode(path, data)
    if kind == "csv":
        return _read_csv(path, text)
    if kind == "json":
        stripped = text.lstrip()
        # Many datasets ship JSON Lines under a .json name; an object first means JSON Lines.
        if stripped.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                return _read_jsonl(path, text)
            if "chosen" not in obj and any(isinstance(v, list) and v and isinstance(v[0], dict) for v in obj.values()):
                raise DPORecipesError(
                    f"{path}: expected a JSON array of row objects, got an object with keys {', '.join(obj)}; "
                    "extract the array of rows (or save the rows as JSON Lines).")
            return RawRows(str(path), "json", [_check_object(path, obj, "row 1")])
        return _read_json_array(path, text)
    return _read_jsonl(path, text)


def _check_object(path: Path, obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise DPORecipesError(
            f"{path}: {where}: expected a JSON object with prompt/chosen/rejected fields, got {type_name(obj)}.")
    return obj


def _read_jsonl(path: Path, text: str) -> RawRows:
    rows, lines = [], []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank and trailing lines (and CRLF leftovers) are not rows
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DPORecipesError(
                f"{path}: line {n}: invalid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON "
                "object.") from None
        rows.append(_check_object(path, obj, f"line {n}"))
        lines.append(n)
    return RawRows(str(path), "jsonl", rows, lines)


def _read_json_array(path: Path, text: str) -> RawRows:
    if not text.strip():
        return RawRows(str(path), "json", [])
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DPORecipesError(
            f"{path}: line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}).") from None
    if not isinstance(obj, list):
        raise DPORecipesError(f"{path}: expected a JSON array of objects (or JSON Lines), got {type_name(obj)}.")
    return RawRows(str(path), "json", [_check_object(path, o, f"row {i + 1}") for i, o in enumerate(obj)])


def _read_csv(path: Path, text: str) -> RawRows:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header is not None and not any(c.strip() for c in header):
            header = next(reader, None)  # leading blank lines
        if header is None:
            return RawRows(str(path), "csv", [])
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or "" in header:
            raise DPORecipesError(f"{path}: line 1: the header has empty or repeated column names: {header}.")
        rows = []
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if len(record) != len(header):
                raise DPORecipesError(
                    f"{path}: row {len(rows) + 1} (line {reader.line_num}): {len(record)} fields, but the header "
                    f"has {len(header)}; quote fields that contain commas or newlines.")
            where = f"{path}: row {len(rows) + 1} (line {reader.line_num})"
            rows.append({h: _maybe_messages(v, where, h) for h, v in zip(header, record)})
    except csv.Error as exc:
        raise DPORecipesError(f"{path}: line {reader.line_num}: invalid CSV ({exc}).") from None
    return RawRows(str(path), "csv", rows)


def _maybe_messages(cell: str, where: str, column: str):
    """CSV cannot hold lists: a cell holding a list of messages is read as that list.

    `pandas.DataFrame.to_csv` writes such a list as its Python repr (`[{'content': ..., 'role': 'user'}, ...]`),
    `Dataset.to_csv` as a numpy object array (the same dicts separated by white space, no commas), others as JSON.
    All are parsed as literals only (`json.loads`, then `ast.literal_eval`, never `eval`). A cell that looks like a
    message list but parses as none of these is refused: taken as text, the whole conversation, prompt included,
    would become one answer.
    """
    stripped = cell.strip()
    if not (stripped.startswith("[") and stripped.endswith("]") and "{" in stripped):
        return cell
    value = _literal(stripped)
    if value is None and _NUMPY_GAP.search(stripped):
        value = _numpy_object_array(stripped)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value
    if re.search(r"""["'](role|content|from|value)["']\s*:""", stripped):
        raise DPORecipesError(
            f"{where}: field {column!r}: looks like a list of messages but is neither JSON nor a Python literal "
            "(e.g. numpy arrays in a pandas repr); write the file as JSONL or parquet instead.")
    return cell


_NUMPY_GAP = re.compile(r"\}\s+\{")


def _literal(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _numpy_object_array(text: str):
    """A numpy object array of dicts as `str()` prints it: `[{...}\n {...}]`. Commas go between the elements, and the
    result counts only if printing it back gives the cell again (a '} {' inside a text would not)."""
    value = _literal(_NUMPY_GAP.sub("}, {", text))
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        return None
    printed = "[" + " ".join(repr(m) for m in value) + "]"
    return value if _NUMPY_GAP.sub("} {", printed) == _NUMPY_GAP.sub("} {", text) else None


def _read_parquet(path: Path, data: bytes) -> RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DPORecipesError(f"{path}: not a readable parquet file ({exc}).") from None
    return RawRows(str(path), "parquet", table.to_pylist())


# --- datasets folders and the hub ----------------------------------------------------------------------------------

def _pick_split(obj, split: str, source: str):
    from datasets import DatasetDict

    if isinstance(obj, DatasetDict):
        if split not in obj:
            raise DPORecipesError(f"{source}: no split {split!r}; available: {', '.join(obj)}. Pass --split NAME.")
        return obj[split]
    return obj


def _read_saved_dataset(path: Path, split: str) -> RawRows:
    import datasets

    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).is_file() for m in markers):
        raise DPORecipesError(
            f"{path}: a folder, but not a datasets save_to_disk folder (no dataset_dict.json or state.json); "
            "pass one of its files instead.")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise DPORecipesError(f"{path}: cannot load the save_to_disk folder ({exc}).") from None
    ds = _pick_split(ds, split, str(path))
    return RawRows(str(path), "save_to_disk", ds.to_list())


def _read_hub(source: str, split: str) -> RawRows:
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DPORecipesError(f"{source}: {exc}. Pass --split NAME.") from None
        raise DPORecipesError(f"{source}: cannot load the hub dataset ({exc}).") from None
    except Exception as exc:  # network, auth, missing repo: all user-fixable
        raise DPORecipesError(
            f"{source}: not a local file or folder, and loading it as a hub dataset failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the path, or the "
            "network and the dataset id.") from None
    return RawRows(source, "hub", ds.to_list())


def type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
