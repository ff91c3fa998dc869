"""The path every recipe shares around its trainer: checks before model work, resume safety, finished outputs.

    tokenizer, model_path = load_tokenizer_for(model_args, training_args)  # cheap: no weights yet
    data = load_train_data(recipe_args, training_args, tokenizer)     # validated; what the trainer will drop, counted
    prompts = check_before_model(recipe_args, training_args, model_args, data.dataset, tokenizer)
    plan = plan_output_dir(recipe, recipe_args, training_args, model_args, model_path, data)
    if plan.finished_step is not None: return                         # "already finished at step N"
    ... load the model, build the trainer ...
    metrics = train(trainer, plan)
    save_outputs(trainer, tokenizer, recipe_args, training_args, metrics)
    finish(plan, trainer, summarize(...))

Why each step exists:
- Everything that can fail without the model fails before it is loaded (a 7B model takes minutes to load, and the
  before-training evaluation as long again).
- An output folder is resumed only when it holds an unfinished run of the same model, data and training settings.
  A finished run is not trained again. Anything else is refused in one line naming what differs, because
  continuing another run's adapter on new data gives a wrong model with exit status 0.
- Outputs keep the user's umask, and a merged model left from an earlier adapter is never left next to a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import apply_default_modes, write_json_atomic
from dpo_recipes.nonfinite import NonFiniteGuard
from dpo_recipes.preemption import EXIT_PREEMPTED, Preempted
from dpo_recipes.preemption import handler as preemption_handler

logger = logging.getLogger(__name__)
# TRL 1.16 reads `model.is_gradient_checkpointing` around every reference forward, and transformers 5 warns on each
# read: hundreds of identical lines per run about code that is not the user's.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

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

# Where the run is, for the one-line message on Ctrl-C.
_PROGRESS: dict = {"stage": "start", "output_dir": None, "trainer": None}


def set_stage(stage: str, **context) -> None:
    """Note what the recipe is doing now (shown if the user interrupts it)."""
    _PROGRESS["stage"] = stage
    _PROGRESS.update(context)


# --- 1. before model work ------------------------------------------------------------------------------------------
def load_tokenizer_for(model_args, training_args):
    """Resolve `--model_name_or_path` (fetching the embedded default if needed) and load only its tokenizer."""
    from dpo_recipes.models import load_tokenizer, missing_in_folder, resolve_model_path

    set_stage("loading the tokenizer")
    path = resolve_model_path(model_args.model_name_or_path)
    missing = missing_in_folder(Path(path), "model") if Path(path).is_dir() else None
    if missing:  # found now, not after the data is read and the output folder is claimed for this run
        raise DPORecipesError(f"--model_name_or_path {model_args.model_name_or_path}: {path} is not a model folder: "
                              f"{missing}.")
    return load_tokenizer(path, model_args.model_revision, training_args.trust_remote_code), path


def load_model_for(model_args, training_args, model_path: str):
    """Load the policy model's weights (safetensors only; remote code only with --trust_remote_code true)."""
    from dpo_recipes.models import load_model

    set_stage("loading the model")
    return load_model(model_path, dtype=model_args.dtype, revision=model_args.model_revision,
                      attn_implementation=model_args.attn_implementation,
                      trust_remote_code=training_args.trust_remote_code)


def load_train_data(recipe_args, training_args, tokenizer, allow_unpaired: bool = False):
    """Load and validate `dataset_name`; keep the first `max_train_samples`. Nothing is written yet.

    `allow_unpaired` (KTO): unpaired data (one answer and a label a row) loads as prompt / completion / label.

    Pairs the trainer would drop because their prompt fills `max_length` are dropped here and counted, so the report
    and the summary give the pairs that really train. With none left it stops in one line.
    """
    from dpo_recipes.data import load_preference_data

    set_stage("loading the data")
    if not recipe_args.dataset_name:
        raise DPORecipesError("No training data: pass --dataset_name PAIRS.jsonl (or a folder / hub id), or --config.")
    data = load_preference_data(
        recipe_args.dataset_name, split=recipe_args.dataset_train_split, data_format=recipe_args.data_format,
        column_map=recipe_args.column_map, validation=recipe_args.validation, config=recipe_args.validation_config(),
        tokenizer=tokenizer, max_length=training_args.max_length, drop_prompt_too_long=True,
        allow_unpaired=allow_unpaired)
    data.eval_dataset = load_eval_data(recipe_args, training_args, tokenizer, data, allow_unpaired)
    if recipe_args.max_train_samples and recipe_args.max_train_samples < len(data.dataset):
        data.report.notes.append(f"max_train_samples: training on the first {recipe_args.max_train_samples} of "
                                 f"{len(data.dataset)} kept pairs")
        data.dataset = data.dataset.select(range(recipe_args.max_train_samples))
    print(data.report.summary())
    return data


