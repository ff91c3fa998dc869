"""The product path: an installed wheel carries the recipes, their configs, the default run's data and the accelerate
configs; `dpo-recipes ls` lists the recipes and `cp` copies one with its configs; the copy runs from any folder (paths in
a YAML resolve against the YAML's folder); `dpo-recipes train` keeps the recipe's one-line errors and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from dpo_recipes.cli import main
from dpo_recipes.shipped import default_config, recipes, resolve_yaml_paths, root

QUICK = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none", "--eval_prompts_file", "",
         "--bf16", "false", "--reference_cache", "none"]


def environment(**extra) -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", **extra}


def test_ls_lists_every_recipe_with_its_configs(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("dpo_lora", "dpo_full", "kto", "orpo", "simpo", "make_pairs", "iterative_dpo"):
        assert f"  {name} " in out
    assert "configs/dpo_lora.yaml" in out and "configs/make_pairs_best_of_n.yaml" in out


def test_cp_copies_a_recipe_with_its_configs_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["cp", "dpo_lora", str(tmp_path / "mine")]) == 0
    out = capsys.readouterr().out
    copied = tmp_path / "mine" / "configs" / "dpo_lora.yaml"
    assert (tmp_path / "mine" / "dpo_lora.py").read_text() == (ROOT / "recipes" / "dpo_lora.py").read_text()
    assert f"edit:     {copied}" in out and "dataset_name" in out
    config = yaml.safe_load(copied.read_text())
    assert config["dataset_name"] == str(ROOT / "data" / "identity" / "train.jsonl")  # the shipped data, absolute
    assert "# Teach without damage" in copied.read_text()  # comments kept
    assert main(["cp", "dpo_lora", str(tmp_path / "mine")]) == 2
    assert "already exist" in capsys.readouterr().err
    assert main(["cp", "dpo_lora", str(tmp_path / "mine"), "--force"]) == 0
    assert main(["cp", "dpo_full", str(tmp_path / "full")]) == 0  # it runs dpo_lora's stages: both are copied
    assert (tmp_path / "full" / "dpo_lora.py").is_file() and (tmp_path / "full" / "configs" / "dpo_lora.yaml").is_file()
    assert main(["cp", "nope", str(tmp_path / "x")]) == 2


def test_yaml_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "data.jsonl").write_text("{}\n")
    config = {"dataset_name": "../data.jsonl", "eval_prompts_file": "missing.jsonl", "output_dir": "../data.jsonl",
              "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "learning_rate": 1e-4}
    resolved = resolve_yaml_paths(config, tmp_path / "cfg" / "run.yaml")
    assert resolved["dataset_name"] == str(tmp_path / "data.jsonl")
    assert resolved["eval_prompts_file"] == "missing.jsonl"  # not beside the YAML: as written (the working directory)
    assert resolved["output_dir"] == "../data.jsonl"  # where a run writes: relative to the working directory
    assert resolved["model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id


def test_a_recipe_finds_its_config_beside_it_else_the_shipped_one(tmp_path):
    assert default_config(ROOT / "recipes" / "dpo_lora.py", "dpo_lora.yaml") == ROOT / "recipes" / "configs" / \
        "dpo_lora.yaml"
    alone = tmp_path / "dpo_lora.py"
    alone.write_text("")
    assert default_config(alone, "dpo_lora.yaml") == root() / "recipes" / "configs" / "dpo_lora.yaml"
    assert set(recipes()) >= {"dpo_lora", "kto"}


def test_a_copied_recipe_runs_from_any_folder(tiny_model_dir, tmp_path):
    assert main(["cp", "dpo_lora", str(tmp_path / "project")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, str(tmp_path / "project" / "dpo_lora.py"), "--model_name_or_path",
                           tiny_model_dir, "--output_dir", "out", *QUICK], cwd=elsewhere, env=environment(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())  # output_dir: the working directory's
    assert summary["dataset"] == str(ROOT / "data" / "identity" / "train.jsonl") and summary["steps"] == 2


def test_train_keeps_the_recipe_s_one_line_refusal_and_exit_status(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dpo_recipes.cli", "train", "dpo_lora", "--lora_rnak", "8"],
                          cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.strip() and "Warning" not in line
            and line != "dpo_lora: starting (importing PyTorch, Transformers and TRL)"] == [
        "error: --lora_rnak is not an argument of this recipe; did you mean --lora_r? (--help lists the arguments)."]


@pytest.mark.distributed
def test_train_under_the_launcher_keeps_the_status_and_drops_the_launcher_s_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dpo_recipes.cli", "train", "dpo_lora", "--num_processes", "2",
                           "--config_file", str(ROOT / "accelerate_configs" / "ddp.yaml"), "--lora_rnak", "8"],
                          cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    assert done.stderr.count("error: --lora_rnak is not an argument of this recipe") == 1


def test_the_wheel_carries_the_recipes_and_runs_a_copied_one_outside_the_checkout(tiny_model_dir, tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "wheel"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "wheel").glob("dpo_recipes-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("recipes/dpo_lora.py", "recipes/configs/dpo_lora.yaml", "data/identity/train.jsonl",
                    "data/identity/eval_prompts.jsonl", "accelerate_configs/zero3.yaml"):
        assert f"dpo_recipes/bundle/{shipped}" in names, shipped
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    env = environment(PYTHONPATH=str(target))
    where = subprocess.run([sys.executable, "-c", "import dpo_recipes.shipped as s; print(s.root())"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=300)
    assert where.stdout.strip() == str(target / "dpo_recipes" / "bundle"), where.stderr[-2000:]
    copy = subprocess.run([sys.executable, "-m", "dpo_recipes.cli", "cp", "dpo_lora", "mine"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert copy.returncode == 0, copy.stderr[-2000:]
    run = subprocess.run([sys.executable, "mine/dpo_lora.py", "--model_name_or_path", tiny_model_dir, "--output_dir",
                          "out", *QUICK], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["dataset"] == str(target / "dpo_recipes" / "bundle" / "data" / "identity" / "train.jsonl")
