"""The pre-flight check: every setting TRL 1.16 / PEFT / the recipe layer ignores is named, risky combinations are
flagged, the shipped configs pass clean, the alignment-handbook's DPO recipes are reported (not crashed on), and the
CLI prints the estimate and exits 2 under --strict. No weights are loaded: models are config.json on the meta device."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from dpo_recipes import cli

from dpo_recipes.config import presets
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.check.preflight import check_before_run, check_config, parse_config, preflight

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
FIXTURE = ROOT / "tests" / "fixtures" / "pairs.jsonl"
HANDBOOK = ROOT / "tests" / "fixtures" / "alignment_handbook"
SHIPPED = [("dpo_lora", "dpo_lora"), ("ipo", "dpo_lora"), ("odpo", "dpo_lora"), ("rdpo", "dpo_lora"),
           ("orpo", "orpo"), ("simpo", "simpo"), ("kto", "kto")]
LIGER = "ignored" if importlib.util.find_spec("liger_kernel") else "error"  # not installed: transformers raises


def run_check(recipe: str, *flags: str, model: str | None = None, config: str | None = None, **kwargs):
    """check_config on the recipe's shipped YAML (or `config`) with recipe flags on top; `model`: a local model."""
    config = config or str(CONFIGS / f"{'dpo_lora' if recipe == 'dpo_full' else recipe}.yaml")
    extra = (["--model_name_or_path", model] if model else []) + list(flags)
    if recipe == "dpo_full":
        extra = ["--use_peft", "false", *extra]
    return check_config(config, recipe, extra, **kwargs)


def found(report, setting: str) -> list[str]:
    """The levels of the findings about `setting`."""
    return [f.level for f in report.findings if f.setting == setting]


# --- settings that will not do what they say ---------------------------------------------------------------------
IGNORED = [
    # (recipe, flags, setting, level)
    ("dpo_lora", ["--padding_free", "true"], "padding_free", "ignored"),
    ("dpo_lora", ["--label_smoothing", "0.1"], "label_smoothing", "ignored"),  # the identity preset's [sigmoid, sft]
    ("dpo_lora", ["--use_liger_kernel", "true"], "use_liger_kernel", LIGER),
    ("dpo_lora", ["--pad_token", "<|im_end|>"], "pad_token", "risky"),  # deprecated, but 1.16 still pads with it
    ("dpo_lora", ["--truncation_mode", "keep_end"], "truncation_mode", "risky"),  # deprecated; the recipe drops anyway
    ("dpo_lora", ["--precompute_ref_batch_size", "32"], "precompute_ref_batch_size", "ignored"),
    ("dpo_lora", ["--f_alpha_divergence_coef", "0.3"], "f_alpha_divergence_coef", "ignored"),
    ("dpo_lora", ["--discopop_tau", "0.1"], "discopop_tau", "ignored"),
    ("dpo_lora", ["--ref_model_mixup_alpha", "0.5"], "ref_model_mixup_alpha", "ignored"),
    ("dpo_lora", ["--ref_model_sync_steps", "64"], "ref_model_sync_steps", "ignored"),
    ("dpo_lora", ["--model_init_kwargs", '{"dtype": "bfloat16"}'], "model_init_kwargs", "ignored"),
    ("dpo_full", ["--model_init_kwargs", '{"dtype": "bfloat16"}'], "model_init_kwargs", "risky"),  # the reference's
    ("orpo", ["--model_init_kwargs", '{"dtype": "bfloat16"}'], "model_init_kwargs", "error"),  # ORPOTrainer raises
    ("dpo_lora", ["--use_peft", "false", "--lora_r", "8"], "lora_r", "ignored"),
    ("dpo_lora", ["--use_peft", "false", "--use_dora", "true"], "use_dora", "ignored"),
    ("dpo_lora", ["--lora_dropout", "0.1"], "lora_dropout", "ignored"),  # disable_dropout zeroes it
    ("dpo_lora", ["--load_in_4bit", "true"], "load_in_4bit", "ignored"),  # the recipes never quantize
    ("dpo_lora", ["--do_eval", "true"], "do_eval", "ignored"),
    ("dpo_lora", ["--odpo_alpha", "0.5"], "odpo_alpha", "ignored"),  # no odpo hook
    ("kto", ["--share_prompts", "true"], "share_prompts", "ignored"),  # a RecipeDPOTrainer option
    ("simpo", ["--reference_cache", "/tmp/refs"], "reference_cache", "ignored"),
    ("dpo_lora", ["--precompute_ref_log_probs", "true", "--reference_cache", "/tmp/refs"], "reference_cache",
     "ignored"),  # the cache turns itself off
    ("dpo_lora", ["--share_prompts", "true", "--attn_implementation", "flex_attention"], "share_prompts", "ignored"),
    ("orpo", ["--max_completion_length", "64"], "max_completion_length", "ignored"),  # decoder-only model
    ("orpo", ["--is_encoder_decoder", "true"], "is_encoder_decoder", "ignored"),
    ("orpo", ["--remove_unused_columns", "true"], "remove_unused_columns", "ignored"),  # ORPOTrainer sets false
]