def load_eval_data(recipe_args, training_args, tokenizer, data, allow_unpaired: bool = False):
    """The held-out preference pairs TRL's eval loop scores (eval_loss, eval_rewards/*), or None.

    - `--eval_fraction F`: carved off the validated training pairs, seeded (data_seed, else seed), whole prompts at a
      time: no prompt is in both sets, so the eval set measures pairs the model never saw. The training pairs keep
      their order.
    - `--eval_dataset_name SRC`: its own file / folder / hub id (split: dataset_test_split), validated with the
      same rules.
    - neither, and eval_strategy is not 'no': dataset_name's dataset_test_split when dataset_name is a folder or a
      hub dataset (TRL's and alignment-handbook's scripts' behaviour); a single file has no test split: refused.
    """
    from dpo_recipes.data import load_preference_data

    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if recipe_args.eval_fraction:
        return _carve_eval_pairs(data, recipe_args.eval_fraction,
                                 training_args.data_seed if training_args.data_seed is not None else training_args.seed)
    source = recipe_args.eval_dataset_name
    if source is None and strategy != "no":
        if Path(recipe_args.dataset_name).is_file():
            raise DPORecipesError(f"--eval_strategy {strategy} needs held-out pairs, and {recipe_args.dataset_name} is "
                                  "one file with no test split: pass --eval_fraction 0.1 (carved off the training "
                                  "pairs) or --eval_dataset_name EVAL.jsonl.")
        source = recipe_args.dataset_name
    if source is None:
        return None
    set_stage("loading the eval data")
    evaluation = load_preference_data(
        source, split=recipe_args.dataset_test_split, data_format=recipe_args.data_format,
        column_map=recipe_args.column_map, validation=recipe_args.validation, config=recipe_args.validation_config(),
        tokenizer=tokenizer, max_length=training_args.max_length, drop_prompt_too_long=True,
        allow_unpaired=allow_unpaired)
    data.report.notes.append(f"eval pairs: {len(evaluation.dataset)} of {evaluation.report.total_rows} rows of "
                             f"{source} (split {recipe_args.dataset_test_split}) kept by validation")
    data.eval_report = evaluation.report
    return evaluation.dataset


def _carve_eval_pairs(data, fraction: float, seed: int):
    """Move about `fraction` of data.dataset's pairs, whole prompts at a time, into an eval set (seeded)."""
    import random

    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(data.dataset["prompt"]):
        groups.setdefault(json.dumps(prompt, sort_keys=True, ensure_ascii=False), []).append(i)
    if len(groups) < 2:
        raise DPORecipesError(f"--eval_fraction {fraction}: the training pairs have {len(groups)} distinct prompt(s); "
                              "an eval set needs prompts the training set does not have. Pass --eval_dataset_name.")
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target, held, prompts = max(1, round(fraction * len(data.dataset))), [], 0
    for indexes in order:
        if len(held) >= target or len(indexes) + len(held) > len(data.dataset) // 2:
            continue
        held.extend(indexes)
        prompts += 1
    held_set = set(held)
    evaluation = data.dataset.select(sorted(held))
    data.dataset = data.dataset.select([i for i in range(len(data.dataset)) if i not in held_set])
    data.report.notes.append(f"eval_fraction {fraction}: {len(evaluation)} pairs ({prompts} prompts) held out for "
                             f"evaluation, seed {seed}; no prompt is in both sets; {len(data.dataset)} pairs left to "
                             "train on")
    return evaluation


def pairs_only(dataset):
    """prompt / chosen / rejected of `dataset` (None stays None): for trainers that read no other column."""
    return dataset.select_columns(["prompt", "chosen", "rejected"]) if dataset is not None else None


