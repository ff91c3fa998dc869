"""Faults on the run path: a run SIGKILLed right after a checkpoint, with a half-written checkpoint left behind,
resumes from the last complete checkpoint on the same command and ends with the adapter of an uninterrupted run
(within 1e-4, fp32)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from conftest import ROOT

KILL_AFTER_SAVE = """
import os, signal, sys
from transformers import TrainerCallback
sys.path.insert(0, "recipes")
import dpo_lora
from dpo_recipes.train import trainer as trainer_module
from dpo_recipes.config import parse_recipe_args
from dpo_recipes.run import recipe_errors

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

original = trainer_module.RecipeDPOTrainer.train
def train(self, *a, **k):
    self.add_callback(KillAfterSave())
    return original(self, *a, **k)
trainer_module.RecipeDPOTrainer.train = train
with recipe_errors():
    dpo_lora.main(*parse_recipe_args(dpo_lora.DEFAULT_CONFIG))
"""


def command(model: str, data: str, out: Path) -> list[str]:
    return ["--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out), "--max_steps", "4",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--save_strategy", "steps",
            "--save_steps", "1", "--bf16", "false", "--report_to", "none", "--min_chosen_chars", "1",
            "--min_rejected_chars", "1", "--max_similarity", "none", "--reference_cache", "none"]


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


def test_a_killed_run_resumes_past_a_half_written_checkpoint_to_the_uninterrupted_adapter(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}: {i}+{i}?", "chosen": f" {2 * i}.",
                                        "rejected": f" {3 * i + 1}, maybe."}) + "\n" for i in range(12)))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, "recipes/dpo_lora.py", *command(tiny_model_dir, str(data), whole)], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=600)

    first = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, *command(tiny_model_dir, str(data), killed)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL
    assert (killed / "checkpoint-2" / "trainer_state.json").is_file() and not (killed / "summary.json").exists()
    half = killed / "checkpoint-3"  # as a kill during the next save leaves it: weights, no trainer_state.json
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 100)

    again = subprocess.run([sys.executable, "recipes/dpo_lora.py", *command(tiny_model_dir, str(data), killed)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "checkpoint-3 is incomplete" in again.stderr
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    resumed, uninterrupted = adapter(killed), adapter(whole)
    assert resumed.keys() == uninterrupted.keys() and resumed
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, atol=1e-4, rtol=0, msg=name)