@pytest.mark.parametrize("recipe, flags, setting, level", IGNORED, ids=[f"{r}-{s}" for r, _, s, _ in IGNORED])
def test_a_setting_that_will_not_do_what_it_says_is_named(recipe, flags, setting, level, tiny_model_dir):
    report = run_check(recipe, *flags, model=tiny_model_dir)
    assert level in found(report, setting), [f.line() for f in report.findings]
    finding = next(f for f in report.findings if f.setting == setting and f.level == level)
    assert finding.reason and finding.source != "-"


def test_the_deprecated_checkpointing_alias_loses_to_the_new_name(tiny_model_dir, tmp_path):
    """transformers 5.23 reads gradient_checkpointing only when activation_checkpointing is unset."""
    config = tmp_path / "c.yaml"
    config.write_text((CONFIGS / "dpo_lora.yaml").read_text() + "\nactivation_checkpointing: false\n")
    report = run_check("dpo_lora", "--gradient_checkpointing", "true", model=tiny_model_dir, config=str(config))
    assert found(report, "gradient_checkpointing") == ["ignored"] and not report.estimate["gradient_checkpointing"]
    config.write_text((CONFIGS / "dpo_lora.yaml").read_text() + "\ngradient_checkpointing: true\n")
    report = run_check("dpo_lora", "--activation_checkpointing", "false", model=tiny_model_dir, config=str(config))
    assert not found(report, "gradient_checkpointing")  # the CLI's new name meant to win over the YAML's old one


def test_a_finding_names_where_its_value_came_from(tiny_model_dir):
    report = run_check("dpo_lora", "--padding_free", "true", model=tiny_model_dir)
    assert next(f for f in report.findings if f.setting == "padding_free").source == "cli"
    (recipe_args, args, model_args), _ = parse_config(str(CONFIGS / "dpo_lora.yaml"))
    assert recipe_args.value_sources["beta"] == "preset:identity-lora-cpu"


# --- risky combinations and what the recipe or TRL refuses -------------------------------------------------------
RISKY = [
    ("dpo_lora", ["--learning_rate", "0.01"], "learning_rate", "risky"),  # above the LoRA seed range
    ("dpo_lora", ["--learning_rate", "7e-4", "--anchor_coef", "0"], "learning_rate", "risky"),  # no anchor to hold it
    ("dpo_full", ["--learning_rate", "1e-4"], "learning_rate", "risky"),  # above the full-parameter range
    ("dpo_lora", ["--beta", "5"], "beta", "risky"),
    ("simpo", ["--beta", "0.1"], "beta", "risky"),  # SimPO's beta lives at 2-10
    ("dpo_full", ["--dtype", "bfloat16"], "dtype", "risky"),  # bf16 weights, no fp32 master copy
    ("dpo_lora", ["--max_length", "1024"], "max_length", "risky"),  # the tiny model has 256 positions
    ("dpo_lora", ["--loss_type", "robust", "--loss_weights", "1", "--label_smoothing", "0.6"], "label_smoothing",
     "risky"),
    ("dpo_lora", ["--loss_type", "exo_pair", "--loss_weights", "1"], "label_smoothing", "error"),
    ("dpo_lora", ["--sync_ref_model", "true"], "sync_ref_model", "error"),  # no reference model with LoRA
    ("dpo_lora", ["--lora_target_modules", "q_proj", "lm_head"], "lora_target_modules", "error"),
    ("dpo_lora", ["--router_aux_loss_coef", "0.01"], "router_aux_loss_coef", "error"),  # not a MoE model
    ("dpo_lora", ["--loss_type", "ipo", "--loss_weights", "1", "--loss_hook", "rdpo"], "loss_hook", "error"),
    ("dpo_lora", ["--use_peft", "false", "--merge", "true"], "merge", "error"),
    ("kto", ["--per_device_train_batch_size", "1"], "per_device_train_batch_size", "error"),
    ("simpo", ["--loss_type", "sigmoid"], "loss_type", "error"),
    ("dpo_full", ["--use_peft", "true"], "use_peft", "error"),
    ("dpo_lora", ["--attn_implementation", "flash_attention_2"], "attn_implementation", "error"),
    ("dpo_lora", ["--use_weighting", "true", "--loss_type", "aot", "--loss_weights", "1"], "use_weighting", "error"),
    ("dpo_lora", ["--f_divergence_type", "js_divergence", "--loss_type", "apo_zero", "--loss_weights", "1"],
     "f_divergence_type", "error"),
]


