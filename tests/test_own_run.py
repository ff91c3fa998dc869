"""The user's path after the default run: own data, own model, documented flags, reruns (issue 'Your own run').

Every recipe runs in-process on a tiny random Llama with a character-level tokenizer (seconds per run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_recipe

from dpo_recipes.config import parse_recipe_args
from dpo_recipes.errors import DPORecipesError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "pairs.jsonl"  # 8 scored conversational pairs
IDENTITY = ROOT / "data" / "identity" / "train.jsonl"  # 816 pairs, 813 after the default config's rules
VARIANTS = ["orpo", "simpo", "kto"]


def quick(model: str, out: Path, *extra: str) -> list[str]:
    """Flags for a fast run: tiny model, 2 pairs a step, no W&B, no evaluation prompts."""
    return ["--model_name_or_path", model, "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--eval_prompts_file", "",
            "--logging_steps", "1", *extra]


def dpo(*argv: str):
    recipe = load_recipe("dpo_lora")
    return recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, list(argv)))


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if a recipe loads model weights: the check under test must come first."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the check")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


# --- 1, 2: reruns and output folders ---------------------------------------------------------------------------------
def test_rerunning_a_finished_run_trains_nothing(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2")
    dpo(*args)
    adapter = (out / "adapter_model.safetensors").read_bytes()
    for _ in range(2):
        dpo(*args)
        assert "already finished at step 2" in capsys.readouterr().out
    assert summary(out)["steps"] == 2
    assert (out / "adapter_model.safetensors").read_bytes() == adapter  # not retrained, not rewritten
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def test_raising_max_steps_continues_the_same_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2"))
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "3"))
    result = summary(out)
    assert result["steps"] == 3 and result["pairs_trained"] == 2  # one step of 2 pairs, from checkpoint-2
    assert result["resumed_from"].endswith("checkpoint-2")


def test_a_run_stopped_after_training_finishes_without_training_past_max_steps(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2")
    dpo(*args)
    record = json.loads((out / "run_record.json").read_text())
    (out / "run_record.json").write_text(json.dumps({**record, "finished_step": None}))  # as if stopped before it
    (out / "summary.json").unlink()
    dpo(*args)
    result = summary(out)
    assert result["steps"] == 2 and result["pairs_trained"] == 0  # outputs written from checkpoint-2, no step 3
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((out / "run_record.json").read_text())["finished_step"] == 2


def test_new_data_in_an_old_output_dir_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2"))
    adapter = (out / "adapter_model.safetensors").read_bytes()
    other = tmp_path / "other.jsonl"
    other.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:6]))
    with pytest.raises(DPORecipesError, match=r"holds another run \(differs in: data .*--overwrite_output_dir"):
        dpo(*quick(tiny_model_dir, out, "--dataset_name", str(other), "--output_dir", str(out), "--max_steps", "4"))
    assert (out / "adapter_model.safetensors").read_bytes() == adapter


def test_another_model_in_an_old_output_dir_is_refused_not_a_size_mismatch(tiny_model_dir, tmp_path):
    from test_trainer import tiny_model, tiny_tokenizer

    other = tmp_path / "wider"
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    model.config.hidden_size = 48  # a different architecture: the old adapter's shapes would not fit
    type(model)(model.config).save_pretrained(other, safe_serialization=True)
    tokenizer.save_pretrained(other)
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))
    with pytest.raises(DPORecipesError, match=r"differs in: model"):
        dpo(*quick(str(other), out, "--dataset_name", str(FIXTURE), "--max_steps", "2"))


def test_another_training_setting_is_refused_and_overwrite_starts_fresh(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2", "--merge", "true"))
    assert (out / "merged" / "model.safetensors").is_file()
    changed = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2", "--beta", "0.3")
    with pytest.raises(DPORecipesError, match=r"beta 0\.1 -> 0\.3"):
        dpo(*changed)
    dpo(*changed, "--overwrite_output_dir", "true")
    result = summary(out)
    assert result["steps"] == 2 and result["resumed_from"] is None  # trained from scratch
    assert not (out / "merged").exists()  # the old adapter's merged model is gone with it


def test_a_stale_merged_model_does_not_outlive_its_adapter(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1", "--merge", "true"))
    assert (out / "merged").is_dir()
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2"))  # a new adapter, no merge
    assert not (out / "merged").exists()


def test_outputs_of_an_unidentified_run_are_not_resumed(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-7").mkdir(parents=True)  # e.g. written by another tool or an older version
    with pytest.raises(DPORecipesError, match=r"cannot identify .*checkpoint-7"):
        dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))


# --- 3: max_length drops are counted, and match what TRL trains on -----------------------------------------------
@pytest.mark.parametrize("max_length", [40, 48, 56])
def test_pairs_whose_prompt_fills_max_length_are_counted_as_trl_drops_them(tiny_model_dir, tmp_path, max_length):
    from trl import DPOConfig, DPOTrainer

    from dpo_recipes.data import load_preference_data
    from dpo_recipes.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)

    def trl_keeps(dataset) -> int:
        trainer = DPOTrainer(model=load_model(tiny_model_dir), ref_model=load_model(tiny_model_dir),
                             processing_class=tokenizer, train_dataset=dataset,
                             args=DPOConfig(output_dir=str(tmp_path), max_length=max_length, report_to="none",
                                            use_cpu=True))
        return len(trainer.train_dataset)

    # Rules off: the only drop is the trainer's own, and the count is TRL's to the pair.
    ours = load_preference_data(str(IDENTITY), validation="off", tokenizer=tokenizer, max_length=max_length,
                                drop_prompt_too_long=True)
    dropped = ours.report.dropped["prompt_too_long"]
    assert 0 < dropped < 816
    assert ours.report.kept == 816 - dropped == trl_keeps(load_preference_data(str(IDENTITY), validation="off").dataset)
    assert trl_keeps(ours.dataset) == ours.report.kept  # what we keep, TRL trains on in full
    assert ours.report.kept + sum(ours.report.dropped.values()) == ours.report.total_rows


def test_the_summary_gives_the_pairs_that_really_trained(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--max_steps", "1", "--max_length", "48"))  # the default identity data
    result = summary(out)
    report = json.loads((out / "data_validation.json").read_text())
    assert result["pairs_dropped"]["prompt_too_long"] == report["dropped"]["prompt_too_long"] > 0
    assert result["pairs_after_validation"] == report["kept"] == 813 - report["dropped"]["prompt_too_long"]


def test_nothing_left_after_max_length_stops_in_one_line_before_model_work(tiny_model_dir, tmp_path, no_model_work):
    with pytest.raises(DPORecipesError) as err:
        dpo(*quick(tiny_model_dir, tmp_path / "run", "--max_steps", "1", "--max_length", "16"))
    message = str(err.value)
    assert "\n" not in message and "prompt_too_long 813" in message and "--max_length" in message
    assert not (tmp_path / "run").exists()  # nothing written


# --- 4: own data does not inherit the identity run's settings ----------------------------------------------------
def test_own_data_gets_the_rules_defaults_no_identity_evaluation_and_its_own_output_dir():
    recipe_args, training_args, _ = parse_recipe_args(ROOT / "recipes/configs/dpo_lora.yaml",
                                                      ["--dataset_name", "data/my_pairs.jsonl"])
    assert recipe_args.max_similarity == 0.9 and recipe_args.min_chosen_chars == 50  # the rules' defaults
    assert recipe_args.eval_prompts_file is None and recipe_args.identity_name is None
    assert training_args.output_dir == "outputs/dpo-lora-my_pairs"
    assert recipe_args.preset in ("lora-cpu", "lora-gpu")
    default_args, default_training, _ = parse_recipe_args(ROOT / "recipes/configs/dpo_lora.yaml", [])
    assert default_args.identity_name == "Athene" and default_training.output_dir == "outputs/dpo-lora-identity"


def test_own_data_run_has_no_identity_figures(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    recipe = load_recipe("dpo_lora")
    argv = [a for a in quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1")
            if a not in ("--eval_prompts_file", "")]
    recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, argv))
    assert not any(key.startswith("heldout_identity") for key in summary(out))
    assert not (out / "eval_answers.jsonl").exists()


# --- 5, 6: every recipe takes presets, and the variants' default runs keep the identity pairs ---------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_recipes_refuse_an_unknown_preset_and_apply_a_known_one(name):
    recipe = load_recipe(name)
    with pytest.raises(DPORecipesError, match="Unknown preset 'bogus-name'"):
        recipe.parse(["--preset", "bogus-name"])
    with pytest.raises(DPORecipesError, match="sets a DPO loss"):
        recipe.parse(["--preset", "odpo"])
    _, training_args, _ = recipe.parse(["--preset", "lora-gpu"])
    assert training_args.learning_rate == 5e-6 and training_args.gradient_accumulation_steps == 8


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_default_runs_keep_the_identity_pairs(name):
    from dpo_recipes import run

    recipe_args, training_args, _ = load_recipe(name).parse([])
    data = run.load_train_data(recipe_args, training_args, tokenizer=None)
    assert len(data.dataset) == 813  # 3 exact duplicates dropped, as in the DPO default run (was 32)


# --- 7: audit with the recipe's thresholds: tests/test_data_audit.py ---------------------------------------------

# --- 8, 9, 10: every check that needs no model runs before it -----------------------------------------------------
def test_merge_without_an_adapter_is_refused_before_training(tiny_model_dir, tmp_path, no_model_work):
    with pytest.raises(DPORecipesError, match="--merge merges a LoRA adapter"):
        dpo(*quick(tiny_model_dir, tmp_path / "run", "--preset", "full-gpu", "--merge", "true",
                   "--dataset_name", str(FIXTURE)))


def test_conversational_data_without_a_chat_template_stops_in_one_line(tiny_base_model_dir, tmp_path, no_model_work):
    with pytest.raises(DPORecipesError, match="no chat template") as err:
        dpo(*quick(tiny_base_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE)))
    assert "\n" not in str(err.value)


def test_a_base_model_answers_evaluation_prompts_as_plain_text(tiny_base_model_dir, tmp_path):
    rows = [{"prompt": f"Say {w}.", "chosen": f"{w}, " * 30, "rejected": "no, " * 12 + w} for w in "abcdefgh"]
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    dpo(*quick(tiny_base_model_dir, out, "--dataset_name", str(data), "--max_steps", "1",
               "--eval_prompts_file", str(ROOT / "data/identity/eval_prompts.jsonl"), "--identity_name", "Athene",
               "--eval_max_new_tokens", "2", "--eval_batch_size", "64"))
    assert summary(out)["n_identity_prompts"] == 32


def test_odpo_without_scores_is_refused_before_model_work(tiny_model_dir, tmp_path, no_model_work):
    with pytest.raises(DPORecipesError, match="needs the column"):
        dpo(*quick(tiny_model_dir, tmp_path / "run", "--config", str(ROOT / "recipes/configs/odpo.yaml"),
                   "--dataset_name", str(IDENTITY)))


# --- 11: a hook set by a config can be unset ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["None", "none", "", "null"])
def test_a_loss_hook_from_a_config_can_be_unset(value):
    recipe_args, _, _ = parse_recipe_args(None, ["--config", str(ROOT / "recipes/configs/odpo.yaml"),
                                                 "--loss_hook", value])
    assert recipe_args.loss_hook is None


def test_an_unknown_loss_hook_is_one_line():
    with pytest.raises(DPORecipesError, match="--loss_hook 'bogus': use odpo, rdpo, or none"):
        parse_recipe_args(None, ["--output_dir", "x", "--loss_hook", "bogus"])


# --- 12: outputs keep the umask's mode ------------------------------------------------------------------------------
def test_run_outputs_are_readable_by_others_under_umask_022(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1", "--merge", "true"))
    finally:
        os.umask(old)
    for name in ("summary.json", "metrics.jsonl", "data_validation.json", "run_record.json", "merged",
                 "merged/model.safetensors", "adapter_model.safetensors", "checkpoint-1",
                 "checkpoint-1/adapter_model.safetensors"):
        mode = (out / name).stat().st_mode & 0o777
        assert mode == (0o755 if (out / name).is_dir() else 0o644), (name, oct(mode))


# --- 13: Ctrl-C is one line saying where it stopped ---------------------------------------------------------------
def test_ctrl_c_prints_one_line_with_where_to_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "recipes" / "dpo_lora.py"),
           *quick(tiny_model_dir, out, "--max_steps", "100000", "--save_steps", "1", "--max_train_samples", "64",
                  "--anchor_coef", "0")]  # the file's first 64 pairs hold no anchor (refused with the term on)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WANDB_MODE": "offline"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        # a complete checkpoint: Trainer writes trainer_state.json last, and one without it is not resumed from
        while not list(out.glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.2)
        assert list(out.glob("checkpoint-*/trainer_state.json")), "no checkpoint appeared"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    line = [ln for ln in stderr.splitlines() if ln.startswith("interrupted")]
    assert len(line) == 1 and "while training, at step" in line[0] and "resume from" in line[0]