def check_before_model(recipe_args, training_args, model_args, dataset, tokenizer, recipe: str = "dpo_lora"
                       ) -> list[dict]:
    """Every check that needs no model weights: run before loading them. Returns the evaluation prompts it read.

    First the pre-flight check (`dpo_recipes.preflight`: settings TRL or PEFT ignore, risky combinations, a memory
    and time estimate; `--preflight strict` stops on any of them)."""
    from dpo_recipes.data.lengths import require_chat_template
    from dpo_recipes.evaluation import load_eval_prompts
    from dpo_recipes.monitor import parse_thresholds
    from dpo_recipes.preflight import check_before_run

    set_stage("checking the settings")
    check_before_run(recipe_args, training_args, model_args, recipe, dataset=dataset, tokenizer=tokenizer)
    _check_push_to_hub(training_args)
    parse_thresholds(recipe_args.health_thresholds)  # a bad alarm threshold fails before the output folder is claimed

    if recipe_args.merge and not model_args.use_peft:
        raise DPORecipesError("--merge merges a LoRA adapter into its base model, but use_peft is false: the model "
                              f"saved in {training_args.output_dir} is already the full model. Drop --merge.")
    if dataset is not None and len(dataset) and isinstance(dataset[0]["prompt"], list):
        require_chat_template(tokenizer, model_args.model_name_or_path)
    prompts = load_eval_prompts(recipe_args.eval_prompts_file)  # a bad prompts file fails now, not after training
    if any(p["kind"] == "identity" for p in prompts) and not recipe_args.identity_name:
        raise DPORecipesError(f"{recipe_args.eval_prompts_file} has identity prompts, but no --identity_name says "
                              "which name their answers should contain.")
    loss_hook = getattr(recipe_args, "loss_hook", None)
    if loss_hook is not None and not _is_dpo(training_args):
        raise DPORecipesError(f"--loss_hook {loss_hook} changes DPO's loss (recipes/dpo_lora.py); this recipe trains "
                              f"with {type(training_args).__name__.removesuffix('Config')}'s own loss. Drop "
                              "--loss_hook, or run recipes/dpo_lora.py.")
    if loss_hook is not None:
        from dpo_recipes.trainer import check_hook_config, check_hook_scores

        check_hook_config(loss_hook, training_args)
        if loss_hook == "odpo":
            check_hook_scores(dataset, "train_dataset", recipe_args.odpo_ratio)
    if getattr(recipe_args, "anchor_coef", 0) and _is_dpo(training_args):
        from dpo_recipes.trainer import check_anchor_config

        check_anchor_config(recipe_args.anchor_coef, dataset, training_args.precompute_ref_log_probs)
    return prompts


