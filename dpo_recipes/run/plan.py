"""The output folder: a fresh start, a resume, a finished run, or a refusal, decided before any model work.

An output folder is resumed only when it holds an unfinished run of the same model, data and training settings
(`run_record.json`). A finished run is not trained again. Anything else is refused in one line naming what differs,
because continuing another run's adapter on new data gives a wrong model with exit status 0."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import write_json_atomic
from dpo_recipes.models import is_embedded
from dpo_recipes.run.stage import set_stage
from dpo_recipes.train.steps import planned_steps
from dpo_recipes.watch.tracking import last_checkpoint

logger = logging.getLogger(__name__)


RUN_RECORD = "run_record.json"
# Settings that change what a run trains: a resumed run must have the same ones. (Length settings, max_steps and
# num_train_epochs, may grow: that extends a run. Logging, saving and evaluation settings may change freely.)
TRAINING_KEYS = ("loss_type", "loss_weights", "beta", "label_smoothing", "learning_rate", "lr_scheduler_type",
                 "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "optim", "optim_args", "adam_beta1",
                 "adam_beta2", "adam_epsilon", "max_grad_norm", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "max_length", "max_completion_length", "truncation_mode", "seed",
                 "data_seed", "bf16", "fp16", "disable_dropout", "f_divergence_type", "f_alpha_divergence_coef",
                 "discopop_tau", "ld_alpha", "use_weighting", "sync_ref_model", "ref_model_mixup_alpha",
                 "ref_model_sync_steps", "alpha", "cpo_alpha", "simpo_gamma", "desirable_weight", "undesirable_weight",
                 "world_size")
MODEL_KEYS = ("dtype", "load_in_4bit", "load_in_8bit", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
              "lora_target_modules", "lora_target_parameters", "lora_modules_to_save", "use_rslora", "use_dora",
              "lora_top_fraction")
HOOK_KEYS = {"odpo": ("odpo_alpha", "odpo_ratio"), "rdpo": ("rdpo_alpha",)}
# What a run writes into output_dir; --overwrite_output_dir removes these (and only these) before starting afresh.
RUN_OUTPUTS = ("adapter_model.safetensors", "adapter_config.json", "summary.json", "metrics.jsonl",
               "eval_answers.jsonl", "eval_answers_before.json", "data_validation.json", "train_results.json",
               "eval_results.json", "all_results.json", "trainer_state.json", "training_args.bin", "merged", "plots",
               RUN_RECORD)
# A full-model run also writes config.json, model weights and tokenizer files, but so does a base model folder:
# those are never removed, and --overwrite_output_dir clears only a folder whose run_record.json says a run wrote it.


# --- 2. the output folder: resume, refuse, or already finished ----------------------------------------------------
@dataclass
class RunPlan:
    """What to do in output_dir: train from `checkpoint` (None: from scratch), or nothing (`finished_step` set)."""

    output_dir: Path
    record: dict
    checkpoint: str | None = None
    finished_step: int | None = None
    checkpoint_complete: bool = False  # the checkpoint already reached the run's last step (stopped after training)


def data_fingerprint(dataset) -> str:
    """sha256 of the training pairs in order: the same data gives the same fingerprint across runs. The token ids the
    data layer keeps beside the pairs are left out: they follow from the pairs and the tokenizer (the model's
    identity is recorded apart)."""
    from dpo_recipes.data.lengths import TOKEN_COLUMNS

    ids = [name for name in TOKEN_COLUMNS if name in dataset.column_names]
    digest = hashlib.sha256()
    for row in dataset.remove_columns(ids) if ids else dataset:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def model_identity(model_args, model_path: str) -> dict:
    """Which model a run trains: the name given (or the embedded default), and its config when it is local."""
    name = "embedded:" + Path(model_path).name if is_embedded(model_args.model_name_or_path) else \
        (str(Path(model_path).resolve()) if Path(model_path).exists() else model_path)
    identity = {"model": name, "revision": model_args.model_revision}
    config = Path(model_path) / "config.json"
    if config.is_file():
        identity["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    return identity


def run_record(recipe: str, recipe_args, training_args, model_args, model_path: str, dataset) -> dict:
    """What identifies a run: recipe, model, data and the training settings that change the result."""
    def pick(obj, keys):
        return {k: _plain(getattr(obj, k)) for k in keys if hasattr(obj, k)}

    loss_hook = getattr(recipe_args, "loss_hook", None)
    return {
        "recipe": recipe,
        **model_identity(model_args, model_path),
        "data": {"source": recipe_args.dataset_name, "pairs": None if dataset is None else len(dataset),
                 "sha256": None if dataset is None else data_fingerprint(dataset)},
        "training": {**pick(training_args, TRAINING_KEYS), **pick(model_args, MODEL_KEYS),
                     "loss_hook": loss_hook, **pick(recipe_args, HOOK_KEYS.get(loss_hook, ()))},
        "length": {"max_steps": training_args.max_steps, "num_train_epochs": training_args.num_train_epochs},
        "finished_step": None,
    }


def _plain(value):
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "value"):  # enums such as SchedulerType
        return value.value
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for key in ("recipe", "model", "revision", "config_sha256"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    if new["data"]["sha256"] is not None and old.get("data", {}).get("sha256") != new["data"]["sha256"]:
        diffs.append(f"data ({old.get('data', {}).get('source')}, {old.get('data', {}).get('pairs')} pairs -> "
                     f"{new['data']['source']}, {new['data']['pairs']} pairs, other content)")
    old_training, new_training = old.get("training", {}), new["training"]
    for key in sorted(old_training):  # a setting an older record did not hold is not compared
        if old_training[key] != new_training.get(key):
            diffs.append(f"{key} {old_training[key]!r} -> {new_training.get(key)!r}")
    return diffs


def _checkpoint_state(checkpoint: str) -> dict:
    try:
        return json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _start_fresh_hint(output_dir: Path) -> str:
    return f"Start fresh with --overwrite_output_dir true, or pass a new --output_dir (now {output_dir})."


def clear_run_outputs(output_dir: Path) -> list[str]:
    """Remove what a run writes into output_dir (checkpoints, adapter, merged model, reports); nothing else."""
    removed = []
    for path in [*output_dir.glob("checkpoint-*"), *(output_dir / name for name in RUN_OUTPUTS)]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed


def precheck_output_dir(recipe: str, recipe_args, training_args, model_args, model_path: str) -> None:
    """The output folder's refusals that need no data, before the data is read (reading and tokenizing 20,000 pairs
    takes a minute): a file or an unwritable folder, --overwrite_output_dir on a folder no run wrote, with
    --resume_from_checkpoint, and a run record whose model or settings differ. Nothing is created or written here;
    `plan_output_dir` decides the rest (the data's fingerprint) once the data is read."""
    set_stage("checking the output folder", output_dir=training_args.output_dir)
    out = Path(training_args.output_dir)
    _refuse_settings(out, recipe_args, training_args, model_path)
    if out.exists() and not out.is_dir():
        raise DPORecipesError(f"--output_dir {out} is a file; pass a folder.")
    existing = next((p for p in (out, *out.resolve().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise DPORecipesError(f"--output_dir {out}: cannot create the folder ({existing} is a file).")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise DPORecipesError(f"--output_dir {out}: {'the folder' if existing == out else existing} is not writable "
                              "by this user.")
    if (out / RUN_RECORD).is_file() and not recipe_args.overwrite_output_dir:
        record = run_record(recipe, recipe_args, training_args, model_args, model_path, None)
        _refuse_another_run(out, _differences(_read_record(out / RUN_RECORD, out), record))


def _refuse_settings(out: Path, recipe_args, training_args, model_path: str) -> None:
    """The output folder's refusals that follow from the settings alone (before and after the data is read)."""
    if Path(model_path).exists() and out.resolve() == Path(model_path).resolve():
        raise DPORecipesError(f"--output_dir {out} is the model folder itself; pass another --output_dir.")
    if recipe_args.overwrite_output_dir and out.is_dir() and not (out / RUN_RECORD).is_file() \
            and any(out.iterdir()):
        raise DPORecipesError(f"--overwrite_output_dir: {out} holds no {RUN_RECORD}, so nothing in it is known to be "
                              "a run's output and nothing is removed; pass a new --output_dir.")
    if training_args.resume_from_checkpoint and recipe_args.overwrite_output_dir:
        raise DPORecipesError("--resume_from_checkpoint continues a run and --overwrite_output_dir starts one afresh: "
                              "pass one of them.")


def _refuse_another_run(out: Path, diffs: list[str]) -> None:
    if diffs:
        raise DPORecipesError(f"{out} holds another run (differs in: {'; '.join(diffs[:4])}"
                              f"{'; ...' if len(diffs) > 4 else ''}); resuming it would continue that run's "
                              f"model. {_start_fresh_hint(out)}")


def plan_output_dir(recipe: str, recipe_args, training_args, model_args, model_path: str, data,
                    rows_per_pair: int = 1) -> RunPlan:
    """Decide, before any model work, whether output_dir is a fresh start, a resume, a finished run, or refused.

    `--resume_from_checkpoint` names the checkpoint to continue ('true': the last one in output_dir); it is used only
    when the run that wrote it had the same model, data and settings. `rows_per_pair`: training rows one pair makes
    (KTO: 2), to tell how many steps an epoch-based length means. With several processes each decides from the same
    folder; then only the main one clears or writes.
    """
    set_stage("checking the output folder", output_dir=training_args.output_dir)
    out = Path(training_args.output_dir)
    _refuse_settings(out, recipe_args, training_args, model_path)
    _check_writable(out)
    requested = training_args.resume_from_checkpoint
    record = run_record(recipe, recipe_args, training_args, model_args, model_path, data.dataset)
    plan = RunPlan(out, record)
    total_steps = planned_steps(training_args, len(data.dataset) * rows_per_pair)
    # Every process reads the folder before any writes, so all reach the same decision (or the same refusal).
    if (out / RUN_RECORD).is_file() and not recipe_args.overwrite_output_dir:
        _plan_existing(plan, total_steps, last_checkpoint(out), requested)
    else:
        if out.is_dir() and not recipe_args.overwrite_output_dir:
            _refuse_unidentified(out)
        if requested:
            _use_checkpoint(plan, _requested_checkpoint(requested, out, record), total_steps)
    wait_for_everyone()
    if plan.finished_step is None and training_args.process_index == 0:
        if recipe_args.overwrite_output_dir and (out / RUN_RECORD).is_file():
            removed = clear_run_outputs(out)
            if removed:
                logger.info("--overwrite_output_dir: removed %s from %s", ", ".join(sorted(removed)), out)
        write_json_atomic(out / RUN_RECORD, record)
        data.report.save(out / "data_validation.json")
    wait_for_everyone()
    return plan


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DPORecipesError(f"--output_dir {out} is a file; pass a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DPORecipesError(f"--output_dir {out}: cannot create the folder ({exc.strerror or exc}).") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DPORecipesError(f"--output_dir {out}: the folder is not writable by this user.")


def wait_for_everyone() -> None:
    PartialState().wait_for_everyone()


def _refuse_unidentified(out: Path) -> None:
    present = sorted(p.name for p in out.iterdir() if p.name in RUN_OUTPUTS or p.name.startswith("checkpoint-"))
    if present:
        raise DPORecipesError(f"{out} holds outputs of a run this version cannot identify ({', '.join(present[:4])}; "
                              f"no {RUN_RECORD}), so it cannot tell whether resuming is safe. Pass a new --output_dir.")


def _read_record(path: Path, out: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DPORecipesError(f"{path}: unreadable run record ({exc}). {_start_fresh_hint(out)}") from None


def _requested_checkpoint(requested: str, out: Path, record: dict) -> str:
    """The checkpoint --resume_from_checkpoint names, checked to be a checkpoint of this very run."""
    if str(requested).lower() == "true":
        found = last_checkpoint(out) if out.is_dir() else None
        if found is None:
            raise DPORecipesError(f"--resume_from_checkpoint true: {out} holds no checkpoint-* folder to resume from.")
        return found
    checkpoint = Path(requested)
    if not (checkpoint / "trainer_state.json").is_file():
        what = "no such folder" if not checkpoint.is_dir() else "not a checkpoint (no trainer_state.json)"
        raise DPORecipesError(f"--resume_from_checkpoint {requested}: {what}.")
    owner = checkpoint.resolve().parent / RUN_RECORD
    if not owner.is_file():
        raise DPORecipesError(f"--resume_from_checkpoint {requested}: no {RUN_RECORD} beside it, so which model, data "
                              "and settings it was trained with is unknown; resuming could continue another run.")
    diffs = _differences(_read_record(owner, out), record)
    if diffs:
        raise DPORecipesError(f"--resume_from_checkpoint {requested}: it belongs to another run (differs in: "
                              f"{'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''}).")
    return str(checkpoint)


def _plan_existing(plan: RunPlan, total_steps: int, checkpoint: str | None, requested: str | None) -> None:
    out, record = plan.output_dir, plan.record
    old = _read_record(out / RUN_RECORD, out)
    _refuse_another_run(out, _differences(old, record))
    finished = old.get("finished_step")
    if finished is not None and total_steps <= finished:  # same length, or shorter: nothing left to train
        plan.finished_step = finished
        return
    if requested:
        checkpoint = _requested_checkpoint(requested, out, record)
    if finished is not None and checkpoint is None:
        raise DPORecipesError(f"{out} finished at step {finished} and kept no checkpoint to continue from "
                              f"(save_strategy no?). {_start_fresh_hint(out)}")
    if checkpoint:
        _use_checkpoint(plan, checkpoint, total_steps)


def _use_checkpoint(plan: RunPlan, checkpoint: str, total_steps: int) -> None:
    """Resume from `checkpoint`; one that already reached the run's last step only has its outputs written."""
    state = _checkpoint_state(checkpoint)
    step = state.get("global_step", 0)
    if step >= total_steps:
        if step == total_steps == state.get("max_steps"):
            plan.checkpoint_complete = True  # stopped after training, before the outputs: finish from it
        else:
            raise DPORecipesError(f"{checkpoint} is at step {step}, at or past this run's {total_steps} steps: raise "
                                  f"--max_steps to continue training. {_start_fresh_hint(plan.output_dir)}")
    logger.info("Resuming the run in %s from %s (step %d)", plan.output_dir, checkpoint, step)
    plan.checkpoint = checkpoint
