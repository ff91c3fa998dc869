"""Presets resolve to parser defaults that construct on this machine, in the documented precedence."""

import pytest

from dpo_recipes.config import parse_recipe_args
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.config.presets import DEFAULT_PRESET, PRESETS, default_preset, hardware_defaults, preset_defaults


def test_hardware_defaults_ask_for_bf16_on_a_cpu_only_where_it_multiplies_bf16():
    import torch

    from dpo_recipes.config.presets import cpu_has_fast_bf16

    defaults = hardware_defaults()
    if not torch.cuda.is_available():
        assert defaults == {"bf16": cpu_has_fast_bf16(), "fp16": False, "use_cpu": True}


def test_no_preset_sets_precision():
    for name, values in PRESETS.items():
        assert not {"bf16", "fp16"} & set(values), name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_dpo_config_here(name, tmp_path):
    _, training_args, model_args = parse_recipe_args(None, ["--output_dir", str(tmp_path), "--preset", name])
    assert training_args.output_dir == str(tmp_path)
    if "learning_rate" in PRESETS[name]:
        assert training_args.learning_rate == PRESETS[name]["learning_rate"]


def test_precedence_is_preset_then_yaml_then_cli(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 0.001\nbeta: 0.3\noutput_dir: " + str(tmp_path) + "\n")
    _, args, _ = parse_recipe_args(None, ["--config", str(config), "--beta", "0.2"])
    assert args.learning_rate == 0.001  # YAML over preset
    assert args.beta == 0.2  # CLI over YAML
    # preset where neither speaks: none named, so the hardware's LoRA preset
    assert args.gradient_accumulation_steps == PRESETS[default_preset()]["gradient_accumulation_steps"]


def test_overlaying_a_loss_preset_drops_weights_written_for_another_loss_list():
    values = preset_defaults(f"{DEFAULT_PRESET},ipo")
    assert values["loss_type"] == ["ipo"]
    assert "loss_weights" not in values
    assert values["use_peft"] is True  # the base preset's LoRA settings survive the overlay


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(DPORecipesError, match="identity-lora-cpu"):
        preset_defaults("nope")


@pytest.mark.parametrize("value", ["true", "false"])
def test_bf16_can_be_forced_either_way_on_a_cpu(tmp_path, value):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine picks its own precision")
    _, training_args, _ = parse_recipe_args(None, ["--output_dir", str(tmp_path), "--bf16", value])
    assert training_args.bf16 is (value == "true")  # TRL's own bf16 default fails here: "doesn't support bf16/gpu"


def test_default_config_parses_with_safe_defaults():
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "recipes" / "configs" / "dpo_lora.yaml"
    recipe_args, training_args, model_args = parse_recipe_args(config, [])
    assert training_args.trust_remote_code is False
    assert model_args.model_name_or_path is None  # the embedded default
    assert recipe_args.identity_name == "Athene"
    assert training_args.loss_type == PRESETS[DEFAULT_PRESET]["loss_type"]


def test_length_grouping_is_for_the_dpo_trainer_only():
    from dpo_recipes.config.presets import preset_defaults

    assert preset_defaults("lora-cpu")["train_sampling_strategy"] == "group_by_length"
    for variant in ("orpo", "simpo", "kto"):  # their trainers' columns give transformers no lengths to group by
        assert "train_sampling_strategy" not in preset_defaults("lora-cpu", variant=variant)
    assert "train_sampling_strategy" not in preset_defaults("identity-lora-cpu")  # its batch order is measured


@pytest.mark.parametrize("launch, bf16", [("bf16", True), ("no", False)])
def test_a_deepspeed_launch_fixes_the_precision(monkeypatch, launch, bf16):
    from dpo_recipes.config.presets import hardware_defaults

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launch)
    assert hardware_defaults()["bf16"] is bf16 and hardware_defaults()["fp16"] is False


def test_fsdp_on_a_cpu_and_cpu_flag_with_deepspeed_are_refused(monkeypatch):
    from dpo_recipes.train.distributed import check_launch_environment
    from dpo_recipes.errors import DPORecipesError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(DPORecipesError, match="FSDP through accelerate is GPU-only"):
        check_launch_environment()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    with pytest.raises(DPORecipesError, match="drop DeepSpeed"):
        check_launch_environment()


def test_dpo_full_takes_the_full_preset_and_refuses_lora_or_no_data():
    from conftest import load_recipe

    recipe = load_recipe("dpo_full")
    _, training_args, model_args = recipe.parse(["--dataset_name", "pairs.jsonl"])
    assert model_args.use_peft is False and training_args.learning_rate == PRESETS["full-gpu"]["learning_rate"]
    with pytest.raises(DPORecipesError, match="trains every weight"):
        recipe.parse(["--dataset_name", "pairs.jsonl", "--use_peft", "true"])
    with pytest.raises(DPORecipesError, match="needs --dataset_name"):
        recipe.parse([])