def _check_push_to_hub(training_args) -> None:
    """--push_to_hub needs the hub: refuse before model work when it is unreachable (Trainer would fail on creating
    the repository after the model is loaded)."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise DPORecipesError("--push_to_hub true, but HF_HUB_OFFLINE is set: unset it, or drop --push_to_hub.")
    from urllib.parse import urlparse

    from dpo_recipes.tracking import server_answers

    if not server_answers(constants.ENDPOINT, timeout=5):
        raise DPORecipesError(f"--push_to_hub true, but {urlparse(constants.ENDPOINT).hostname} does not answer from "
                              "this machine: push later with `huggingface-cli upload`, or drop --push_to_hub.")


def _is_dpo(training_args) -> bool:
    from trl import DPOConfig

    return isinstance(training_args, DPOConfig)


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
    """sha256 of the training pairs in order: the same data gives the same fingerprint across runs."""
    digest = hashlib.sha256()
    for row in dataset:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def model_identity(model_args, model_path: str) -> dict:
    """Which model a run trains: the name given (or the embedded default), and its config when it is local."""
    from dpo_recipes.models import is_embedded

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
        "data": {"source": recipe_args.dataset_name, "pairs": len(dataset), "sha256": data_fingerprint(dataset)},
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
    if old.get("data", {}).get("sha256") != new["data"]["sha256"]:
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


def plan_output_dir(recipe: str, recipe_args, training_args, model_args, model_path: str, data,
                    rows_per_pair: int = 1) -> RunPlan:
    """Decide, before any model work, whether output_dir is a fresh start, a resume, a finished run, or refused.

    `--resume_from_checkpoint` names the checkpoint to continue ('true': the last one in output_dir); it is used only
    when the run that wrote it had the same model, data and settings. `rows_per_pair`: training rows one pair makes
    (KTO: 2), to tell how many steps an epoch-based length means. With several processes each decides from the same
    folder; then only the main one clears or writes.
    """
    from dpo_recipes.tracking import last_checkpoint

    set_stage("checking the output folder", output_dir=training_args.output_dir)
    out = Path(training_args.output_dir)
    if Path(model_path).exists() and out.resolve() == Path(model_path).resolve():
        raise DPORecipesError(f"--output_dir {out} is the model folder itself; pass another --output_dir.")
    _check_writable(out)
    if recipe_args.overwrite_output_dir and out.is_dir() and not (out / RUN_RECORD).is_file() \
            and any(out.iterdir()):
        raise DPORecipesError(f"--overwrite_output_dir: {out} holds no {RUN_RECORD}, so nothing in it is known to be "
                              "a run's output and nothing is removed; pass a new --output_dir.")
    requested = training_args.resume_from_checkpoint
    if requested and recipe_args.overwrite_output_dir:
        raise DPORecipesError("--resume_from_checkpoint continues a run and --overwrite_output_dir starts one afresh: "
                              "pass one of them.")
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
    _wait_for_everyone()
    if plan.finished_step is None and training_args.process_index == 0:
        if recipe_args.overwrite_output_dir and (out / RUN_RECORD).is_file():
            removed = clear_run_outputs(out)
            if removed:
                logger.info("--overwrite_output_dir: removed %s from %s", ", ".join(sorted(removed)), out)
        write_json_atomic(out / RUN_RECORD, record)
        data.report.save(out / "data_validation.json")
    _wait_for_everyone()
    return plan


def planned_steps(training_args, rows: int) -> int:
    """The optimizer steps the run will make: max_steps, or as Trainer counts them for num_train_epochs."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    batches = math.ceil(rows / (training_args.per_device_train_batch_size * training_args.world_size))
    accumulation = training_args.gradient_accumulation_steps
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(training_args.num_train_epochs * per_epoch)


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DPORecipesError(f"--output_dir {out} is a file; pass a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DPORecipesError(f"--output_dir {out}: cannot create the folder ({exc.strerror or exc}).") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DPORecipesError(f"--output_dir {out}: the folder is not writable by this user.")


def _wait_for_everyone() -> None:
    from accelerate import PartialState

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
    from dpo_recipes.tracking import last_checkpoint

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
    diffs = _differences(old, record)
    if diffs:
        raise DPORecipesError(f"{out} holds another run (differs in: {'; '.join(diffs[:4])}"
                              f"{'; ...' if len(diffs) > 4 else ''}); resuming it would continue that run's "
                              f"model. {_start_fresh_hint(out)}")
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


# --- 3. train and finish ------------------------------------------------------------------------------------------
def train(trainer, plan: RunPlan) -> dict:
    """Train (resuming from the plan's checkpoint). Returns TRL's train metrics ({} when nothing was left to train).

    A checkpoint that already reached the last step (the run stopped after training, before its outputs) is loaded
    instead of trained on: Trainer would otherwise run one step past max_steps.
    """
    from dpo_recipes.distributed import check_in_effect

    set_stage("training", trainer=trainer)
    check_in_effect(trainer)
    trainer.add_callback(CheckpointModes())
    monitor = health_monitor(trainer)
    guard = NonFiniteGuard.attach(trainer)  # RecipeDPOTrainer has it already; TRL's other trainers get it here
    if monitor is not None:
        guard.on_trip = monitor.record_nonfinite_update
    preemption = preemption_handler().attach(trainer)
    preemption.may_save = lambda: guard.tripped is None and (monitor is None or monitor.nonfinite_step is None)
    _redact_wandb_config(trainer)
    if plan.checkpoint_complete:
        from transformers import TrainerState

        trainer._load_from_checkpoint(plan.checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(plan.checkpoint) / "trainer_state.json"))
        logger.info("Training had finished in %s: its outputs are written from it", plan.checkpoint)
        return {}
    result = trainer.train(resume_from_checkpoint=plan.checkpoint)  # RecipeDPOTrainer raises the guard's report itself
    if guard.tripped is not None:
        raise DPORecipesError(guard.report())
    if monitor is not None and monitor.nonfinite_step is not None:  # the weights may hold that step's update
        from dpo_recipes.tracking import last_checkpoint

        clean = last_checkpoint(plan.output_dir)
        raise DPORecipesError(f"Stopped at step {monitor.nonfinite_step}: a logged value was not a number (see the "
                              "warning above); the model is not saved. "
                              + (f"The last clean checkpoint is {clean}." if clean else "No checkpoint was saved."))
    if monitor is not None and monitor.stopped_at_step is not None:
        logger.warning("The health monitor stopped training at step %d (--health_monitor stop); the outputs are saved "
                       "as they are. Rerunning the same command continues from the last checkpoint.",
                       monitor.stopped_at_step)
    stopped = preemption.stopped()
    if stopped is not None:
        raise stopped
    return result.metrics


