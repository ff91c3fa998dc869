"""Every variant recipe runs a few steps with its shipped config: on a tiny random model (fast), and on the real
embedded SmolLM2 (marked e2e)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_recipe
import yaml

from dpo_recipes.config.loss_presets import LOSS_PRESETS, VARIANT_PRESETS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "pairs.jsonl"
VARIANTS = ["orpo", "simpo", "kto"]


def run_recipe(name: str, model: str | None, out: Path, steps: int = 2):
    recipe = load_recipe(name)
    argv = ["--config", str(ROOT / "recipes" / "configs" / f"{name}.yaml"), "--dataset_name", str(FIXTURE),
            "--max_steps", str(steps), "--output_dir", str(out), "--disable_tqdm", "true",
            "--per_device_train_batch_size", "2", "--max_length", "256"]
    if model:
        argv += ["--model_name_or_path", model]
    else:  # the real model answers the 56 held-out prompts in ~1 min per pass: the tiny model's run covers that path
        argv += ["--eval_prompts_file", ""]
    recipe.main(*recipe.parse(argv))
    return json.loads((out / "train_results.json").read_text())


def saved_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_recipe_runs_a_few_steps_on_a_tiny_model(name, tiny_model_dir, tmp_path):
    metrics = run_recipe(name, tiny_model_dir, tmp_path / name)
    assert metrics["train_loss"] == metrics["train_loss"]  # not NaN
    # the LoRA adapter is saved, and the data report sits next to the run
    assert {"adapter_model.safetensors", "data_validation.json"} <= saved_files(tmp_path / name)


# --- ODPO, R-DPO and IPO are configs of the main recipe (recipes/dpo_lora.py) ---------------------------------------
MAIN_CONFIGS = {"odpo": "odpo/offset", "rdpo": "rdpo/length_diff", "ipo": None}


def run_main_recipe(config: str, model: str | None, out: Path, steps: int = 2) -> list[dict]:
    from dpo_recipes.config import parse_recipe_args

    recipe = load_recipe("dpo_lora")
    argv = ["--config", str(ROOT / "recipes" / "configs" / f"{config}.yaml"), "--dataset_name", str(FIXTURE),
            "--eval_prompts_file", "", "--max_steps", str(steps), "--output_dir", str(out), "--report_to", "none",
            "--save_strategy", "no", "--per_device_train_batch_size", "2", "--logging_steps", "1",
            "--disable_tqdm", "true", "--max_length", "256"]
    if model:
        argv += ["--model_name_or_path", model]
    recipe.main(*parse_recipe_args(argv=argv))
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert all(h["loss"] == h["loss"] for h in logs if "loss" in h)  # no NaN
    return logs


@pytest.mark.parametrize("config", list(MAIN_CONFIGS))
def test_main_recipe_config_runs_a_few_steps_on_a_tiny_model(config, tiny_model_dir, tmp_path):
    logs = run_main_recipe(config, tiny_model_dir, tmp_path / config)
    hook_metric = MAIN_CONFIGS[config]
    steps = [h for h in logs if "rewards/margins" in h]
    assert len(steps) == 2
    if hook_metric:
        assert all(hook_metric in h for h in steps)  # the hook ran and logged next to TRL's metrics
    else:
        assert not any(k.startswith(("odpo/", "rdpo/")) for h in steps for k in h)


def test_main_recipe_configs_use_the_loss_presets():
    for name in MAIN_CONFIGS:
        config = yaml.safe_load((ROOT / "recipes" / "configs" / f"{name}.yaml").read_text())
        assert config["preset"] == f"identity-lora-cpu,{name}"


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_config_agrees_with_its_preset(name):
    # The YAML a user copies and the preset a run without config uses must not drift apart in the loss settings.
    # (learning_rate differs on purpose: the papers fine-tuned all weights, the recipes train a LoRA adapter.)
    config = yaml.safe_load((ROOT / "recipes" / "configs" / f"{name}.yaml").read_text())
    for key, value in VARIANT_PRESETS[name].items():
        if key in config and key != "learning_rate":
            assert config[key] == value, (name, key)


def test_simpo_recipe_refuses_another_cpo_loss(tiny_model_dir, tmp_path):
    from dpo_recipes.errors import DPORecipesError

    recipe = load_recipe("simpo")
    with pytest.raises(DPORecipesError, match="loss_type"):
        recipe.main(*recipe.parse(["--model_name_or_path", tiny_model_dir, "--dataset_name", str(FIXTURE),
                                   "--loss_type", "sigmoid", "--output_dir", str(tmp_path)]))


def test_kto_rows_are_unpaired_and_balanced():
    from trl.data_utils import unpair_preference_dataset

    from dpo_recipes.data import load_preference_data

    pairs = load_preference_data(str(FIXTURE)).dataset.select_columns(["prompt", "chosen", "rejected"])
    rows = unpair_preference_dataset(pairs)
    assert len(rows) == 2 * len(pairs) and sum(rows["label"]) == len(pairs)
    assert set(rows.column_names) == {"prompt", "completion", "label"}


def test_loss_presets_are_valid_config_values():
    from trl import DPOConfig

    from dpo_recipes.config import RecipeArguments

    fields = set(DPOConfig.__dataclass_fields__) | set(RecipeArguments.__dataclass_fields__)
    for name, preset in LOSS_PRESETS.items():
        assert set(preset) <= fields, (name, set(preset) - fields)
    assert LOSS_PRESETS["odpo"]["odpo_alpha"] == 1.0


@pytest.mark.e2e
@pytest.mark.parametrize("name", VARIANTS + list(MAIN_CONFIGS))
def test_recipe_runs_on_the_embedded_model(name, tmp_path):
    if name in MAIN_CONFIGS:
        logs = run_main_recipe(name, None, tmp_path / name, steps=1)
        assert [h["loss"] for h in logs if "loss" in h]  # it trained and logged a (non-NaN) loss
    else:
        metrics = run_recipe(name, None, tmp_path / name, steps=1)
        assert metrics["train_loss"] == metrics["train_loss"]  # not NaN
        assert {"adapter_model.safetensors", "data_validation.json"} <= saved_files(tmp_path / name)
