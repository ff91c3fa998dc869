"""Read what an offline W&B run holds, from its `run-*.wandb` log, without the W&B server.

wandb 0.19+ writes offline runs with its Go core and ships no Python reader. The file is a LevelDB-style log: a
7-byte header (':W&B', magic 0xBEE1, version), then 32 KiB blocks of records, each a 7-byte header (crc32, length,
type: 1 full, 2 first, 3 middle, 4 last) and a piece of a protobuf `Record`.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768


def records(path: str | Path):
    """The protobuf Records of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run log"
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _finished_records(run_dir: str | Path, timeout: float = 120.0) -> list:
    """The run log's records once W&B has written all of them. `run.finish()` can return before wandb-core has
    flushed the log's last block (seen on a loaded CI machine: the end-of-run Table was missing), so wait for the
    `exit` record that closes a finished run."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        (log,) = Path(run_dir).glob("run-*.wandb")
        try:
            found = list(records(log))
        except DecodeError:  # a record cut off mid-write
            found = []
        if found and found[-1].WhichOneof("record_type") == "exit":
            return found
        assert time.monotonic() < deadline, f"{log}: no exit record after {timeout:.0f} s; the run did not finish"
        time.sleep(0.2)


def read_run(run_dir: str | Path) -> dict:
    """{'name', 'tags', 'config': {...}, 'history': [ {key: value} ], 'summary': {...}, 'alerts': [...]} of an
    offline run folder (OUTPUT_DIR/wandb/offline-run-*)."""
    run = {"name": None, "tags": [], "config": {}, "history": [], "summary": {}, "alerts": []}
    for record in _finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["name"], run["tags"] = record.run.display_name, list(record.run.tags)
            run["config"].update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run["config"].update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run["summary"].update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "alert":
            run["alerts"].append({"title": record.alert.title, "text": record.alert.text})
    return run