def _redact_wandb_config(trainer) -> None:
    """Swap transformers' WandbCallback for one that logs the arguments without secrets (tracking.redact)."""
    from transformers.integrations import WandbCallback

    from dpo_recipes.tracking import redacting_wandb_callback

    if any(type(c) is WandbCallback for c in trainer.callback_handler.callbacks):
        trainer.remove_callback(WandbCallback)
        trainer.add_callback(redacting_wandb_callback())


def health_monitor(trainer):
    """The trainer's HealthMonitor callback, or None (--health_monitor off)."""
    from dpo_recipes.monitor import HealthMonitor

    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, HealthMonitor)), None)


class CheckpointModes(TrainerCallback):
    """Give each checkpoint the umask's modes as it is saved (safetensors writes weights 0o600), not at the end."""

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # Trainer's name for the one just saved
        if state.is_world_process_zero and checkpoint.is_dir():
            apply_default_modes(checkpoint)


@dataclass
class Watch:
    """What watches a run: its W&B run (None without W&B) and the health monitor (None with --health_monitor off)."""

    wandb_run: object = None
    monitor: object = None

    @property
    def callbacks(self) -> list:
        """The TrainerCallbacks to pass to the trainer."""
        return [self.monitor] if self.monitor is not None else []


def start_watching(recipe: str, recipe_args, training_args, model_args, plan: RunPlan, data) -> Watch:
    """Start the run's W&B run (offline without a key or network; see `tracking.start_wandb_run`) and its health
    monitor (`dpo_recipes.monitor`), whose alarms also go to W&B as alerts."""
    from dpo_recipes.monitor import HealthMonitor, parse_thresholds
    from dpo_recipes.tracking import prepare_wandb, start_wandb_run, wandb_alert

    set_stage("starting the run's tracking")
    thresholds = parse_thresholds(recipe_args.health_thresholds)
    mode = prepare_wandb(training_args.report_to, training_args.output_dir)
    wandb_run = start_wandb_run(recipe, recipe_args, training_args, model_args, plan.record, data.report,
                                resumed_from=plan.checkpoint) if mode is not None and mode != "disabled" else None
    monitor = None
    if recipe_args.health_monitor != "off":
        monitor = HealthMonitor(recipe_args.health_monitor, thresholds,
                                on_alarm=wandb_alert if wandb_run is not None else None)
        if plan.checkpoint:  # a resumed run keeps the alarms raised before its checkpoint
            monitor.restore_alarms(plan.checkpoint)
    return Watch(wandb_run, monitor)


def evaluate(trainer) -> dict:
    """TRL's evaluation on the held-out pairs (eval_loss, eval_rewards/accuracies, eval_rewards/margins, ...) of the
    final weights, saved as eval_results.json and logged like a training step; {} when the run has no eval set."""
    if trainer.eval_dataset is None:
        return {}
    last = trainer.state.log_history[-2:]  # an eval_steps evaluation at the last step, then train()'s totals
    done = [log for log in last if "eval_loss" in log and log.get("step") == trainer.state.global_step]
    if done:  # the eval loop already ran on these weights: not again
        metrics = {k: v for k, v in done[-1].items() if k.startswith("eval_") or k == "epoch"}
    else:
        set_stage("evaluating on the held-out pairs")
        metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return metrics


def save_outputs(trainer, tokenizer, recipe_args, training_args, metrics: dict) -> None:
    """The trained model (adapter, or full model), TRL's metrics, and a merged model with --merge.

    A `merged/` folder from an earlier adapter is removed when this run does not rebuild it: it would no longer
    match the adapter next to it.
    """
    from dpo_recipes.models import merge_adapter
    from dpo_recipes.tracking import save_log_history

    set_stage("saving")
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))  # the weights and the tokenizer, from the right process(es)
    if not trainer.is_world_process_zero():
        return
    if metrics:
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
    save_log_history(trainer.state.log_history, out)
    merged = out / "merged"
    if recipe_args.merge:
        set_stage("merging the adapter")
        merge_adapter(trainer.model, tokenizer, merged)
    elif merged.exists():
        shutil.rmtree(merged)
        logger.info("Removed %s: it was merged from an earlier adapter (pass --merge to rebuild it)", merged)
    # safetensors writes weights 0o600 whatever the umask: the adapter and checkpoints get the umask's modes too.
    for path in [*out.glob("checkpoint-*"), *(out / name for name in RUN_OUTPUTS)]:
        if path.exists():
            apply_default_modes(path)