@pytest.mark.parametrize("recipe, flags, setting, level", RISKY, ids=[f"{r}-{s}-{lv}" for r, _, s, lv in RISKY])
def test_a_risky_or_refused_combination_is_flagged(recipe, flags, setting, level, tiny_model_dir):
    report = run_check(recipe, *flags, model=tiny_model_dir)
    assert level in found(report, setting), [f.line() for f in report.findings]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")
def test_a_bitsandbytes_optimizer_without_bitsandbytes_is_an_error(tiny_model_dir):
    assert "error" in found(run_check("dpo_lora", "--optim", "paged_adamw_32bit", model=tiny_model_dir), "optim")


def test_bf16_on_a_cpu_without_hardware_bf16_is_risky(monkeypatch, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine")
    monkeypatch.setattr(presets, "cpu_has_fast_bf16", lambda: False)
    report = run_check("dpo_lora", "--bf16", "true", model=tiny_model_dir)
    finding = next(f for f in report.findings if f.setting == "bf16")
    assert finding.level == "risky" and "GFLOP/s" in finding.reason  # the measured bf16 / fp32 rates
    monkeypatch.setattr(presets, "cpu_has_fast_bf16", lambda: True)
    assert not found(run_check("dpo_lora", "--bf16", "true", model=tiny_model_dir), "bf16")


def test_activation_offloading_without_an_accelerator_is_an_error(tiny_model_dir):
    import torch

    if torch.accelerator.current_accelerator() is not None:
        pytest.skip("this machine has an accelerator")
    report = run_check("dpo_lora", "--activation_offloading", "true", model=tiny_model_dir)
    assert found(report, "activation_offloading") == ["error"]


def test_gradient_checkpointing_with_the_adapter_reference_is_a_note_not_a_warning(tiny_model_dir):
    """TRL 1.16 runs the adapter-disabled reference under no_grad with checkpointing off: no correctness concern."""
    report = run_check("dpo_lora", "--gradient_checkpointing", "true", model=tiny_model_dir)
    assert found(report, "gradient_checkpointing") == ["note"]
    assert not report.warnings and not report.errors


def test_the_embedding_hook_growth_the_note_names_is_real():
    """Each reference forward inside TRL's disable_gradient_checkpointing adds one forward hook (transformers 5)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from test_trainer import tiny_model, tiny_tokenizer
    from trl.models.utils import disable_gradient_checkpointing

    model = get_peft_model(tiny_model(tiny_tokenizer()), LoraConfig(r=4, target_modules=["q_proj"]))
    model.gradient_checkpointing_enable(None)
    embeddings = model.get_input_embeddings()
    before = len(embeddings._forward_hooks)
    for _ in range(3):
        with torch.no_grad(), disable_gradient_checkpointing(model, None):
            model(input_ids=torch.tensor([[5, 6, 7]]))
    assert len(embeddings._forward_hooks) == before + 3


def test_max_length_below_the_data_median_pair_length_is_risky(tiny_model_dir):
    from datasets import Dataset
    from test_trainer import tiny_tokenizer

    # character-level tokenizer: a pair is ~4 prompt + ~120 answer tokens
    data = Dataset.from_dict({"prompt": [f"Q{i}?" for i in range(20)], "chosen": ["a" * 120] * 20,
                              "rejected": ["b" * 100] * 20})
    (recipe_args, args, model_args), _ = parse_config(
        str(CONFIGS / "dpo_lora.yaml"), argv=["--model_name_or_path", tiny_model_dir, "--max_length", "64"])
    report = preflight(recipe_args, args, model_args, "dpo_lora", data, tiny_tokenizer())
    assert found(report, "max_length") == ["risky"]
    assert "from the data" in report.table()
    (recipe_args, args, model_args), _ = parse_config(
        str(CONFIGS / "dpo_lora.yaml"), argv=["--model_name_or_path", tiny_model_dir, "--max_length", "200"])
    assert not found(preflight(recipe_args, args, model_args, "dpo_lora", data, tiny_tokenizer()), "max_length")


# --- shipped configs and the alignment-handbook's --------------------------------------------------------------------
@pytest.mark.parametrize("name, recipe", SHIPPED)
def test_a_shipped_config_passes_clean_with_its_recipe(name, recipe):
    report = check_config(str(CONFIGS / f"{name}.yaml"), recipe)
    assert not report.errors and not report.warnings, [f.line() for f in report.findings]


@pytest.mark.parametrize("recipe", ["dpo_full", "orpo", "simpo", "kto"])
def test_the_config_is_parsed_exactly_as_the_recipe_parses_it(recipe):
    from conftest import load_recipe

    config = str(CONFIGS / f"{'dpo_lora' if recipe == 'dpo_full' else recipe}.yaml")
    argv = ["--config", config] + (["--use_peft", "false"] if recipe == "dpo_full" else [])
    ours, _ = parse_config(config, recipe, argv[2:])
    theirs = load_recipe(recipe).parse(argv)
    for mine, recipes in zip(ours, theirs):
        assert type(mine) is type(recipes)
        same = (lambda x: x.to_dict()) if hasattr(mine, "to_dict") else vars  # TrainingArguments: values only
        assert same(mine) == same(recipes)


HANDBOOK_FILES = sorted(HANDBOOK.glob("*.yaml"))
LEGACY_KEYS = {"torch_dtype", "max_prompt_length", "warmup_ratio", "dataset_mixture", "dataset_mixer", "dataset_splits",
               "hub_model_revision", "chat_template"}


@pytest.mark.parametrize("path", HANDBOOK_FILES, ids=[p.stem for p in HANDBOOK_FILES])
def test_an_alignment_handbook_recipe_is_reported_not_crashed_on(path):
    import yaml

    assert path.read_text().startswith("# Source: github.com/huggingface/alignment-handbook, recipes/")
    raw = yaml.safe_load(path.read_text())
    recipe = "orpo" if "orpo" in path.name else "dpo_lora" if raw.get("use_peft") else "dpo_full"
    report = check_config(str(path), recipe)
    unknown = {f.setting for f in report.findings if "not an argument of" in f.reason}
    assert unknown == LEGACY_KEYS & raw.keys()  # keys newer TRL / transformers removed or renamed, handbook's own
    assert all(f.level == "error" and "\n" not in f.line() for f in report.findings if f.setting in unknown)
    assert report.errors  # the recipe would stop on them: reported, one line each
    if raw.get("do_eval") is not None:
        assert found(report, "do_eval") == ["ignored"]
    assert "not readable" in report.table()  # hub configs are not downloaded: the estimate says so


def test_the_handbook_qlora_recipe_names_what_this_stack_drops():
    report = check_config(str(HANDBOOK / "zephyr-7b-beta_dpo_config_qlora.yaml"), "dpo_lora")
    assert found(report, "load_in_4bit") == ["ignored"]  # the recipes never quantize
    assert found(report, "lora_dropout") == ["ignored"]  # disable_dropout zeroes it
    assert {"warmup_ratio", "dataset_mixer", "dataset_splits"} <= {f.setting for f in report.of("error")}


def test_the_handbook_smollm3_recipe_names_padding_free_and_liger():
    report = check_config(str(HANDBOOK / "smollm3_dpo_apo.yaml"), "dpo_full")
    assert found(report, "padding_free") == ["ignored"]
    assert found(report, "use_liger_kernel") == [LIGER]


# --- the estimate ------------------------------------------------------------------------------------------------
def test_the_estimate_counts_parameters_memory_and_time_without_weights(tiny_model_dir):
    e = run_check("dpo_lora", model=tiny_model_dir).estimate
    assert e["params"] > e["trainable_params"] > 0
    assert e["reference"] == "adapter" and e["memory_gb"]["reference"] == 0
    assert e["memory_gb"]["total"] > 0 and e["tflop_per_step"] > 0
    fast, slow = e["seconds_per_step"]
    assert 0 < fast < slow
    full = run_check("dpo_full", model=tiny_model_dir).estimate
    assert full["trainable_params"] == full["params"] and full["memory_gb"]["reference"] > 0  # a second copy


@pytest.fixture(scope="module")
def mistral_7b_config(tmp_path_factory) -> str:
    """A folder with only Mistral-7B's config.json: the check never needs the weights."""
    from transformers import MistralConfig

    path = tmp_path_factory.mktemp("mistral-7b")
    MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=32000, sliding_window=None).save_pretrained(path)
    return str(path)


