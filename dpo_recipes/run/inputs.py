"""The run's inputs before any model weights: the tokenizer (fetching the embedded default model if needed), the
training pairs (validated, every dropped pair counted) and the held-out pairs TRL's eval loop scores; the model."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from dpo_recipes import progress
from dpo_recipes.data import load_preference_data
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.models import load_model, load_tokenizer, missing_in_folder, resolve_model_path
from dpo_recipes.run.stage import set_stage

logger = logging.getLogger(__name__)


def load_tokenizer_for(model_args, training_args):
    """Resolve `--model_name_or_path` (fetching the embedded default if needed) and load only its tokenizer."""
    set_stage("loading the tokenizer")
    progress.set_enabled(not training_args.disable_tqdm)  # the data layer's bars and datasets' obey --disable_tqdm
    path = resolve_model_path(model_args.model_name_or_path)
    if Path(path).is_dir():  # absolute: adapter_config.json and the model card then name it from any folder
        path = str(Path(path).resolve())
    missing = missing_in_folder(Path(path), "model") if Path(path).is_dir() else None
    if missing:  # found now, not after the data is read and the output folder is claimed for this run
        raise DPORecipesError(f"--model_name_or_path {model_args.model_name_or_path}: {path} is not a model folder: "
                              f"{missing}.")
    return load_tokenizer(path, model_args.model_revision, training_args.trust_remote_code), path


def load_model_for(model_args, training_args, model_path: str):
    """Load the policy model's weights (safetensors only; remote code only with --trust_remote_code true)."""
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
    set_stage("loading the data")
    if not recipe_args.dataset_name:
        raise DPORecipesError("No training data: pass --dataset_name PAIRS.jsonl (or a folder / hub id), or --config.")
    source = Path(recipe_args.dataset_name)
    size = f" ({source.stat().st_size / 1e6:.0f} MB)" if source.is_file() and source.stat().st_size > 5e6 else ""
    logger.info("Reading and validating %s%s", recipe_args.dataset_name, size)
    data = load_preference_data(
        recipe_args.dataset_name, split=recipe_args.dataset_train_split, data_format=recipe_args.data_format,
        column_map=recipe_args.column_map, validation=recipe_args.validation, config=recipe_args.validation_config(),
        tokenizer=tokenizer, max_length=training_args.max_length, drop_prompt_too_long=True,
        allow_unpaired=allow_unpaired, keep_token_ids=True)
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
        allow_unpaired=allow_unpaired, keep_token_ids=True)
    data.report.notes.append(f"eval pairs: {len(evaluation.dataset)} of {evaluation.report.total_rows} rows of "
                             f"{source} (split {recipe_args.dataset_test_split}) kept by validation")
    data.eval_report = evaluation.report
    return evaluation.dataset


def _carve_eval_pairs(data, fraction: float, seed: int):
    """Move about `fraction` of data.dataset's pairs, whole prompts at a time, into an eval set (seeded)."""
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