def summarize(recipe_args, model_args, model_path: str, data, trainer, plan: RunPlan, train_seconds: float,
              metrics: dict, rows_per_pair: int = 1) -> dict:
    """The summary.json figures every recipe reports: what trained, on what, how fast.

    `rows_per_pair`: training rows made from one pair (KTO unpairs each pair into 2 rows)."""
    from dpo_recipes.distributed import distributed_setup
    from dpo_recipes.tracking import checkpoint_step, package_versions

    args = trainer.args
    steps_run = 0 if plan.checkpoint_complete else trainer.state.global_step - checkpoint_step(plan.checkpoint)
    pairs_trained = steps_run * args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps \
        / rows_per_pair
    return {
        "model": model_path if model_args.model_name_or_path else f"embedded:{model_path}",
        "preset": recipe_args.preset, "dataset": recipe_args.dataset_name, "data_read_as": data.report.detected,
        # pairs_total = pairs_after_validation + sum(pairs_dropped); pairs_used: after --max_train_samples
        "pairs_total": data.report.total_rows, "pairs_after_validation": data.report.kept,
        "pairs_dropped": {rule: n for rule, n in data.report.dropped.items() if n}, "pairs_used": len(data.dataset),
        "steps": trainer.state.global_step, "resumed_from": plan.checkpoint, "train_seconds": round(train_seconds, 2),
        "pairs_trained": pairs_trained,
        "train_pairs_per_second": round(pairs_trained / train_seconds, 3) if train_seconds else None,
        "train_loss": metrics.get("train_loss"),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",  # of the training forward/backward
        **speed_levers(trainer),
        "distributed": distributed_setup(trainer),
        "versions": package_versions(),
        **final_eval_metrics(trainer),
    }


def final_eval_metrics(trainer) -> dict:
    """The last held-out pair evaluation's metrics ({'eval': {...}}, with the step and the rows scored: pairs, or for
    KTO 2 rows a pair), or {} when the run evaluated none."""
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    if not evals:
        return {}
    return {"eval": {k.removeprefix("eval_"): v for k, v in evals[-1].items() if k.startswith("eval_")}
            | {"step": evals[-1].get("step"), "rows": len(trainer.eval_dataset) if trainer.eval_dataset else None}}


def speed_levers(trainer) -> dict:
    """What the DPO trainer's speed levers did in this run: tokens the model ran against TRL's two-row layout, and
    the reference cache's pairs found and computed."""
    levers = {}
    if hasattr(trainer, "shared_prompt_tokens"):
        two_rows, run = trainer.shared_prompt_tokens()
        levers["shared_prompt_tokens"] = {"two_row_layout": two_rows, "run": run,
                                          "share": round(run / two_rows, 3) if two_rows else None}
    if getattr(trainer, "lever_check", None) is not None:  # the levers against TRL's own log-probs, first batch
        levers["lever_check"] = trainer.lever_check
    cache = getattr(trainer, "reference_cache", None)
    if cache is not None:
        levers["reference_cache"] = {"pairs_found": cache.hits, "pairs_computed": cache.misses,
                                     "folder": str(cache.directory)}
    return levers


def finish(plan: RunPlan, trainer, summary: dict, before=None, after=None, watch: Watch | None = None,
           plots: bool = True) -> None:
    """Write summary.json (with the drift on general prompts, `evaluation.general_kl`, and the health monitor's
    alarms, the answers' checks included) and the before/after answers, draw the plots, close the W&B run, then mark
    the run finished: a rerun of the same command then trains nothing. Only the main process writes."""
    from dpo_recipes.tracking import finish_wandb_run, write_summary

    set_stage("finished")
    if before is not None and before.prompts:  # every process: a ZeRO-3 forward needs all of them
        from dpo_recipes.evaluation import general_kl

        set_stage("measuring the drift on general prompts")
        summary["general_kl_per_token"] = general_kl(trainer.model, trainer.processing_class, before)
    monitor = watch.monitor if watch is not None else None
    if monitor is not None and before is not None and after is not None and before.prompts:
        monitor.check_answers(before, after, trainer.state.global_step)
    if monitor is not None:
        summary["health"] = monitor.summary()
    if not trainer.is_world_process_zero():
        return
    write_summary(plan.output_dir, summary, before, after)
    drawn = draw_plots(plan.output_dir) if plots else []
    if watch is not None and watch.wandb_run is not None:
        finish_wandb_run(summary, before, after, monitor.alarms if monitor is not None else (), drawn)
    if trainer.args.push_to_hub:  # the summary, answers and plots too (save_model pushed the weights)
        trainer.push_to_hub(commit_message="dpo-recipes: summary, held-out answers, plots")
    write_json_atomic(plan.output_dir / RUN_RECORD, {**plan.record, "finished_step": trainer.state.global_step})


