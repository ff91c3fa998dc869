"""Preemption: SIGTERM or SIGUSR1 mid-training saves a checkpoint at the next step boundary, prints one line and exits
75; the same command then resumes to the adapter of an uninterrupted run (1e-4, fp32), with 1 and 2 processes. A
second signal exits at once; one outside training stops at once with the same status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from dpo_recipes.train import preemption
from dpo_recipes.train.preemption import EXIT_PREEMPTED, Preempted, PreemptionHandler

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
SIGNAL_AT_STEP = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / "recipes")!r})
from transformers import TrainerCallback
import dpo_lora
from dpo_recipes.train import trainer as trainer_module
from dpo_recipes.config import parse_recipe_args
from dpo_recipes.run import recipe_errors

class SendSignal(TrainerCallback):  # as a scheduler would: to this process, or to the whole process group
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2 and state.is_world_process_zero:
            sig = getattr(signal, os.environ["SIGNAL_NAME"])
            os.killpg(os.getpgid(0), sig) if os.environ.get("SIGNAL_GROUP") else os.kill(os.getpid(), sig)

original = trainer_module.RecipeDPOTrainer.train
def train(self, *a, **k):
    self.add_callback(SendSignal())
    return original(self, *a, **k)
trainer_module.RecipeDPOTrainer.train = train
with recipe_errors():
    dpo_lora.main(*parse_recipe_args(dpo_lora.DEFAULT_CONFIG))
"""


def flags(model: str, data: str, out: Path, batch: int) -> list[str]:
    return ["--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out), "--max_steps", "4",
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", "1", "--learning_rate",
            "1e-2", "--save_strategy", "no", "--bf16", "false", "--report_to", "none", "--min_chosen_chars", "1",
            "--min_rejected_chars", "1", "--max_similarity", "none", "--reference_cache", "none",
            "--train_sampling_strategy", "sequential", "--max_length", "64"]


def environment() -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("ACCELERATE_USE_CPU", None)
    return env


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f" It is {2 * i}.",
                                        "rejected": f" Maybe {i * 3 + 1}, or not."}) + "\n" for i in range(16)))
    return str(path)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, pairs_file, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole")
    subprocess.run([sys.executable, "recipes/dpo_lora.py", *flags(tiny_model_dir, pairs_file, out, 4)], cwd=ROOT,
                   env=environment(), check=True, capture_output=True, timeout=600)
    return load_file(out / "adapter_model.safetensors")


def assert_preempted_then_resumed(first, out: Path, rerun: list[str], uninterrupted: dict) -> None:
    assert first.returncode == EXIT_PREEMPTED, first.stderr[-3000:]
    lines = [line for line in first.stderr.splitlines() if line.startswith("preempted by")]
    assert len(lines) == 1 and lines[0].endswith(f" at step 3 of 4: saved {out / 'checkpoint-3'}; rerun the same "
                                                 "command to resume from it."), first.stderr[-3000:]
    assert (out / "checkpoint-3" / "trainer_state.json").is_file() and not (out / "summary.json").exists()
    again = subprocess.run(rerun, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["steps"] == 4
    resumed = load_file(out / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys() and resumed
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_signal_mid_training_checkpoints_exits_75_and_the_rerun_ends_as_uninterrupted(
        name, tiny_model_dir, pairs_file, uninterrupted, tmp_path):
    out = tmp_path / "out"
    command = flags(tiny_model_dir, pairs_file, out, 4)
    first = subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP, *command], cwd=ROOT,
                           env={**environment(), "SIGNAL_NAME": name}, capture_output=True, text=True, timeout=600)
    assert f"preempted by {name} at step 3 of 4" in first.stderr, first.stderr[-3000:]
    assert_preempted_then_resumed(first, out, [sys.executable, "recipes/dpo_lora.py", *command], uninterrupted)


@pytest.mark.distributed
def test_two_processes_signalled_as_a_scheduler_does_agree_on_the_step_and_resume(
        tiny_model_dir, pairs_file, uninterrupted, tmp_path):
    # SIGTERM to the whole process group (launcher and both workers), as Slurm does; the launcher forwards it again.
    out = tmp_path / "out"
    launch = [ACCELERATE, "launch", "--config_file", "accelerate_configs/ddp.yaml", "--num_processes", "2",
              "--mixed_precision", "no"]
    command = flags(tiny_model_dir, pairs_file, out, 2)
    script = tmp_path / "signal_at_step.py"
    script.write_text(SIGNAL_AT_STEP)
    first = subprocess.run([*launch, str(script), *command], cwd=ROOT, start_new_session=True,
                           env={**environment(), "SIGNAL_NAME": "SIGTERM", "SIGNAL_GROUP": "1"}, capture_output=True,
                           text=True, timeout=600)
    # the launcher reports the workers' status its own way; each worker exited 75 after the same checkpoint
    assert first.stderr.count("preempted by SIGTERM at step 3 of 4") == 1, first.stderr[-3000:]
    assert "exitcode  : 75" in first.stderr or first.returncode == EXIT_PREEMPTED, first.stderr[-3000:]
    first.returncode = EXIT_PREEMPTED
    assert_preempted_then_resumed(first, out, [*launch, "recipes/dpo_lora.py", *command], uninterrupted)


# --- the handler itself -------------------------------------------------------------------------------------------------
def test_a_second_signal_exits_at_once_but_a_forwarded_copy_does_not(monkeypatch):
    handler, clock, exits = PreemptionHandler(), [100.0], []
    handler.training = True
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(preemption.os, "_exit", exits.append)
    handler._on_signal(signal.SIGTERM, None)
    assert handler.signum == signal.SIGTERM and exits == []
    clock[0] += 0.5  # the launcher's forwarded copy
    handler._on_signal(signal.SIGTERM, None)
    assert exits == []
    clock[0] += 5  # the user (or the scheduler) insists
    handler._on_signal(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]


def test_a_signal_outside_training_stops_at_once_with_status_75(monkeypatch, capsys):
    from dpo_recipes.run import recipe_errors, set_stage

    fresh = PreemptionHandler()
    monkeypatch.setattr(preemption, "_HANDLER", fresh)
    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    set_stage("loading the model", output_dir=None, trainer=None)
    try:
        with pytest.raises(SystemExit) as exited, recipe_errors():
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
            pytest.fail("the signal did not stop the run")
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert exited.value.code == EXIT_PREEMPTED
    assert capsys.readouterr().err.strip().startswith("preempted by SIGUSR1: while loading the model")
    assert isinstance(fresh.stopped(), Preempted)
