"""An iterative run's progress on disk: a killed or extended run goes on from its last finished round.

After every round `recipes/iterative_dpo.py` writes OUTPUT_DIR/progress.json (atomically): the settings the run was
started with, the held-out score per round, each finished round's figures, and the general answers' baseline. Run
the same command again and it resumes after the last finished round:

- the policy is rebuilt from the rounds' adapters (`restore_policy`): with `--reference fixed`, the last round's
  adapter, which holds the whole policy; with `--reference previous`, every round's adapter merged in order;
- a round that was cut short starts again (its pairs work file resumes its generation: `pairs.workfile`);
- a larger `--rounds` extends a finished run; every other setting must be what the run was started with, or the
  run is refused naming the settings that differ (their rounds would not be one run).

Each round's training is seeded (the trainer's seed) and its sampling too (seed + round), so a resumed run makes the
pairs and scores an uninterrupted one makes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import write_json_atomic

PROGRESS = "progress.json"
# Settings that may change between a run and its resumption: where it writes, how it logs, how far it goes.
MAY_CHANGE = {"rounds", "output_dir", "overwrite_output_dir", "logging_dir", "report_to", "disable_tqdm",
              "logging_steps", "run_name", "preflight", "plots", "answer_batch_size", "eval_batch_size"}


def file_digest(path: str | None) -> str | None:
    """sha256 of a file's bytes (None for no file): a prompts file edited between rounds is a different run."""
    if not path:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_settings(*arg_objects, files: dict[str, str | None]) -> dict:
    """Every setting of the run's argument dataclasses (as text, JSON-able) but `MAY_CHANGE`, and its files' digests."""
    settings = {}
    for obj in arg_objects:
        for f in dataclasses.fields(obj):
            if f.name not in MAY_CHANGE and not f.name.startswith("_"):
                settings[f"{type(obj).__name__}.{f.name}"] = json.dumps(getattr(obj, f.name), default=str,
                                                                         sort_keys=True)
    settings.update({f"sha256 {name}": file_digest(path) for name, path in files.items()})
    return settings


def start(out: Path, settings: dict, overwrite: bool) -> dict | None:
    """The progress to resume from (None: a new run in an empty folder). Refuses a folder that holds something else,
    or a run started with other settings."""
    if not (out.exists() and any(out.iterdir())):
        out.mkdir(parents=True, exist_ok=True)
        return None
    if overwrite:
        shutil.rmtree(out)
        out.mkdir(parents=True)
        return None
    path = out / PROGRESS
    if not path.is_file():
        raise DPORecipesError(f"{out} is not empty and holds no iterative run ({PROGRESS} is missing): pass "
                              "--overwrite_output_dir true or a new --output_dir.")
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DPORecipesError(f"{path}: unreadable ({exc}); pass --overwrite_output_dir true to start again.") from None
    differ = sorted(k for k in settings.keys() | progress["settings"].keys()
                    if settings.get(k) != progress["settings"].get(k))
    if differ:
        shown = "; ".join(f"{k}: {progress['settings'].get(k)} then, {settings.get(k)} now" for k in differ[:4])
        raise DPORecipesError(f"{out} holds an iterative run started with other settings ({shown}"
                              f"{'; ...' if len(differ) > 4 else ''}): resume it with those, or pass "
                              "--overwrite_output_dir true or a new --output_dir.")
    return progress


def save(out: Path, settings: dict, scores: list, rounds: list[dict], general_before: dict | None,
         stopped: str | None = None) -> None:
    write_json_atomic(out / PROGRESS, {"settings": settings, "heldout_score_by_round": scores, "rounds": rounds,
                                       "general_before": general_before, "stopped": stopped})


def restore_policy(model, out: Path, finished: int, reference: str):
    """The policy after `finished` rounds, from their adapters on top of the starting `model`."""
    from peft import PeftModel

    if finished == 0:
        return model
    if reference == "fixed":  # one adapter trained on through the rounds: the last one is the policy
        return PeftModel.from_pretrained(model, str(out / f"round_{finished - 1}"), is_trainable=True)
    for k in range(finished):  # each round's adapter sits on the rounds before it, merged in order
        model = PeftModel.from_pretrained(model, str(out / f"round_{k}")).merge_and_unload()
    return model