def test_a_7b_model_is_counted_from_its_config_alone(mistral_7b_config, monkeypatch):
    from dpo_recipes.check import estimate as preflight_estimate

    lora = run_check("dpo_lora", "--preset", "lora-gpu", model=mistral_7b_config).estimate
    # r=16 all-linear LoRA on the top 16 of 32 layers (the recipe's lora_top_fraction 0.5)
    assert round(lora["params"] / 1e9, 2) == 7.24 and lora["trainable_params"] == 41_943_040 // 2
    monkeypatch.setattr(preflight_estimate, "device_memory_gb", lambda on_cpu: 64.0)
    full = run_check("dpo_full", "--preset", "full-gpu", model=mistral_7b_config)
    # fp32 weights + reference copy + gradients + AdamW's 2 states: 5 x 29 GB before activations
    assert full.estimate["memory_gb"]["total"] > 5 * 28.9
    assert found(full, "estimate.memory_gb") == ["risky"]


def test_lora_on_the_top_layers_counts_backward_through_those_layers_only(mistral_7b_config):
    """The backward (and its checkpointed recompute) stops at the lowest adapter: with the top half adapted, LoRA's
    1 input-gradient pass and the recompute count half a decoder each; the forward and the reference stay whole."""
    def estimate(fraction: str, checkpointing: str) -> dict:
        return run_check("dpo_lora", "--preset", "lora-gpu", "--lora_top_fraction", fraction,
                         "--gradient_checkpointing", checkpointing, model=mistral_7b_config).estimate

    for checkpointing, whole_passes in (("false", 3), ("true", 4)):  # forward + backward + reference (+ recompute)
        whole, half = estimate("1.0", checkpointing), estimate("0.5", checkpointing)
        assert whole["passes"] == whole_passes
        assert half["passes"] == pytest.approx(whole_passes - (1 if checkpointing == "false" else 2) * 0.5)
        assert half["tflop_per_step"] < whole["tflop_per_step"]
    assert "all-linear of the top 16 of 32 layers" in run_check(
        "dpo_lora", "--preset", "lora-gpu", model=mistral_7b_config).table()


