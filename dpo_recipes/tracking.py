"""Run tracking: W&B (offline when there is no key), the local metrics file, and summary.json.

Nothing here prints or logs a secret: the W&B key is only tested for presence.
"""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata
from pathlib import Path

from dpo_recipes.jsonio import write_json_atomic, write_jsonl_atomic

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


def save_log_history(log_history: list[dict], output_dir: str | Path) -> Path:
    """Every logged step of TRL's metrics (loss, rewards/*, logps/*, ...) as OUTPUT_DIR/metrics.jsonl."""
    return write_jsonl_atomic(Path(output_dir) / "metrics.jsonl", log_history)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir` to resume from.

    Trainer writes `trainer_state.json` last, after the weights, optimizer, scheduler and RNG states, so a folder
    without a readable one was cut off by a kill while saving: it is skipped, with a warning, never loaded
    (transformers' `get_last_checkpoint` would take it for being the newest)."""
    import json
    import logging

    from transformers.trainer_utils import sort_checkpoints

    if not Path(output_dir).is_dir():
        return None
    for checkpoint in reversed(sort_checkpoints(str(output_dir))):  # newest first
        try:
            json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logging.getLogger(__name__).warning(
                "%s is incomplete (no readable trainer_state.json: the run was stopped while saving it); skipped, "
                "resuming from the checkpoint before it", checkpoint)
            continue
        return checkpoint
    return None


def checkpoint_step(checkpoint: str | None) -> int:
    """The global step a `checkpoint-N` folder was saved at (0 for no checkpoint)."""
    if not checkpoint:
        return 0
    tail = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def write_summary(output_dir: str | Path, summary: dict, before=None, after=None) -> Path:
    """OUTPUT_DIR/summary.json, plus the before/after answers as OUTPUT_DIR/eval_answers.jsonl."""
    answers = Path(output_dir) / "eval_answers.jsonl"
    if before is not None and after is not None and before.prompts:
        write_jsonl_atomic(answers, ({**p, "before": before.answers[i], "after": after.answers[i]}
                                     for i, p in enumerate(before.prompts)))
    elif answers.exists():  # an earlier run's answers: this run evaluated no prompts
        answers.unlink()
    return write_json_atomic(Path(output_dir) / "summary.json", summary)
