"""Run tracking: W&B (offline when there is no key), the local metrics file, and summary.json.

Nothing here prints or logs a secret: the W&B key is only tested for presence.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

TRACKED_PACKAGES = ("dpo-recipes", "torch", "trl", "transformers", "peft", "accelerate", "datasets")


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def prepare_wandb(report_to: list[str] | str | None, output_dir: str) -> str | None:
    """Make W&B safe to use here: offline (files under OUTPUT_DIR/wandb) when no key is configured.

    Returns the W&B mode in effect, or None when W&B is not a `report_to` target. `WANDB_MODE` set by the user wins.
    """
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "wandb" not in targets and "all" not in targets:
        return None
    if "WANDB_MODE" not in os.environ and not _wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"
        logger.info("No W&B key found: logging offline to %s/wandb (sync later with `wandb sync`).", output_dir)
    os.environ.setdefault("WANDB_DIR", output_dir)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return os.environ["WANDB_MODE"] if "WANDB_MODE" in os.environ else "online"


def package_versions() -> dict[str, str]:
    """Versions of the packages a run's result depends on, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_json_atomic(path: str | Path, payload: dict) -> Path:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_log_history(log_history: list[dict], output_dir: str | Path) -> Path:
    """Every logged step of TRL's metrics (loss, rewards/*, logps/*, ...) as OUTPUT_DIR/metrics.jsonl."""
    path = Path(output_dir) / "metrics.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for entry in log_history:
            f.write(json.dumps(entry) + "\n")
    os.replace(tmp, path)
    return path