def test_an_unreadable_model_config_is_said_and_the_rest_still_runs():
    report = run_check("dpo_lora", "--padding_free", "true", model="some-org/not-in-any-cache")
    assert "not readable" in report.table() and "params" not in report.estimate
    assert found(report, "padding_free") == ["ignored"]


def test_an_embedded_model_not_fetched_yet_is_said_not_fetched(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_RECIPES_CACHE", str(tmp_path))  # an empty cache: nothing is downloaded by the check
    report = check_config(str(CONFIGS / "dpo_lora.yaml"))
    assert "dpo-recipes fetch-model" in report.table() and not report.errors and not report.warnings


# --- check_before_run and the CLI --------------------------------------------------------------------------------
def _parsed(*flags: str, model: str):
    (recipe_args, args, model_args), _ = parse_config(str(CONFIGS / "dpo_lora.yaml"),
                                                      argv=["--model_name_or_path", model, *flags])
    return recipe_args, args, model_args


def test_check_before_run_honours_the_preflight_setting(tiny_model_dir, caplog):
    assert check_before_run(*_parsed("--preflight", "off", "--padding_free", "true", model=tiny_model_dir),
                            "dpo_lora") is None
    with caplog.at_level(logging.INFO, logger="dpo_recipes.check.preflight"):
        report = check_before_run(*_parsed("--padding_free", "true", model=tiny_model_dir), "dpo_lora")
    assert report.warnings == 1 and "padding_free" in caplog.text and "memory" in caplog.text
    with pytest.raises(DPORecipesError, match="padding_free ignored") as exc:
        check_before_run(*_parsed("--preflight", "strict", "--padding_free", "true", model=tiny_model_dir),
                         "dpo_lora")
    assert "\n" not in str(exc.value)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="dpo_recipes.check.preflight"):  # warn: TRL refuses it later, in its words
        report = check_before_run(*_parsed("--sync_ref_model", "true", model=tiny_model_dir), "dpo_lora")
    assert report.errors == 1 and "sync_ref_model" in caplog.text


