"""The command line speaks to users: --version, whole descriptions in --help, "did you mean" for a misspelled
argument in the recipes and in `check` (instead of TRL's developer text), and no deprecation warning the project's own
presets cause."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT
from dpo_recipes.cli import main
from dpo_recipes.config import parse_recipe_args
from dpo_recipes.config.presets import PRESETS
from dpo_recipes.errors import DPORecipesError

DPO_LORA = ROOT / "recipes" / "configs" / "dpo_lora.yaml"


def test_version_and_whole_descriptions(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("dpo-recipes 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "check a recipe config before a run; plot runs; fetch the embedded default model." in text
    with pytest.raises(SystemExit):
        main(["fetch-model", "--help"])
    assert "safetensors model folder" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("typed, meant", [("--lora_rnak", "--lora_r"),
                                          ("--per_device_train_batchsize", "--per_device_train_batch_size"),
                                          ("--num_train_epoch", "--num_train_epochs")])
def test_a_misspelled_flag_is_refused_naming_the_nearest_argument(typed, meant):
    with pytest.raises(DPORecipesError, match=rf"^{typed} is not an argument of this recipe; did you mean {meant}\?"):
        parse_recipe_args(DPO_LORA, [typed, "2"])


def test_a_misspelled_yaml_key_is_refused_in_the_recipe_and_named_in_check(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text(DPO_LORA.read_text() + "\nlora_rnak: 8\n")
    with pytest.raises(DPORecipesError, match=r"'lora_rnak' is not an argument of this recipe; did you mean 'lora_r'\?"):
        parse_recipe_args(DPO_LORA, ["--config", str(config)])
    assert main(["check", str(config)]) == 2
    out = capsys.readouterr().out
    assert "lora_rnak" in out and "did you mean lora_r?" in out and "fail_with_unknown_args" not in out


def test_an_unrelated_flag_gets_no_guess_and_negated_booleans_still_parse():
    with pytest.raises(DPORecipesError, match=r"^--zzzz is not an argument of this recipe\. \(--help"):
        parse_recipe_args(DPO_LORA, ["--zzzz", "1"])
    recipe_args, _, _ = parse_recipe_args(DPO_LORA, ["--no_share_prompts"])
    assert recipe_args.share_prompts is False


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_preset_causes_a_deprecation_warning(preset):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_recipe_args(None, ["--dataset_name", "data/identity/train.jsonl", "--preset", preset])
    assert [str(w.message) for w in caught if "deprecated" in str(w.message)] == []


def test_the_old_checkpointing_name_still_decides_when_the_user_writes_it():
    _, args, _ = parse_recipe_args(None, ["--dataset_name", "data/identity/train.jsonl", "--preset", "lora-cpu",
                                          "--gradient_checkpointing", "true"])
    assert args.activation_checkpointing is True  # over the preset's activation_checkpointing: false


def test_a_recipe_refusal_is_one_line_with_status_2():
    done = subprocess.run([sys.executable, "recipes/dpo_lora.py", "--lora_rnak", "8"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert [l for l in done.stderr.splitlines() if l.startswith("error:")] == [
        "error: --lora_rnak is not an argument of this recipe; did you mean --lora_r? (--help lists the arguments)."]


def test_the_interrupt_line_stands_on_its_own_line_after_a_progress_bar():
    script = ("import sys, time\nfrom tqdm import tqdm\nfrom dpo_recipes.run import recipe_errors, set_stage\n"
              "set_stage('training')\nwith recipe_errors():\n    bar = tqdm(total=10, file=sys.stderr)\n"
              "    bar.update(3)\n    raise KeyboardInterrupt\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130
    lines = done.stderr.replace("\r", "\n").splitlines()
    assert "interrupted while training." in [line.strip() for line in lines]
    assert not any("it/s]" in line and "interrupted" in line for line in done.stderr.splitlines())
    assert lines[-1].strip() == "interrupted while training."  # last: no bar redrawn below it


def test_check_blames_the_lora_setting_peft_refuses(capsys):
    assert main(["check", str(DPO_LORA), "--", "--lora_r", "0"]) == 2
    out = capsys.readouterr()
    assert "error   lora_r = 0 (cli): PEFT cannot build the adapter" in out.out and "(lora_r)" in out.err


def test_a_resumed_run_does_not_repeat_accelerates_no_length_notice(tiny_model_dir, tmp_path, caplog):
    from test_own_run import FIXTURE, dpo, quick

    base = quick(tiny_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE), "--save_steps", "2")
    dpo(*base, "--max_steps", "2")
    caplog.set_level(logging.INFO)
    dpo(*base, "--max_steps", "4", "--resume_from_checkpoint", str(tmp_path / "run" / "checkpoint-2"))  # epoch end
    assert caplog.records  # INFO records reach the handler
    assert not [r for r in caplog.records if "no length" in r.getMessage()]


def test_a_second_interrupt_during_shutdown_ends_the_run_without_tracebacks():
    script = ("import atexit, sys, time\nfrom dpo_recipes.run import recipe_errors, set_stage\n"
              "def closing():\n    print('closing', file=sys.stderr, flush=True)\n    time.sleep(30)\n"
              "atexit.register(closing)\nset_stage('training')\nwith recipe_errors():\n    raise KeyboardInterrupt\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # the first interrupt's line, then shutdown starts
        lines.append(line)
        if line.strip() == "closing":
            break
    proc.send_signal(signal.SIGINT)  # the user presses Ctrl-C again while shutdown code runs
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == -signal.SIGINT  # ended by the signal: 130 in a shell
    assert "interrupted while training." in "".join(lines)
    assert "Exception ignored" not in rest and "Traceback" not in rest


def test_a_recipe_says_it_is_starting_before_its_imports_but_not_for_help():
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # CI sets it; it turns the line off too
    started = subprocess.run([sys.executable, "recipes/dpo_lora.py", "--lora_rnak", "8"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300, env=env)
    assert started.stderr.splitlines()[0] == "dpo_lora: starting (importing PyTorch, Transformers and TRL)"
    helped = subprocess.run([sys.executable, "recipes/dpo_lora.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=env)
    quiet = subprocess.run([sys.executable, "recipes/dpo_lora.py", "--lora_rnak", "8"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**env, "TQDM_DISABLE": "1"})
    assert "starting" not in quiet.stderr
    assert helped.returncode == 0 and "starting" not in helped.stderr
