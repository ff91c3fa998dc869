"""The shipped accelerate configs, run for real: 2 CPU processes (gloo) on a tiny Llama, launched exactly as on a GPU
machine. Each run must be the setup asked for (DeepSpeed at the stage asked, world size 2, from the engine that
trained), and must equal a 1-process run with the same global batch: the first two losses within 1e-5 and the saved
adapter within 1e-4 (fp32: `--mixed_precision no` on the launch, `--bf16 false` on the 1-process run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.distributed
deepspeed = pytest.importorskip("deepspeed")
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
COMMON = ["--max_steps", "2", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-2", "--logging_steps", "1",
          "--train_sampling_strategy", "sequential", "--report_to", "none", "--save_strategy", "no",
          "--reference_cache", "none", "--min_chosen_chars", "1", "--min_rejected_chars", "1",
          "--max_similarity", "none", "--max_length", "64"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with open(path, "w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f" It is {2 * i}.",
                                "rejected": f" Maybe {i * 3 + 1}, or not."}) + "\n")
    return str(path)


def run(cmd: list[str], out: Path, weights: str = "adapter_model.safetensors") -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [h["loss"] for h in history if "loss" in h]
    return {"summary": summary, "losses": losses, "adapter": saved(out / weights)}


def saved(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.fixture(scope="module")
def single(tiny_model_dir, pairs_file, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    return run([sys.executable, "recipes/dpo_lora.py", "--model_name_or_path", tiny_model_dir, "--dataset_name",
                pairs_file, "--output_dir", str(out), "--per_device_train_batch_size", "4", "--bf16", "false", *COMMON],
               out)


def launched(config: str, tiny_model_dir, pairs_file, out: Path, *extra) -> dict:
    return run([ACCELERATE, "launch", "--config_file", f"accelerate_configs/{config}.yaml", "--num_processes", "2",
                "--mixed_precision", "no", "recipes/dpo_lora.py", "--model_name_or_path", tiny_model_dir,
                "--dataset_name", pairs_file, "--output_dir", str(out), "--per_device_train_batch_size", "2", "--bf16", "false",
                *COMMON, *extra], out)


CONFIGS = {  # config: (distributed_type, ZeRO stage, optimizer offload)
    "ddp": ("MULTI_CPU", None, None),
    "zero1": ("DEEPSPEED", 1, "none"),
    "zero2": ("DEEPSPEED", 2, "none"),
    "zero3": ("DEEPSPEED", 3, "none"),
    "zero3_offload": ("DEEPSPEED", 3, "cpu"),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_config_runs_as_asked_and_equals_one_process(config, single, tiny_model_dir, pairs_file, tmp_path):
    result = launched(config, tiny_model_dir, pairs_file, tmp_path)
    setup = result["summary"]["distributed"]
    kind, stage, offload = CONFIGS[config]
    assert setup["distributed_type"] == kind and setup["world_size"] == 2 and setup["global_batch"] == 4
    assert setup.get("zero_stage") == stage and setup.get("offload_optimizer") == offload
    assert result["summary"]["precision"] == "fp32" == single["summary"]["precision"]
    assert result["summary"]["pairs_trained"] == 8 == single["summary"]["pairs_trained"]  # both processes counted
    assert result["losses"][:2] == pytest.approx(single["losses"][:2], abs=1e-5)
    assert result["adapter"].keys() == single["adapter"].keys() and result["adapter"]
    for name, weight in single["adapter"].items():
        torch.testing.assert_close(result["adapter"][name], weight, atol=1e-4, rtol=0, msg=name)


def test_zero2_as_written_takes_the_configs_precision(tiny_model_dir, pairs_file, tmp_path):
    """The README's command, with the YAML's mixed_precision (bf16): the recipe follows it, whatever the CPU."""
    out = tmp_path
    result = run([ACCELERATE, "launch", "--config_file", "accelerate_configs/zero2.yaml", "--num_processes", "2",
                  "recipes/dpo_lora.py", "--model_name_or_path", tiny_model_dir, "--dataset_name", pairs_file,
                  "--output_dir", str(out), "--per_device_train_batch_size", "2", *COMMON], out)
    setup = result["summary"]["distributed"]
    assert (setup["distributed_type"], setup["zero_stage"], setup["world_size"]) == ("DEEPSPEED", 2, 2)
    assert result["summary"]["precision"] == "bf16" and setup["mixed_precision"] == "bf16"


def test_accelerate_use_cpu_with_deepspeed_is_refused(tiny_model_dir, pairs_file, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "WANDB_MODE": "disabled"}
    proc = subprocess.run([ACCELERATE, "launch", "--config_file", "accelerate_configs/zero2.yaml", "--num_processes",
                           "2", "recipes/dpo_lora.py", "--model_name_or_path", tiny_model_dir, "--dataset_name",
                           pairs_file, "--output_dir", str(tmp_path / "out"), *COMMON],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "ACCELERATE_USE_CPU=true makes accelerate drop DeepSpeed" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_multi_node_rehearsed_as_two_machines_on_this_one(tiny_model_dir, pairs_file, tmp_path):
    """accelerate_configs/multi_node.yaml as the README launches it on two nodes, both on 127.0.0.1: two
    `accelerate launch` commands, --machine_rank 0 and 1. One DeepSpeed ZeRO-3 world of 2 processes must result."""
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("ACCELERATE_USE_CPU", None)
    procs = [subprocess.Popen([ACCELERATE, "launch", "--config_file", "accelerate_configs/multi_node.yaml",
                               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                               "--main_process_ip", "127.0.0.1", "--main_process_port", "29517",
                               "recipes/dpo_lora.py", "--model_name_or_path", tiny_model_dir, "--dataset_name",
                               pairs_file, "--output_dir", str(out), "--per_device_train_batch_size", "2", *COMMON],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    setup = json.loads((out / "summary.json").read_text())["distributed"]
    assert (setup["distributed_type"], setup["zero_stage"], setup["world_size"]) == ("DEEPSPEED", 3, 2)


def test_zero3_full_parameter_dpo_equals_one_process(tiny_model_dir, pairs_file, tmp_path):
    """recipes/dpo_full.py under ZeRO-3 on 2 processes: a separate reference, every weight trained, the model saved
    whole; losses and saved weights equal a 1-process run with the same global batch."""
    full = ["--max_steps", "3", "--warmup_steps", "0", "--learning_rate", "1e-3", "--gradient_accumulation_steps", "1",
            "--logging_steps", "1", "--train_sampling_strategy", "sequential", "--report_to", "none",
            "--save_strategy", "no", "--min_chosen_chars", "1", "--min_rejected_chars", "1", "--max_similarity",
            "none", "--max_length", "64", "--bf16", "false", "--model_name_or_path", tiny_model_dir,
            "--dataset_name", pairs_file]
    one, two = tmp_path / "one", tmp_path / "two"
    single = run([sys.executable, "recipes/dpo_full.py", "--output_dir", str(one), "--per_device_train_batch_size",
                  "4", *full], one, weights="model.safetensors")
    sharded = run([ACCELERATE, "launch", "--config_file", "accelerate_configs/zero3.yaml", "--num_processes", "2",
                   "--mixed_precision", "no", "recipes/dpo_full.py", "--output_dir", str(two),
                   "--per_device_train_batch_size", "2", *full], two, weights="model.safetensors")
    setup = sharded["summary"]["distributed"]
    assert (setup["distributed_type"], setup["zero_stage"], setup["world_size"]) == ("DEEPSPEED", 3, 2)
    assert single["losses"][2] != single["losses"][0]  # it learned: the comparison below means something
    assert sharded["losses"][:3] == pytest.approx(single["losses"][:3], abs=1e-5)
    assert sharded["adapter"].keys() == single["adapter"].keys() and len(single["adapter"]) > 10
    for name, weight in single["adapter"].items():
        assert sharded["adapter"][name].numel() == weight.numel() > 0, name  # gathered, not a ZeRO-3 shard
        torch.testing.assert_close(sharded["adapter"][name], weight, atol=1e-4, rtol=0, msg=name)