def draw_plots(output_dir: Path) -> list[Path]:
    """The run's PNGs in OUTPUT_DIR/plots (`dpo_recipes.plots`). A plot that fails to draw costs a warning, never the
    finished run."""
    from dpo_recipes.plots import plot_run

    try:
        return plot_run(output_dir)
    except Exception as exc:  # noqa: BLE001 - plots are a view of results already saved
        logger.warning("Plots not drawn (%s: %s); redraw them with `dpo-recipes plot %s`.", type(exc).__name__, exc,
                       output_dir)
        return []


def report_finished(plan: RunPlan, recipe_args=None, training_args=None, model_args=None, model_path=None,
                    tokenizer=None) -> None:
    """Say the run already finished. With --merge and no merged model yet, merge the saved adapter now."""
    print(f"{plan.output_dir}: already finished at step {plan.finished_step}; nothing to train. "
          f"Raise --max_steps to continue it, or --overwrite_output_dir true to train it again.")
    if recipe_args is None or not recipe_args.merge:
        return
    merged = plan.output_dir / "merged"
    if (merged / "config.json").is_file():
        print(f"{merged}: already merged from this adapter.")
        return
    if training_args.process_index == 0:
        from peft import PeftModel

        from dpo_recipes.models import merge_adapter

        base = load_model_for(model_args, training_args, model_path)
        set_stage("merging the adapter")
        merge_adapter(PeftModel.from_pretrained(base, str(plan.output_dir)), tokenizer, merged, copy=False)
        print(f"{merged}: merged the saved adapter into the base model.")
    _wait_for_everyone()


# --- errors and Ctrl-C ---------------------------------------------------------------------------------------------
def _interrupt_message() -> str:
    stage, out, trainer = _PROGRESS["stage"], _PROGRESS.get("output_dir"), _PROGRESS.get("trainer")
    where = f"while {stage}"
    if trainer is not None and stage == "training":
        where += f", at step {trainer.state.global_step} of {trainer.state.max_steps}"
    resume = ""
    if out:
        from dpo_recipes.tracking import last_checkpoint

        checkpoint = last_checkpoint(out)
        resume = (f"; rerun the same command to resume from {checkpoint}" if checkpoint else
                  "; no checkpoint was saved yet, so a rerun starts from the beginning")
    return f"interrupted {where}{resume}."


def _preempted_message(stopped: Preempted) -> str:
    out, trainer = _PROGRESS.get("output_dir"), _PROGRESS.get("trainer")
    if stopped.step is not None and out:
        total = f" of {trainer.state.max_steps}" if trainer is not None else ""
        checkpoint = Path(out) / f"checkpoint-{stopped.step}"
        return (f"preempted by {stopped.name} at step {stopped.step}{total}: saved {checkpoint}; rerun the same "
                "command to resume from it.")
    return f"preempted by {stopped.name}: {_interrupt_message().removeprefix('interrupted ')}"


@contextlib.contextmanager
def recipe_errors():
    """A recipe's user errors and Ctrl-C as one line on stderr: exit status 2, or 130 for an interrupt. SIGTERM and
    SIGUSR1 (a scheduler's preemption, `dpo_recipes.preemption`) save a checkpoint at the next step boundary and exit
    with status 75 (EXIT_PREEMPTED)."""
    preemption_handler().install()
    try:
        yield
    except DPORecipesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(_interrupt_message(), file=sys.stderr)
        raise SystemExit(130) from None
    except Preempted as stopped:
        from accelerate import PartialState

        if PartialState().is_main_process:
            print(_preempted_message(stopped), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PREEMPTED) from None