def test_the_cli_prints_the_estimate_and_exits_0_on_a_clean_config(capsys, tiny_model_dir):
    assert cli.main(["check", str(CONFIGS / "dpo_lora.yaml"), "--", "--model_name_or_path", tiny_model_dir]) == 0
    out = capsys.readouterr().out
    rows = ("model", "trainable", "reference", "batch", "precision", "memory", "time", "verdict: clean")
    assert all(f"\n{row}" in out for row in rows), out


def test_the_cli_exits_2_under_strict_and_takes_recipe_flags_after_the_yaml(capsys, tiny_model_dir):
    config = str(CONFIGS / "dpo_lora.yaml")
    flags = ["--model_name_or_path", tiny_model_dir, "--padding_free", "true"]
    assert cli.main(["check", config, "--", *flags]) == 0  # warnings only
    assert "ignored padding_free" in capsys.readouterr().out
    assert cli.main(["check", config, "--strict", "--", *flags]) == 2
    captured = capsys.readouterr()
    assert "ignored padding_free" in captured.out and captured.err.startswith("error: check --strict: 1 finding")
    assert cli.main(["check", "--strict", config, *flags]) == 2  # options before CONFIG, flags without `--`


def test_the_cli_checks_the_data_lengths_with_data(capsys, tiny_model_dir):
    config = str(CONFIGS / "odpo.yaml")  # the 8 scored demo pairs of tests/fixtures/pairs.jsonl
    assert cli.main(["check", config, "--data", "--", "--model_name_or_path", tiny_model_dir]) == 0
    assert "from the data" in capsys.readouterr().out
    assert cli.main(["check", config, "--data", "--", "--model_name_or_path", tiny_model_dir,
                     "--max_length", "60"]) == 0  # risky is a warning: exit 0 without --strict
    assert "risky   max_length = 60" in capsys.readouterr().out


def test_the_cli_exits_2_on_an_unknown_key_in_one_line(capsys):
    assert cli.main(["check", str(HANDBOOK / "zephyr-7b-beta_dpo_config_full.yaml"), "--recipe", "dpo_full"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "error   warmup_ratio = 0.1" in captured.out


def test_an_unknown_recipe_flag_is_one_line(capsys):
    assert cli.main(["check", str(CONFIGS / "dpo_lora.yaml"), "--", "--not_a_flag", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not_a_flag" in err and "Traceback" not in err


def test_an_unknown_recipe_is_one_line():
    with pytest.raises(DPORecipesError, match="known recipes"):
        check_config(str(CONFIGS / "dpo_lora.yaml"), "dpo_giant")


def test_values_a_preset_set_and_the_config_did_not_are_not_reported_as_ignored(tmp_path, tiny_model_dir):
    """lora-cpu sets lora_r & co.; a config with use_peft: false did not ask for them: --strict must not stop on them."""
    config = tmp_path / "full.yaml"
    config.write_text(f"dataset_name: {FIXTURE}\nuse_peft: false\nlearning_rate: 1.0e-6\n"
                      f"model_name_or_path: {tiny_model_dir}\nmax_length: 128\n")
    report = check_config(str(config))
    assert not [f for f in report.findings if f.setting.startswith("lora_")]
    config.write_text(config.read_text() + "lora_r: 8\n")
    (lora_r,) = [f for f in check_config(str(config)).findings if f.setting == "lora_r"]
    assert lora_r.level == "ignored"


def test_a_token_in_a_setting_is_never_printed(tiny_model_dir):
    report = check_config(str(CONFIGS / "dpo_lora.yaml"), argv=["--model_name_or_path", tiny_model_dir,
                                                               "--model_init_kwargs", '{"token": "hf_SECRETSECRET1"}'])
    text = report.text()
    assert "model_init_kwargs" in text and "hf_SECRETSECRET1" not in text
